"""Training examples/s: native vs the NumPy interpreter vs dense PyTorch, on SYNTHETIC XC problems.

  python benchmarks/train_throughput.py                 # both shapes (670k, then 100k with P@1)
  python benchmarks/train_throughput.py --shape 670k    # one shape; --quick for a short check

670k: Amazon-670K's shape (135,909 features, ~75 nnz/row -> 256 relu -> 670,091 softmax, batch 256,
BOLT's automatic sparsity 0.005 = 3,350 active, DWTA K=5 L=164 range 2^15 reservoir 80).
100k: 100,000 features -> 256 -> 100,000 labels, 50,000 training rows, one epoch, P@1 on 5,000 test rows
of the same synthetic task (dense and sparse inference).
`--moments f32,bf16` trains the native model once per storage of Adam's moments (float32; bfloat16,
`adam(moments=bf16)`) in the same run: speed and P@1 side by side. Default: f32 only.

Speed is compared as ratios measured in the same run (the machine is shared and noisy). The script also
measures the memory bandwidth of this run (2 threads reading 1 GiB) and counts the bytes one native
step must move (weight rows gathered, lazy Adam's read+write of W, m, v rows, tables probed): the
bandwidth bound is bandwidth / bytes per example.
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import (batches, build_tables, fresh_state, peak_rss_bytes, synth_data, table,  # noqa: E402
                          write_json, xc_plan)

from boltc.plan.moments import MOMENT_BYTES, moment_dtypes  # noqa: E402

from boltc.runtime.exec.interp import NumpyExecutor  # noqa: E402
from boltc.runtime.exec.native import NativeExecutor  # noqa: E402
from boltc.runtime.exec.threads import ThreadPool  # noqa: E402


# --threads / --clock (main): boltc native's thread count, and what times its steps. `--threads 1 --clock
# cpu` times the native steps by the process's CPU time: on a machine shared with other jobs that is
# what compares two builds of boltc (each pays for its own work only); PyTorch and the interpreter
# keep the wall clock.
NATIVE_THREADS = 2
CLOCK = time.perf_counter


def memory_bandwidth(threads: int = 2, gib: float = 1.0) -> float:
    """Bytes/s of `threads` threads summing disjoint halves of a 1 GiB float32 array (numpy releases
    the GIL in reductions), best of 3."""
    a = np.ones(int(gib * (1 << 30)) // 4, np.float32)
    pool = ThreadPool(threads)
    parts = np.array_split(a, threads)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        futs = [pool._pool.submit(np.add.reduce, p) for p in parts[1:]] if pool._pool else []
        np.add.reduce(parts[0])
        for f in futs:
            f.result()
        best = min(best, time.perf_counter() - t)
    pool.close()
    return a.nbytes / best


def step_bytes(ex: NativeExecutor, plan: dict, batch) -> int:
    """Bytes one native training step must move at least (each touched row once)."""
    out, hid = plan["layers"][-1], plan["layers"][0]
    ids = ex._inv
    nu = ids[3] if ids is not None else out["dim"]
    row = out["in_dim"] * 4
    x = batch.inputs["features"]
    nf = np.unique(x.indices).size
    idx = ex.state.lsh.get(out["name"])
    probe = 0 if idx is None else batch.size * idx.L * idx.reservoir * 4
    kinds = moment_dtypes(plan)
    mo, mh = (MOMENT_BYTES[kinds[layer["name"]]["W"]] for layer in (out, hid))
    return (nu * row                                   # forward: each active neuron's row read once
            + nu * out["in_dim"] * (2 * 4 + 4 * mo)    # lazy Adam: W, m, v rows read and written
            + nu * 4 * 6                               # (+ bias)
            + nf * hid["dim"] * (3 * 4 + 4 * mh)       # first layer: row gathered, then W, m, v read+written
            + probe)                                   # LSH buckets probed


def time_native(plan, X, Y, batch, steps, warm=2, threads=None):
    threads = NATIVE_THREADS if threads is None else threads
    state = fresh_state(plan)
    ex = NativeExecutor(plan, state, threads=threads)
    t_build = build_tables(plan, state)
    bs = list(batches(X, Y, batch))
    for b in bs[:warm]:
        ex.train_step(b, plan["train"]["lr"])
    t = CLOCK()
    n = 0
    for b in bs[warm:warm + steps]:
        ex.train_step(b, plan["train"]["lr"])
        n += b.size
    dt = CLOCK() - t
    nbytes = step_bytes(ex, plan, bs[warm + steps - 1])
    return ex, state, n / dt, t_build, nbytes


def time_numpy(plan, state, X, Y, batch, steps):
    ex = NumpyExecutor(plan, state)
    bs = list(batches(X, Y, batch))[:steps + 1]
    ex.train_step(bs[0], plan["train"]["lr"])
    t = time.perf_counter()
    for b in bs[1:]:
        ex.train_step(b, plan["train"]["lr"])
    return steps * batch / (time.perf_counter() - t)


# ---------------------------------------------------------------- dense PyTorch (optional)
def torch_model(features, labels, hidden=256, lr=1e-3):
    import torch
    torch.manual_seed(0)
    emb = torch.nn.EmbeddingBag(features, hidden, mode="sum")
    lin = torch.nn.Linear(hidden, labels)
    for p in (emb.weight, lin.weight):
        torch.nn.init.normal_(p, 0, 0.01)
    torch.nn.init.zeros_(lin.bias)
    params = list(emb.parameters()) + list(lin.parameters())
    return emb, lin, torch.optim.Adam(params, lr=lr, eps=1e-7)


def torch_forward(emb, lin, x):
    import torch
    idx = torch.from_numpy(x.indices.astype(np.int64))
    off = torch.from_numpy(x.indptr[:-1].astype(np.int64))
    w = torch.from_numpy(x.data)
    h = torch.relu(emb(idx, off, per_sample_weights=w) + 0.0)
    return lin(h)


def torch_step(emb, lin, opt, x, y):
    import torch
    logits = torch_forward(emb, lin, x)
    yd = torch.zeros(logits.shape)
    rows = np.repeat(np.arange(y.shape[0]), np.diff(y.indptr))
    yd[torch.from_numpy(rows), torch.from_numpy(y.indices.astype(np.int64))] = 1.0
    yd = yd / yd.sum(1, keepdim=True).clamp(min=1)
    loss = -(yd * torch.log_softmax(logits, 1)).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def time_torch(features, labels, X, Y, batch, steps, epoch_rows=None, lr=1e-3, Xt=None, Yt=None):
    try:
        import torch
    except ImportError:
        return None, None
    torch.set_num_threads(2)
    emb, lin, opt = torch_model(features, labels, lr=lr)
    bs = list(batches(X, Y, batch))
    torch_step(emb, lin, opt, bs[0].inputs["features"], bs[0].labels)
    run = bs[1:] if epoch_rows else bs[1:steps + 1]
    t = time.perf_counter()
    for b in run:
        torch_step(emb, lin, opt, b.inputs["features"], b.labels)
    eps = len(run) * batch / (time.perf_counter() - t)
    p1 = None
    if Xt is not None:
        with torch.no_grad():
            hits = 0
            for s in range(0, Xt.shape[0], 1024):
                top = torch_forward(emb, lin, Xt[s:s + 1024]).argmax(1).numpy()
                yt = Yt[s:s + 1024]
                hits += sum(top[i] in yt.indices[yt.indptr[i]:yt.indptr[i + 1]] for i in range(len(top)))
            p1 = hits / Xt.shape[0]
    del emb, lin, opt
    gc.collect()
    return eps, p1


def precision_at_1(ex, Xt, Yt, sparse):
    from boltc.runtime.data.dataset import Batch
    hits = 0
    for s in range(0, Xt.shape[0], 256):
        b = Batch(inputs={"features": Xt[s:s + 256]}, labels=None)
        ids, _ = ex.predict(b, 1, sparse=sparse)
        yt = Yt[s:s + 256]
        hits += sum(ids[i, 0] in yt.indices[yt.indptr[i]:yt.indptr[i + 1]] for i in range(ids.shape[0]))
    return hits / Xt.shape[0]


# ---------------------------------------------------------------- the two problems
def run_670k(args, bw):
    F, L, B = 135909, 670091, 256
    steps = 4 if args.quick else 12
    X, Y = synth_data((steps + 3) * B, F, L, seed=1)
    by_moments, rows = {}, []
    for moments in args.moments:
        plan = xc_plan(F, L, batch=B, lr=1e-4)
        plan["train"]["moments"] = moments
        ex, state, eps, t_build, nb = time_native(plan, X, Y, B, steps)
        by_moments[moments] = {"native_eps": eps, "bytes_per_example": nb / B, "table_build_s": t_build,
                               "bandwidth_bound_eps": bw / (nb / B)}
        rows.append({"system": f"boltc native ({NATIVE_THREADS} threads), {moments} moments", "examples/s": round(eps, 1)})
        if moments == args.moments[0]:              # the interpreter is timed on this one's state
            native_eps, nbytes, first = eps, nb, (plan, state if not args.no_numpy else None)
        del ex, state
        gc.collect()
    plan, state = first
    bound = bw / (nbytes / B)
    numpy_eps = time_numpy(plan, state, X, Y, B, 1 if args.quick else 2) if not args.no_numpy else None
    del state, first
    gc.collect()
    rows.append({"system": "boltc numpy interpreter", "examples/s": round(numpy_eps, 1) if numpy_eps else "skipped"})
    torch_eps, _ = time_torch(F, L, X, Y, B, 2 if args.quick else 4, lr=1e-4) if not args.no_torch else (None, None)
    rows.append({"system": "PyTorch dense (2 threads)", "examples/s": round(torch_eps, 1) if torch_eps else "n/a"})
    for r in rows:
        v = r["examples/s"]
        r["x native"] = round(native_eps / v, 1) if isinstance(v, float) else ""
    print(f"\n670k shape (synthetic), batch {B}: table build {t_build:.1f} s (native)")
    print(table(rows, ["system", "examples/s", "x native"]))
    for moments, r in by_moments.items():
        print(f"{moments} moments: bytes moved per example (native, counted): "
              f"{r['bytes_per_example'] / 1e6:.2f} MB; "
              f"bandwidth this run {bw / 1e9:.1f} GB/s -> bound {r['bandwidth_bound_eps']:.0f} examples/s; "
              f"native at {r['native_eps'] / r['bandwidth_bound_eps']:.0%} of it")
    return {"moments": args.moments[0], "by_moments": by_moments,
            "native_eps": native_eps, "numpy_eps": numpy_eps, "torch_eps": torch_eps,
            "table_build_s": t_build, "bytes_per_example": nbytes / B, "bandwidth_Bps": bw,
            "bandwidth_bound_eps": bound, "fraction_of_bound": native_eps / bound,
            "peers": {"bolt_eps": 129, "pytorch_eps": 57}}


def run_100k(args, bw):
    F, L, B = 100000, 100000, 256
    n_train = 8192 if args.quick else 50000
    X, Y = synth_data(n_train, F, L, seed=1, task=0)
    Xt, Yt = synth_data(2000 if args.quick else 5000, F, L, seed=2, task=0)
    by_moments, rows = {}, []
    for moments in args.moments:
        plan = xc_plan(F, L, batch=B, lr=1e-3)
        plan["train"]["moments"] = moments
        state = fresh_state(plan)
        ex = NativeExecutor(plan, state, threads=NATIVE_THREADS)
        # as Trainer.fit does for an in-memory set: the negatives weighted by the data's label counts
        ex.upkeep.set_label_frequency(np.bincount(Y.indices, minlength=L))
        build_tables(plan, state)
        bs = list(batches(X, Y, B))
        t = CLOCK()
        for i, b in enumerate(bs):
            ex.train_step(b, plan["train"]["lr"])
            ex.after_step(0, i, len(bs))
        eps = len(bs) * B / (CLOCK() - t)
        p_dense, p_sparse = precision_at_1(ex, Xt, Yt, False), precision_at_1(ex, Xt, Yt, True)
        by_moments[moments] = {"native_eps": eps, "p1_dense": p_dense, "p1_sparse": p_sparse}
        rows.append({"system": f"boltc native ({NATIVE_THREADS} threads), {moments} moments", "examples/s": round(eps, 1),
                     "P@1 dense": round(p_dense, 3), "P@1 sparse": round(p_sparse, 3)})
        if moments == args.moments[0]:              # the interpreter is timed on this one's state
            native_eps, first = eps, (plan, state if not args.no_numpy else None, p_dense, p_sparse)
        del ex, state
        gc.collect()
    plan, state, p_dense, p_sparse = first
    numpy_eps = time_numpy(plan, state, X, Y, B, 2) if not args.no_numpy else None
    del state, first
    gc.collect()
    torch_eps, torch_p1 = (time_torch(F, L, X, Y, B, None, epoch_rows=n_train, lr=1e-3, Xt=Xt, Yt=Yt)
                           if not args.no_torch else (None, None))
    rows += [{"system": "boltc numpy interpreter", "examples/s": round(numpy_eps, 1) if numpy_eps else "skipped",
             "P@1 dense": "(same math)", "P@1 sparse": ""},
            {"system": "PyTorch dense (2 threads)", "examples/s": round(torch_eps, 1) if torch_eps else "n/a",
             "P@1 dense": round(torch_p1, 3) if torch_p1 is not None else "n/a", "P@1 sparse": ""}]
    for r in rows:
        v = r["examples/s"]
        r["x native"] = round(native_eps / v, 1) if isinstance(v, float) else ""
    print(f"\n100k labels (synthetic), {n_train} rows, 1 epoch, batch {B}; test {Xt.shape[0]} rows")
    print(table(rows, ["system", "examples/s", "x native", "P@1 dense", "P@1 sparse"]))
    return {"moments": args.moments[0], "by_moments": by_moments,
            "native_eps": native_eps, "numpy_eps": numpy_eps, "torch_eps": torch_eps, "p1_dense": p_dense,
            "p1_sparse": p_sparse, "torch_p1": torch_p1, "train_rows": n_train,
            "peers": {"bolt_eps": 509, "bolt_p1_sparse": 0.32, "pytorch_eps": 382, "pytorch_p1": 0.43}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["670k", "100k", "both"], default="both")
    ap.add_argument("--quick", action="store_true", help="fewer steps / rows (a smoke run)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-numpy", action="store_true")
    ap.add_argument("--moments", default="f32", type=lambda v: v.split(","),
                    help="storages of Adam's moments to train with, comma-separated (f32,bf16); the first one's "
                         "state is also timed on the interpreter")
    ap.add_argument("--tag", default="", help="results/train_throughput_<tag>.json (default: no suffix)")
    ap.add_argument("--threads", type=int, default=2, help="boltc native's threads")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: time the native steps by process CPU time (see NATIVE_THREADS)")
    args = ap.parse_args(argv)
    global NATIVE_THREADS, CLOCK
    NATIVE_THREADS = args.threads
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    bw = memory_bandwidth()
    print(f"memory bandwidth this run (2 threads, read): {bw / 1e9:.1f} GB/s")
    out = {"bandwidth_Bps": bw, "quick": args.quick, "native_threads": args.threads, "clock": args.clock,
           "load_average": os.getloadavg()}
    if args.shape in ("670k", "both"):
        out["670k"] = run_670k(args, bw)
    if args.shape in ("100k", "both"):
        out["100k"] = run_100k(args, bw)
    out["peak_rss_bytes"] = peak_rss_bytes()
    name = f"train_throughput_{args.tag}" if args.tag else "train_throughput"
    print(f"\nwrote {write_json(name, out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
