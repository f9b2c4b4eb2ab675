"""Training speed of every shipped model (models/*.bolt, 20ng_nextword's included): boltc native,
PyTorch with the same architecture, the NumPy interpreter, and the memory-bandwidth bound, in one run.

    python benchmarks/model_speed.py [--models bibtex,news20] [--steps 30] [--no-torch]

Per model, on its own training data (the data block's files from ../shared/data, XC files only their
first rows; SYNTHETIC where the block says synthetic), with every `auto` setting at its default (no
tuning search), the same batches for every
system, after warm-up steps:
- boltc native: `train_step` + `after_step` (LSH upkeep included), the model's own thread count;
- PyTorch (its best of 1 and 2 threads): the plan's layers as torch modules (a sparse-input fc or embedding is an
  EmbeddingBag with per-sample weights, sparse gradients and SparseAdam beside Adam when the plan's
  optimizer is Adam, which is PyTorch's fastest faithful form; otherwise dense gradients), its output
  dense (PyTorch has no LSH-sparse layer), the same loss;
- the NumPy interpreter (fewer steps: it is the slowest);
- the bound: bytes one native step must move (each touched weight row read for the forward, then W and
  both moments read and written by the optimizer; activations and their gradients written and read;
  LSH buckets probed), against the memory bandwidth measured in this run (2 threads reading 1 GiB).
  A model whose weights stay in cache can exceed this DRAM bound (share > 100%).
Every system is timed in alternating rounds (best of --rounds). Ratios are within this run only. Results: results/model_speed.json (rewritten after every model).

On a machine shared with other jobs, wall-clock ratios follow the load more than the code (PyTorch's
threads wait for cores others hold). `--threads 1 --clock cpu` compares the systems on one thread each
by the CPU time the process spends (time.process_time): every system then pays for its own work only.
`--epoch 1` times steps of the frozen epochs (from `freeze_after`, 1 by default): no more table rebuilds,
and a lookup that misses a label inserts it into its probed buckets (many labels per row do: delicious).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time
from pathlib import Path


def _pin_blas_threads(argv) -> None:
    """With --threads N, the BLAS of numpy (and PyTorch's OpenMP) get N threads too, set before numpy
    loads. Otherwise the interpreter's products leave OpenBLAS's idle threads spinning after each call,
    and with --clock cpu that spinning is charged to whichever system is timed next (measured: native
    tiny 47k ex/s timed after the interpreter, 101k without it)."""
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--threads=") else argv[i + 1] if a == "--threads" and i + 1 < len(argv) else None
        if value and value.isdigit() and int(value) > 0:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = value


if __name__ == "__main__":
    _pin_blas_threads(sys.argv[1:])

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import machine, table  # noqa: E402
from train_throughput import memory_bandwidth  # noqa: E402

import boltc  # noqa: E402
from boltc.plan.moments import moment_dtypes  # noqa: E402
from boltc.runtime.data.dataset import Dataset  # noqa: E402
from boltc.runtime.exec.interp import NumpyExecutor  # noqa: E402
from boltc.runtime.exec.state import ModelState  # noqa: E402

ROOT = Path(__file__).parents[1]
RESULTS = Path(__file__).parent / "results"
MOMENT_BYTES = {"f32": 4, "bf16": 2}


# ---------------------------------------------------------------- data
def training_batches(model, name: str, rows_needed: int):
    """The model's first `rows_needed` training rows as Batches of the plan's batch size, and the number
    of rows of its whole training set (the LSH upkeep schedules by the share of an epoch)."""
    plan = model.plan
    source = copy.deepcopy(plan["data"]["train"])
    epoch_rows = int(source.get("rows", 0)) if source.get("kind") == "synthetic" else None
    if source.get("kind") == "file" and (source.get("format") or "xc") == "xc" \
            and str(source["path"]).endswith((".txt", ".txt.gz")):
        # an XC file (20ng_nextword's has 1,000,000 rows): only its first chunks
        import scipy.sparse as sp
        from boltc.runtime.data.xcformat import iter_chunks, open_binary, read_header
        with open_binary(source["path"]) as f:
            epoch_rows = read_header(f, source["path"])[0]
        xs, ys, got = [], [], 0
        for chunk in iter_chunks(source["path"], "xc"):
            xs.append(chunk.X)
            ys.append(chunk.Y)
            got += chunk.X.shape[0]
            if got >= rows_needed:
                break
        ds = model.dataset((sp.vstack(xs, format="csr")[:rows_needed], sp.vstack(ys, format="csr")[:rows_needed]))
    else:
        if source.get("kind") == "synthetic":
            source["rows"] = min(int(source["rows"]), rows_needed)
        ds = model.dataset(source)
    B = int(plan["train"]["batch"])
    n = min(ds.rows, rows_needed)
    return [ds.take(np.arange(s, s + B)) for s in range(0, n - B + 1, B)], epoch_rows or ds.rows


# ---------------------------------------------------------------- boltc
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = CLOCKS["wall"]


EPOCH = 0       # the epoch the timed steps belong to (--epoch): from freeze_after (1) on, the tables are frozen


def time_steps(ex, batches, lr: float, batches_per_epoch: int = 0) -> float:
    """Examples/s of `batches`; with batches_per_epoch, the LSH upkeep runs on its schedule as in training."""
    t = CLOCK()
    n = 0
    for i, b in enumerate(batches):
        ex.train_step(b, lr)
        if batches_per_epoch:
            ex.after_step(EPOCH, i + 2, batches_per_epoch)
        n += b.size
    return n / (CLOCK() - t)


def step_bytes(ex, plan: dict, batch) -> int:
    """Bytes one training step must move at least (see the module note)."""
    kinds = moment_dtypes(plan)
    inputs = {i["name"]: i for i in plan["inputs"]}
    total = 0
    for layer in plan["layers"]:
        name, dim = layer["name"], layer.get("dim", 0)
        mb = MOMENT_BYTES.get((kinds.get(name) or {}).get("W", "f32"), 4)
        per_weight = 4 + 2 * (4 + 2 * mb)               # forward read + W, m, v read and written
        total += 4 * 4 * batch.size * dim                  # value and gradient, each written and read
        if layer["op"] in ("fc", "embedding") and layer.get("layout") == "in_major" or layer["op"] == "embedding":
            x = batch.inputs[layer["inputs"][0]]
            total += np.unique(x.indices).size * dim * per_weight
        elif layer["op"] == "fc":
            rows = dim
            if layer.get("active", dim) < dim:
                inv = getattr(ex, "_inv", None) if name == plan["output"] else None
                rows = int(inv[3]) if inv is not None else min(dim, batch.size * layer["active"])
            total += rows * layer["in_dim"] * per_weight
        elif layer["op"] == "layernorm":
            total += 2 * dim * per_weight
        idx = ex.state.lsh.get(name) if hasattr(ex, "state") else None
        if idx is not None:
            total += batch.size * idx.L * idx.reservoir * 4
    del inputs
    return total


# ---------------------------------------------------------------- PyTorch, same architecture
def torch_system(plan: dict):
    import torch
    torch.manual_seed(0)
    inputs = {i["name"]: i for i in plan["inputs"]}
    mods, sparse_params, dense_params = {}, [], []
    adam = plan["train"]["optimizer"] == "adam"
    for layer in plan["layers"]:
        name, op = layer["name"], layer["op"]
        src = layer["inputs"][0]
        if op in ("fc", "embedding") and src in inputs and inputs[src]["kind"] != "dense":
            mode = layer.get("reduce", "sum") if op == "embedding" else "sum"
            bag = torch.nn.EmbeddingBag(layer["in_dim"], layer["dim"], mode="sum" if mode != "mean" else "mean",
                                        sparse=adam)
            torch.nn.init.normal_(bag.weight, 0, 0.01)
            (sparse_params if adam else dense_params).append(bag.weight)
            bias = torch.nn.Parameter(torch.zeros(layer["dim"])) if op == "fc" and layer.get("bias", True) else None
            if bias is not None:
                dense_params.append(bias)
            mods[name] = ("bag", bag, bias)
        elif op == "fc":
            lin = torch.nn.Linear(layer["in_dim"], layer["dim"], bias=layer.get("bias", True))
            dense_params += list(lin.parameters())
            mods[name] = ("linear", lin, None)
        elif op == "layernorm":
            ln = torch.nn.LayerNorm(layer["dim"], eps=layer.get("eps", 1e-5))
            dense_params += list(ln.parameters())
            mods[name] = ("ln", ln, None)
        elif op == "concat":
            mods[name] = ("concat", None, None)
        elif op == "dropout":
            mods[name] = ("dropout", torch.nn.Dropout(float(layer.get("rate") or 0.0)), None)
        else:
            raise NotImplementedError(op)
    tr = plan["train"]
    if adam:
        opts = [torch.optim.Adam(dense_params, lr=tr["lr"], eps=tr["eps"])]
        if sparse_params:
            opts.append(torch.optim.SparseAdam(sparse_params, lr=tr["lr"], eps=tr["eps"]))
    else:
        opts = [torch.optim.SGD(dense_params, lr=tr["lr"], momentum=tr.get("momentum", 0.0))]
    act = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "linear": lambda z: z,
           "softmax": lambda z: z}

    def forward(batch):
        vals = {}
        for name, (kind, mod, bias) in mods.items():
            layer = next(l for l in plan["layers"] if l["name"] == name)
            if kind == "bag":
                x = batch.inputs[layer["inputs"][0]]
                z = mod(torch.from_numpy(x.indices.astype(np.int64)), torch.from_numpy(x.indptr[:-1].astype(np.int64)),
                        per_sample_weights=torch.from_numpy(x.data) if mod.mode == "sum" else None)
                if bias is not None:
                    z = z + bias
            elif kind == "linear":
                src = layer["inputs"][0]
                x = vals[src] if src in vals else torch.from_numpy(np.asarray(batch.inputs[src], np.float32))
                z = mod(x)
            elif kind in ("ln", "dropout"):
                z = mod(vals[layer["inputs"][0]])
            else:
                z = torch.cat([vals[s] for s in layer["inputs"]], 1)
            vals[name] = act.get(layer.get("activation") or "linear")(z) if name != plan["output"] else z
        return vals[plan["output"]]

    def step(batch):
        logits = forward(batch)
        y = batch.labels.tocsr()
        if plan["loss"] == "binary_cross_entropy":
            t = torch.from_numpy(np.asarray(y.toarray(), np.float32).reshape(logits.shape))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, t)
        else:
            yd = torch.zeros(logits.shape)
            rows = np.repeat(np.arange(y.shape[0]), np.diff(y.indptr))
            yd[torch.from_numpy(rows), torch.from_numpy(y.indices.astype(np.int64))] = 1.0
            yd = yd / yd.sum(1, keepdim=True).clamp(min=1)
            loss = -(yd * torch.log_softmax(logits, 1)).sum(1).mean()
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()

    class System:
        def train_step(self, batch, lr):
            step(batch)
    return System()


# ---------------------------------------------------------------- one model
def measure(name: str, source, args, bw: float) -> dict:
    model = boltc.compile(source, backend="native", **({"threads": args.threads} if args.threads else {}))
    plan = model.plan
    B = int(plan["train"]["batch"])
    warm = 2
    batches, rows = training_batches(model, name, (warm + args.steps) * B)
    if len(batches) < warm + 2:
        return {"model": name, "note": f"only {rows} training rows"}
    timed = batches[warm:warm + args.steps]
    lr = float(plan["train"]["lr"])
    ex = model.executor
    if not getattr(ex, "native", False):
        return {"model": name, "note": f"not native: {getattr(ex, 'fallback_reason', '?')}"}
    bpe = -(-rows // B)
    for b in batches[:warm]:
        ex.train_step(b, lr)
        if EPOCH:
            ex.after_step(EPOCH, 0, bpe)   # the tables freeze here, as at the start of that epoch
    # every system is built once, then timed in alternating rounds (best of args.rounds): the load of
    # a shared machine moves between seconds, and each round gives every system the same conditions
    systems = {"native": (ex, timed, bpe)}
    if not args.no_numpy:
        ix = NumpyExecutor(plan, ModelState.init(plan), threads=ex.threads)
        ix.train_step(batches[0], lr)
        systems["numpy"] = (ix, timed[:max(1, min(len(timed), args.numpy_steps))], bpe)
    if not args.no_torch:
        try:
            import torch  # optional: the bench extra
            # PyTorch's best of 1 and 2 intra-op threads: on a loaded machine its spinning threads can
            # lose more than they gain (the same holds for OpenBLAS, runtime/exec/blas.py)
            for threads in ((args.threads,) if args.threads else (1, 2)):
                torch.set_num_threads(threads)
                ts = torch_system(plan)
                for b in batches[:warm]:
                    ts.train_step(b, lr)
                systems[f"torch{threads}"] = (ts, timed[:max(1, min(len(timed), args.torch_steps))], 0)
        except ImportError:
            pass
    best = dict.fromkeys(systems, 0.0)
    for _ in range(args.rounds):
        for key, (system, bs, per_epoch) in systems.items():
            if key.startswith("torch"):
                torch.set_num_threads(int(key[-1]))
            best[key] = max(best[key], time_steps(system, bs, lr, per_epoch))
    native = best["native"]
    nbytes = step_bytes(ex, plan, timed[-1])
    bound = bw / (nbytes / B)
    r = {"model": name, "batch": B, "steps": len(timed), "rounds": args.rounds, "native_eps": native,
         "bytes_per_example": nbytes / B, "bound_eps": bound, "share_of_bound": native / bound,
         "numpy_eps": best.get("numpy"), "torch_eps": max(best.get("torch1", 0.0), best.get("torch2", 0.0)) or None}
    del systems
    if r.get("torch_eps"):
        r["native_vs_torch"] = native / r["torch_eps"]
    if r.get("numpy_eps"):
        r["native_vs_numpy"] = native / r["numpy_eps"]
    del model, ex
    gc.collect()
    return r


def model_sources(only):
    big = ("synth100k", "amazon670k")                  # last: the slowest to set up
    out = [(p.stem, str(p)) for p in sorted((ROOT / "models").glob("*.bolt"), key=lambda p: (p.stem in big, p.stem))]
    if only:
        keep = set(only.split(","))
        out = [(n, s) for n, s in out if n in keep]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--steps", type=int, default=30, help="timed native steps per model")
    ap.add_argument("--torch-steps", type=int, default=10)
    ap.add_argument("--numpy-steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="alternating timing rounds (best of)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-numpy", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=0,
                    help="boltc's and PyTorch's thread count (default: the model's own; PyTorch's best of 1 and 2)")
    ap.add_argument("--epoch", type=int, default=0,
                    help="time steps of this epoch (1: the frozen epochs, where a lookup that misses a label "
                         "inserts it into the tables; 0: the first epoch, with table rebuilds)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="cpu: process CPU time (with --threads 1: each system's own work, robust to load)")
    args = ap.parse_args(argv)
    global CLOCK, EPOCH
    CLOCK = CLOCKS[args.clock]
    EPOCH = args.epoch
    bw = memory_bandwidth()
    print(f"memory bandwidth this run (2 threads, read): {bw / 1e9:.1f} GB/s", flush=True)
    rows = []
    out_path = RESULTS / f"model_speed{'_' + args.tag if args.tag else ''}.json"
    for name, source in model_sources(args.models):
        try:
            r = measure(name, source, args, bw)
        except boltc.errors.BoltError as e:
            r = {"model": name, "note": f"skipped: {e.message}"}
        rows.append(r)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
        RESULTS.mkdir(exist_ok=True)
        out_path.write_text(json.dumps({"machine": machine(), "bandwidth_Bps": bw, "steps": args.steps,
                                        "threads": args.threads or "model", "clock": args.clock, "epoch": args.epoch,
                                        "load_average": os.getloadavg(), "rows": rows}, indent=1, default=float))
    fmt = []
    for r in rows:
        f = {"model": r["model"]}
        for k, label in (("native_eps", "boltc native ex/s"), ("torch_eps", "PyTorch ex/s"),
                         ("numpy_eps", "interpreter ex/s"), ("bound_eps", "bytes bound ex/s")):
            f[label] = f"{r[k]:,.0f}" if r.get(k) else r.get("note", "-")[:40] if k == "native_eps" else "-"
        f["share of bound"] = f"{100 * r['share_of_bound']:.0f}%" if r.get("share_of_bound") else "-"
        f["x PyTorch"] = f"{r['native_vs_torch']:.1f}" if r.get("native_vs_torch") else "-"
        f["x interpreter"] = f"{r['native_vs_numpy']:.1f}" if r.get("native_vs_numpy") else "-"
        fmt.append(f)
    print(f"\ntraining throughput, {args.steps} timed steps per model (same batches for every system), "
          f"bandwidth {bw / 1e9:.1f} GB/s, threads {args.threads or 'the model' + chr(39) + 's'}, clock {args.clock}, "
          f"epoch {args.epoch}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(table(fmt, list(fmt[0])))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
