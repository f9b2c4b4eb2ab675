"""Training step time with float32 vs bfloat16 Adam moments, native backend, SYNTHETIC XC data.

  python benchmarks/moments_ab.py [--shape 670k|100k] [--steps 16]

Both models live in one process and take turns on the same batches (A B, then B A, ...), so a change
of machine load hits both alike. This machine is shared and noisy: compare the two medians of one run
(and the median of the per-batch ratios), not absolute times. What differs is only lazy Adam's
traffic: a touched row of the output layer moves W, m and v, read and written: 6 KB per 256-wide row
with float32 moments, 4 KB with bf16 (`adam(moments=bf16)`; `auto` picks it at 670k).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import batches, build_tables, fresh_state, synth_data, table, write_json, xc_plan  # noqa: E402

from boltc.runtime.exec.native import NativeExecutor  # noqa: E402

SHAPES = {"670k": (135909, 670091, 1e-4), "100k": (100000, 100000, 1e-3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="670k")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warm", type=int, default=2)
    args = ap.parse_args(argv)
    F, L, lr = SHAPES[args.shape]
    B = 256
    X, Y = synth_data((args.steps + args.warm) * B, F, L, seed=1)
    runs = {}
    for moments in ("f32", "bf16"):
        plan = xc_plan(F, L, batch=B, lr=lr)
        plan["train"]["moments"] = moments
        state = fresh_state(plan)
        ex = NativeExecutor(plan, state, threads=2)
        build_tables(plan, state)
        runs[moments] = ex
    times = {k: [] for k in runs}
    order = list(runs)
    for i, b in enumerate(batches(X, Y, B)):
        for k in (order if i % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            runs[k].train_step(b, lr)
            if i >= args.warm:
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(a / b for a, b in zip(times["f32"], times["bf16"]))
    rows = [{"moments": k, "median step ms": round(1e3 * med[k], 1), "examples/s": round(B / med[k], 1)}
            for k in runs]
    print(f"{args.shape} shape (synthetic), batch {B}, {len(times['f32'])} alternating steps each, 2 threads")
    print(table(rows, ["moments", "median step ms", "examples/s"]))
    print(f"median per-batch ratio f32 time / bf16 time: {ratio:.2f}")
    payload = {"shape": args.shape, "steps": len(times["f32"]), "step_s": times, "median_step_s": med,
               "median_ratio_f32_over_bf16": ratio}
    print(f"wrote {write_json(f'moments_ab_{args.shape}', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
