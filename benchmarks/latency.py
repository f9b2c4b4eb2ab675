"""Inference latency at batch 1 and batch 256, dense and sparse, on the Amazon-670K shape (SYNTHETIC
inputs, untrained weights: latency does not depend on the weights' values).

  python benchmarks/latency.py [--labels 670091] [--quick]

Systems: boltc native (2 threads), the NumPy interpreter, dense PyTorch (optional). Median of repeated
`predict(top_k=5)` calls on the same batch, after one warm-up call. Goal at 670k: batch 1 under
0.5 ms with sparse inference (BOLT 5.7 ms sparse, 94 ms dense; PyTorch 82 ms).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import build_tables, fresh_state, synth_data, table, write_json, xc_plan  # noqa: E402

from boltc.runtime.data.dataset import Batch  # noqa: E402
from boltc.runtime.exec.interp import NumpyExecutor  # noqa: E402
from boltc.runtime.exec.native import NativeExecutor  # noqa: E402


def median_ms(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=135909)
    ap.add_argument("--labels", type=int, default=670091)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    F, L = args.features, args.labels
    X, _ = synth_data(256, F, L, seed=3)
    plan = xc_plan(F, L)
    state = fresh_state(plan)
    native = NativeExecutor(plan, state, threads=2)
    build_tables(plan, state)
    b1 = Batch(inputs={"features": X[:1]}, labels=None)
    b256 = Batch(inputs={"features": X}, labels=None)
    reps = {1: 5 if args.quick else 50, 256: 2 if args.quick else 5}
    rows = []
    systems = [("boltc native (2 threads)", native), ("boltc numpy interpreter", NumpyExecutor(plan, state))]
    for name, ex in systems:
        r = {"system": name}
        for bs, batch in ((1, b1), (256, b256)):
            for mode in ("sparse", "dense"):
                n = reps[bs] if name.startswith("boltc native") else max(1, reps[bs] // 10)
                if name.startswith("boltc numpy") and bs == 256 and mode == "dense" and args.quick:
                    r[f"b{bs} {mode} ms"] = "skipped"
                    continue
                r[f"b{bs} {mode} ms"] = round(median_ms(lambda: ex.predict(batch, 5, sparse=mode == "sparse"), n), 3)
        rows.append(r)
    del systems, native, state
    gc.collect()
    try:
        import torch
        from train_throughput import torch_forward, torch_model
        torch.set_num_threads(2)
        emb, lin, _ = torch_model(F, L)
        r = {"system": "PyTorch dense (2 threads)"}
        with torch.no_grad():
            for bs, x in ((1, X[:1]), (256, X)):
                r[f"b{bs} dense ms"] = round(median_ms(lambda: torch.topk(torch_forward(emb, lin, x), 5),
                                                       reps[bs] if bs == 1 else 2), 3)
        rows.append(r)
    except ImportError:
        rows.append({"system": "PyTorch dense", "b1 dense ms": "torch not installed"})
    cols = ["system", "b1 sparse ms", "b1 dense ms", "b256 sparse ms", "b256 dense ms"]
    print(f"inference latency, {F} features -> 256 -> {L} labels (synthetic), predict top-5")
    print(table(rows, cols))
    print(f"wrote {write_json('latency', {'labels': L, 'rows': rows, 'peers': {'bolt_b1_sparse_ms': 5.7, 'bolt_b1_dense_ms': 94, 'pytorch_b1_ms': 82}})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
