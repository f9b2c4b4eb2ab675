"""models/hybrid.bolt (embedding bag + fc over one sparse input, concat, layernorm, SRP-sparse softmax over
1,000 labels; SYNTHETIC data from its data block): native backend vs the NumPy interpreter.

  python benchmarks/hybrid_native.py            # throughput + accuracy over 5 seeds
  python benchmarks/hybrid_native.py --quick    # fewer rounds, one seed
  python benchmarks/hybrid_native.py --blas-threads 1 --tag blas1   # the interpreter's BLAS on 1 thread

1. Training examples/s: both executors train on the same batches of the data block's training set
   (the model's batch size, 64, and 256), in alternating rounds (native, numpy, native, ...) so load
   on this shared machine hits both alike; the median round is reported, and the ratio.
2. Inference examples/s (predict top-5, dense and sparse, batch 256, the whole test set), measured the
   same way.
3. Accuracy: `fit` with the file's train block (2 epochs) on each backend, per seed; precision@1 of
   dense and sparse inference on the test set. The backends draw different random negatives (native:
   splitmix64 per example, numpy: its generator), so runs agree in distribution, not bit for bit.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

# --blas-threads N must reach OpenBLAS before numpy loads it (the interpreter's matrix products; the
# native backend does not use BLAS for this model). On this shared 2-core machine under load, OpenBLAS's
# default threads made the interpreter ~10x slower (1.1k vs 11k ex/s at batch 64, one session).
if "--blas-threads" in sys.argv[:-1]:
    _n = sys.argv[sys.argv.index("--blas-threads") + 1]
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = _n

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from bench_common import table, write_json  # noqa: E402

import boltc  # noqa: E402
from boltc.runtime.data.dataset import Batch  # noqa: E402
from boltc.runtime.exec.interp import NumpyExecutor  # noqa: E402
from boltc.runtime.exec.native import NativeExecutor  # noqa: E402
from boltc.runtime.exec.state import ModelState  # noqa: E402

MODEL = ROOT / "models" / "hybrid.bolt"


def load_batches(model, split: str, batch: int, partial: bool = False) -> list:
    """The split's rows in batches (the last, shorter one only with `partial`)."""
    ds = model.dataset(model.data_source(split))
    X, Y = ds.inputs["features"], ds.labels
    end = X.shape[0] if partial else X.shape[0] - batch + 1
    return [Batch(inputs={"features": X[s:s + batch]}, labels=Y[s:s + batch]) for s in range(0, end, batch)]


def time_rounds(runs: dict, rounds: int) -> dict:
    """runs: name -> callable returning examples processed; median examples/s per name over rounds."""
    rates = {n: [] for n in runs}
    for _ in range(rounds):
        for n, fn in runs.items():
            t = time.perf_counter()
            ex = fn()
            rates[n].append(ex / (time.perf_counter() - t))
    return {n: statistics.median(r) for n, r in rates.items()}


def throughput(plan: dict, model, rounds: int, threads: int) -> list[dict]:
    rows = []
    for batch in (plan["train"]["batch"], 256):
        bs = load_batches(model, "train", batch)
        state = ModelState.init(plan)
        # copy first: the native executor installs its hashing/table build into the state's indexes
        ref = NumpyExecutor(plan, copy.deepcopy(state))
        nat = NativeExecutor(plan, state, threads=threads)
        assert nat.native, nat.fallback_reason
        lr = plan["train"]["lr"]
        for ex in (nat, ref):
            ex.train_step(bs[0], lr)                       # warm-up (kernels, caches)
        per = max(1, 1536 // batch)

        done = {}                                        # each executor walks the same batches

        def train(ex):
            n = 0
            for _ in range(per):
                i = done[id(ex)] = done.get(id(ex), 0) + 1
                b = bs[i % len(bs)]
                ex.train_step(b, lr)
                n += b.size
            return n

        r = time_rounds({"native": lambda: train(nat), "numpy": lambda: train(ref)}, rounds)
        rows.append({"what": f"train, batch {batch}", "native ex/s": round(r["native"]),
                     "numpy ex/s": round(r["numpy"]), "native / numpy": round(r["native"] / r["numpy"], 1)})
        test = load_batches(model, "test", 256, partial=True)
        for sparse in (False, True):
            def pred(ex):
                n = 0
                for b in test:
                    ex.predict(b, 5, sparse=sparse)
                    n += b.size
                return n
            if batch == 256:
                r = time_rounds({"native": lambda: pred(nat), "numpy": lambda: pred(ref)}, rounds)
                rows.append({"what": f"predict top-5 {'sparse' if sparse else 'dense'}, batch 256",
                             "native ex/s": round(r["native"]), "numpy ex/s": round(r["numpy"]),
                             "native / numpy": round(r["native"] / r["numpy"], 1)})
    return rows


def accuracy(seeds: list[int], threads: int) -> list[dict]:
    rows = []
    for seed in seeds:
        for backend in ("native", "numpy"):
            m = boltc.compile(str(MODEL), backend=backend, threads=threads, seed=seed)
            t = time.perf_counter()
            m.fit(progress=False)
            secs = time.perf_counter() - t
            dense = m.evaluate(sparse=False)["precision@1"]
            sparse = m.evaluate(sparse=True)["precision@1"]
            rows.append({"seed": seed, "backend": backend, "train s": round(secs, 2),
                         "P@1 dense": round(dense, 2), "P@1 sparse": round(sparse, 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="results/hybrid_native_<tag>.json")
    ap.add_argument("--blas-threads", default=None, help="OpenBLAS threads of the interpreter (default: its own)")
    args = ap.parse_args()
    model = boltc.compile(str(MODEL))
    plan = model.plan
    rounds = 3 if args.quick else 7
    speed = throughput(plan, model, rounds, args.threads)
    blas = args.blas_threads or "OpenBLAS default"
    print(f"models/hybrid.bolt (synthetic data), native {args.threads} threads, interpreter BLAS threads: "
          f"{blas}; median of {rounds} alternating rounds")
    print(table(speed, ["what", "native ex/s", "numpy ex/s", "native / numpy"]))
    acc = accuracy([3] if args.quick else [3, 4, 5, 6, 7], args.threads)
    print("\naccuracy after the train block (2 epochs), test set of the data block")
    print(table(acc, ["seed", "backend", "train s", "P@1 dense", "P@1 sparse"]))
    mean = {b: {k: round(statistics.mean(r[k] for r in acc if r["backend"] == b), 2)
                for k in ("P@1 dense", "P@1 sparse")} for b in ("native", "numpy")}
    print("mean:", mean)
    path = write_json("hybrid_native" + (f"_{args.tag}" if args.tag else ""),
                      {"model": "models/hybrid.bolt", "threads": args.threads, "blas_threads": blas, "rounds": rounds,
                       "throughput": speed, "accuracy": acc, "accuracy_mean": mean})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
