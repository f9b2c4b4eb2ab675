"""Dense fc layers: BLAS sgemm (+ the generated optimizer kernel) against the generated dot-product
kernels, per training step and per dense forward, on the shapes boltc's models have (SYNTHETIC data).

Both paths run in the same process, in alternating rounds (best of ROUNDS), by switching
boltc/ops/fc.py DENSE_BLAS_MIN_MACS. Prints a table and writes results/dense_blas.json.
    python benchmarks/dense_blas.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from native_helpers import make_batch, make_plan  # noqa: E402

from boltc.ops import fc as native_ops  # noqa: E402  (the dense fc runner and its BLAS thresholds)
from boltc.runtime.exec.native import NativeExecutor  # noqa: E402
from boltc.runtime.exec.state import ModelState  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# (batch, input width, hidden width, output width): a text model's output, bibtex's output run dense,
# delicious's, a hybrid model's dense hidden layer, and batch-1 inference
SHAPES = [(64, 128, 128, 20), (128, 256, 4096, 159), (256, 256, 512, 983), (256, 512, 1024, 1024),
          (1, 256, 1024, 1024), (16, 64, 256, 256)]
PATHS = {"blas": 0, "kernels": 1 << 62}     # DENSE_BLAS_MIN_MACS of each path


def _time(fn, reps):
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    rows = []
    for B, d_in, hidden, out in SHAPES:
        plan = make_plan(d_in, hidden, out, None, sparse_input=False)
        state = ModelState.init(plan)
        ex = {p: NativeExecutor(plan, copy.deepcopy(state), threads=args.threads) for p in PATHS}
        batch = make_batch(np.random.default_rng(0), B, d_in, out, sparse_input=False)
        macs = B * (d_in * hidden + hidden * out)
        reps = max(3, int(2e8 // (3 * macs)))
        best = {(p, w): float("inf") for p in PATHS for w in ("train", "forward")}
        for _ in range(args.rounds):
            for p, threshold in PATHS.items():
                native_ops.DENSE_BLAS_MIN_MACS = threshold
                native_ops.DENSE_BLAS_MIN_BATCH_BACKWARD = 1      # both directions on BLAS
                best[p, "train"] = min(best[p, "train"], _time(lambda: ex[p].train_step(batch, 1e-4), reps))
                best[p, "forward"] = min(best[p, "forward"], _time(lambda: ex[p].forward(batch, "dense"), reps))
        row = {"batch": B, "in": d_in, "hidden": hidden, "out": out,
               **{f"{p}_{w}_ms": 1e3 * best[p, w] for p in PATHS for w in ("train", "forward")}}
        row["train_speedup"] = best["kernels", "train"] / best["blas", "train"]
        row["forward_speedup"] = best["kernels", "forward"] / best["blas", "forward"]
        rows.append(row)
    head = f"{'shape B x in -> hidden -> out':<30}{'train blas':>12}{'kernels':>10}{'x':>6}{'fwd blas':>10}{'kernels':>10}{'x':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = f"{r['batch']} x {r['in']} -> {r['hidden']} -> {r['out']}"
        print(f"{shape:<30}{r['blas_train_ms']:>10.3f}ms{r['kernels_train_ms']:>8.3f}ms{r['train_speedup']:>6.2f}"
              f"{r['blas_forward_ms']:>8.3f}ms{r['kernels_forward_ms']:>8.3f}ms{r['forward_speedup']:>6.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dense_blas.json").write_text(json.dumps({"rows": rows, "threads": args.threads,
                                                         "rounds": args.rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
