"""Sparse row exchange vs dense all-reduce for data-parallel training on Ray (issue 8).

The 100,000-label synthetic problem (models/synth100k.bolt: 100k sparse features -> fc 256 relu -> fc
100k softmax at BOLT's sparsity 0.005; SYNTHETIC data, fewer rows than the model file names so the run
takes minutes). Two Ray workers on one local cluster (this machine has 2 cores), global batch 256
(128 per worker), the same seeds: all modes train identically (checked: max weight difference), only
what crosses the wire differs:
  - sparse: each worker sends the touched rows of each gradient (row ids + values), the driver sums
    them and broadcasts the combined rows once;
  - dense:  each worker sends every gradient tensor whole and receives the whole sum (what BOLT's
    all-reduce moves), replicas update the rows that are nonzero;
  - factors: each worker sends each fc layer's input and pre-activation gradient on its active ids
    (runtime/distributed/factors.py); every replica rebuilds the global batch's gradient from them.
Reported per mode: examples/s (wall time of the timed updates, after warm-up updates), bytes each worker
sends + receives per update, and the ratios sparse/dense, all measured in the same run. A single-process
run of the same updates (the executor's train_step, no Ray) gives the 1-worker reference.

    python benchmarks/distributed_exchange.py                 # 4096 rows: 16 updates per mode (~5 min)
    python benchmarks/distributed_exchange.py --rows 1536     # quicker smoke run
    python benchmarks/distributed_exchange.py --backend native   # workers on the llvmlite backend
Writes benchmarks/results/distributed_exchange.json (distributed_exchange_native.json with --backend native).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from boltc.pipeline import load_model_source
from boltc.runtime.data.load import load_dataset
from boltc.runtime.distributed.driver import train_distributed
from boltc.runtime.exec.executor import make_executor
from boltc.runtime.exec.state import ModelState

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def single_process(plan, state, train_source, updates, warmup, backend):
    """The reference: one process, the executor's own train_step on batches of the global size."""
    ds = load_dataset(train_source, plan)
    ex = make_executor(plan, state, backend=backend, threads=2)
    B = plan["train"]["batch"]
    rng = np.random.default_rng(0)
    t0 = None
    per_epoch = -(-ds.rows // B)
    for u in range(updates):
        if u == warmup:
            t0 = time.perf_counter()
        ex.train_step(ds.take(rng.choice(ds.rows, B, replace=False)), plan["train"]["lr"])
        ex.after_step(0, u, per_epoch)                 # the same LSH upkeep schedule as the workers
    return (updates - warmup) * B / (time.perf_counter() - t0)


def run_mode(plan, init, train_source, mode, updates, warmup, backend, timeout):
    """One run of `updates` updates; examples/s is the trainer's epoch figure, which leaves out worker
    start-up (shard generation, model copy, executor build) but counts every update and exchange."""
    t0 = time.perf_counter()
    res = train_distributed(plan, copy.deepcopy(init), train_source, workers=2, exchange=mode,
                            max_updates=updates, backend=backend, timeout=timeout)
    wall = time.perf_counter() - t0
    epoch = res.history["epochs"][0]
    return res, {"mode": mode, "updates": res.stats["updates"], "examples": res.stats["examples"],
                 "examples_per_s": epoch["examples_per_s"],
                 "bytes_per_update_per_worker": res.stats["bytes_per_update_per_worker"],
                 "bytes_to_driver": res.stats["bytes_to_driver"], "bytes_from_driver": res.stats["bytes_from_driver"],
                 "combine_seconds": res.stats["combine_seconds"], "wall_seconds_with_startup": wall,
                 "worker_seconds": res.stats["worker_seconds"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096, help="synthetic training rows (an epoch = rows/256 updates)")
    ap.add_argument("--backend", default="numpy", choices=("numpy", "native"))
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--modes", default="sparse,dense,factors", help="exchanges to measure, comma-separated")
    ap.add_argument("--out", default=None, help="default: results/distributed_exchange[_native].json")
    args = ap.parse_args(argv)
    args.out = args.out or str(RESULTS / ("distributed_exchange" + ("" if args.backend == "numpy" else "_native") + ".json"))

    import ray
    _, plan = load_model_source(ROOT / "models" / "synth100k.bolt")
    train_source = dict(plan["data"]["train"], rows=args.rows)
    updates = -(-args.rows // plan["train"]["batch"])
    t0 = time.perf_counter()
    init = ModelState.init(plan)
    init_s = time.perf_counter() - t0
    print(f"synth100k (SYNTHETIC data): {args.rows} rows, {updates} updates of batch {plan['train']['batch']}, "
          f"model init {init_s:.1f} s")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, address="local",
             _temp_dir=f"/tmp/boltc_ray_bench_{os.getpid()}")
    try:
        rows = []
        states = {}
        for mode in args.modes.split(","):
            res, row = run_mode(plan, init, train_source, mode, updates, 0, args.backend, args.timeout)
            states[mode] = res.state
            rows.append(row)
            print(f"  {mode:6s}: {row['examples_per_s']:8.1f} examples/s, "
                  f"{row['bytes_per_update_per_worker'] / 1e6:9.2f} MB per update per worker, "
                  f"driver combine {row['combine_seconds']:.1f} s, workers {row['worker_seconds']}")
    finally:
        ray.shutdown()
    ref = states[rows[0]["mode"]]
    diffs = {m: max(float(np.abs(st.params[l][t] - ref.params[l][t]).max()) for l in st.params for t in st.params[l])
             for m, st in states.items()}
    single = single_process(plan, copy.deepcopy(init), train_source, min(updates, 8), 2, args.backend)

    by = {r["mode"]: r for r in rows}
    sp_, de = by.get("sparse", rows[0]), by.get("dense", rows[-1])
    dense_model = sum(a.nbytes for l, ts in init.params.items() for t, a in ts.items() if t != "label_count")
    result = {
        "benchmark": "distributed_exchange", "data": "SYNTHETIC synth100k (100,000 features, 100,000 labels)",
        "rows": args.rows, "batch": plan["train"]["batch"], "workers": 2, "backend": args.backend,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "modes": rows, "single_process_examples_per_s": single,
        "dense_gradient_bytes": dense_model,
        "ratio_bytes_sparse_over_dense": sp_["bytes_per_update_per_worker"] / de["bytes_per_update_per_worker"],
        "ratio_examples_per_s_sparse_over_dense": sp_["examples_per_s"] / de["examples_per_s"],
        "max_weight_difference_vs_" + rows[0]["mode"]: diffs,
    }
    if "factors" in by:
        result["ratio_bytes_factors_over_dense"] = by["factors"]["bytes_per_update_per_worker"] / de["bytes_per_update_per_worker"]
        result["ratio_examples_per_s_factors_over_dense"] = by["factors"]["examples_per_s"] / de["examples_per_s"]
    print()
    print("| exchange | examples/s | MB per update per worker (sent + received) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} (2 Ray workers) | {r['examples_per_s']:.1f} | {r['bytes_per_update_per_worker'] / 1e6:.2f} |")
    print(f"| single process (no exchange) | {single:.1f} | 0 |")
    print(f"sparse/dense: bytes {result['ratio_bytes_sparse_over_dense']:.4f}, "
          f"examples/s {result['ratio_examples_per_s_sparse_over_dense']:.2f}x; dense gradient {dense_model / 1e6:.1f} MB")
    if "factors" in by:
        print(f"factors/dense: bytes {result['ratio_bytes_factors_over_dense']:.5f}, "
              f"examples/s {result['ratio_examples_per_s_factors_over_dense']:.2f}x")
    print(f"max weight difference vs {rows[0]['mode']}: " + ", ".join(f"{m} {d:.1e}" for m, d in diffs.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
