"""Does every shape compile? The scope check of the LLVM 22 LoopVectorize workaround.

LLVM 22's LoopVectorize aborted the whole process (an assertion, not an exception) on the softmax loops
of some constant trip counts (79 and 159: bibtex's output). `Kernel.opaque_i64` (boltc/lower/builder.py)
hides those trip counts from LLVM; this script looks for shapes where something similar still happens.

It compiles every shipped model (models/*.bolt that lower to native code) and N random fc-chain models,
each in its own child process (an LLVM abort kills the process that runs it), through the same path as
the runtime: front end and passes -> `lower_plan` -> `codegen.compile_module` (the O3 pipeline with loop
and SLP vectorization, then object code). The on-disk object cache is not used, so LLVM always runs.

Random models (seeded, so a failing shape can be rebuilt from its seed and index):
  input   sparse(D), D log-uniform in [2, 200000] (70%), or dense(D), D log-uniform in [1, 1024];
  hidden  0-3 fc layers (at least 1 when the output is sparse: the native backend's chain rule), widths
          log-uniform in [1, 512], activation relu/tanh/sigmoid/linear, bias true (70%) or false;
  output  fc(..., W, softmax), W log-uniform in [2, 100000]; sparsity auto (50%) or a fraction such
          that the active count is any whole number in [1, W]; cross_entropy over multilabel(W);
  optimizer adam or sgd.
A row is `ok`, `not native` (the plan runs on the interpreter: nothing to compile), `rejected` (the
front end refused the random model, e.g. it does not fit in memory), `abort` (killed by a signal: the
failure this looks for), `error` (another exit status != 0) or `timeout`.

    python benchmarks/shape_sweep.py --random 100 [--seed 0] [--jobs 1]
    python benchmarks/shape_sweep.py --random 100 --without-workaround \
        --out benchmarks/results/shape_sweep_without_workaround.json        # the control

prints one line per model and a summary, and writes benchmarks/results/shape_sweep.json.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"

# The child: .bolt text on stdin -> plan -> one LLVM module of every kernel -> optimised object code.
# With --without-workaround the child first makes Kernel.opaque_i64 return a plain constant (the control:
# shows which shapes the workaround is for).
NO_WORKAROUND = """
from boltc.lower.builder import Kernel
Kernel.opaque_i64 = lambda self, v, tag: self.i64(v)
"""
CHILD = """
import json, sys
from boltc.pipeline import load_model_source
from boltc.lower.rules import lower_plan, native_support
from boltc import codegen
from boltc.errors import BoltError
text = sys.stdin.read()
try:
    _, plan = load_model_source(text[1:].strip() if text.startswith("@") else text)   # "@path" or source
except BoltError as e:
    print(json.dumps({"native": False, "rejected": True, "reason": e.render().splitlines()[0]}))
    sys.exit(0)
reason = native_support(plan)
if reason is not None:
    print(json.dumps({"native": False, "reason": reason}))
    sys.exit(0)
km, _ = lower_plan(plan)
obj, _ = codegen.compile_module(km.ir_text())
out = next(l for l in plan["layers"] if l["name"] == plan["output"])
print(json.dumps({"native": True, "object_bytes": len(obj), "output_dim": out["dim"], "active": out["active"]}))
"""


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def random_model(rng: random.Random, index: int) -> tuple[str, dict]:
    """(.bolt source, a short description of its shape) of one random fc-chain model."""
    sparse_in = rng.random() < 0.7
    in_dim = _log_uniform(rng, 2, 200_000) if sparse_in else _log_uniform(rng, 1, 1024)
    out_dim = _log_uniform(rng, 2, 100_000)
    if rng.random() < 0.5:
        sparsity = "auto"
    else:
        active = rng.randint(1, out_dim)
        sparsity = f"{min(1.0, (active + 0.5) / out_dim):.9g}"        # floor(s * W) == active
    n_hidden = rng.randint(0, 3)
    if n_hidden == 0 and sparsity != "auto" and float(sparsity) < 1.0:
        n_hidden = 1                        # a sparse output directly over the input is not a native chain
    if n_hidden == 0 and sparsity == "auto":
        sparsity = "1.0"                    # auto would make a wide output sparse: keep the chain native
    lines, prev, hidden = [], "x", []
    for j in range(n_hidden):
        width = _log_uniform(rng, 1, 512)
        act = rng.choice(("relu", "tanh", "sigmoid", "linear"))
        bias = "" if rng.random() < 0.7 else ", bias=false"
        lines.append(f"  h{j} = fc({prev}, {width}, {act}{bias})")
        hidden.append(f"{width}{act[0]}{'' if not bias else '-nb'}")
        prev = f"h{j}"
    out_bias = "" if rng.random() < 0.7 else ", bias=false"
    lines.append(f"  s = fc({prev}, {out_dim}, softmax, sparsity={sparsity}{out_bias})")
    optimizer = rng.choice(("adam(lr=1e-3)", "sgd(lr=0.01, momentum=0.9)", "sgd(lr=0.01)"))
    kind = "sparse" if sparse_in else "dense"
    source = (f"model sweep{index} {{\n  input x: {kind}({in_dim})\n  target y: multilabel({out_dim})\n"
              + "\n".join(lines)
              + f"\n  loss cross_entropy(s, y)\n  train {{ optimizer {optimizer} }}\n}}\n")
    shape = {"input": f"{kind}({in_dim})", "hidden": hidden, "output": out_dim, "sparsity": sparsity,
             "optimizer": optimizer.split("(")[0] + ("+momentum" if "momentum" in optimizer else "")}
    return source, shape


def compile_in_child(source: str, timeout: float, workaround: bool = True) -> dict:
    t0 = time.perf_counter()
    code = CHILD if workaround else NO_WORKAROUND + CHILD
    try:
        r = subprocess.run([sys.executable, "-c", code], input=source, capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": timeout}
    row: dict = {"seconds": round(time.perf_counter() - t0, 2)}
    if r.returncode == 0:
        row.update(json.loads(r.stdout.strip().splitlines()[-1]))
        row["status"] = "ok" if row["native"] else ("rejected" if row.get("rejected") else "not native")
    elif r.returncode < 0:
        row.update(status="abort", signal=signal.Signals(-r.returncode).name, stderr=r.stderr[-1500:])
    else:
        row.update(status="error", returncode=r.returncode, stderr=r.stderr[-1500:])
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--random", type=int, default=100, help="how many random fc-chain models (N)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="child processes at once")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    ap.add_argument("--no-shipped", action="store_true", help="skip models/*.bolt")
    ap.add_argument("--without-workaround", action="store_true",
                    help="control run: constant trip counts where Kernel.opaque_i64 would hide them")
    ap.add_argument("--out", default=str(RESULTS / "shape_sweep.json"))
    args = ap.parse_args(argv)

    jobs: list[tuple[str, str, dict]] = []
    if not args.no_shipped:
        for path in sorted((ROOT / "models").glob("*.bolt")):
            jobs.append((f"models/{path.name}", f"@{path}", {}))       # by path: its data paths resolve
    rng = random.Random(args.seed)
    for i in range(args.random):
        source, shape = random_model(rng, i)
        jobs.append((f"random[{i}]", source, shape))

    def run(job):
        name, source, shape = job
        row = {"name": name, **shape, **compile_in_child(source, args.timeout, not args.without_workaround)}
        if shape:
            row["source"] = source              # a random model: enough to rebuild a failing shape
        return row

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows = []
        for row in pool.map(run, jobs):
            rows.append(row)
            what = f"{row.get('input', '')} {row.get('hidden', '')} -> {row.get('output', '')} " \
                   f"s={row.get('sparsity', '')}" if row.get("input") else ""
            extra = f"active {row['active']}/{row['output_dim']}" if row.get("native") else row.get("reason", "")
            print(f"{row['name']:<28} {row['status']:<10} {row['seconds']:>6.1f}s  {what} {extra}".rstrip(),
                  flush=True)
            if row["status"] in ("abort", "error", "timeout"):
                print("    " + (row.get("stderr") or "").strip().replace("\n", "\n    ")[-800:], flush=True)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    failed = [r for r in rows if r["status"] in ("abort", "error", "timeout")]
    print(f"\n{len(rows)} models in {time.perf_counter() - t0:.0f}s: "
          + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    for r in failed:
        print(f"FAILED {r['name']}: {r['status']}\n{r.get('source', '')}")
    import llvmlite
    import llvmlite.binding as llvm
    meta = {"seed": args.seed, "random": args.random, "workaround": not args.without_workaround,
            "llvmlite": llvmlite.__version__,
            "llvm": ".".join(map(str, llvm.llvm_version_info)), "cpu": llvm.get_host_cpu_name(),
            "machine": platform.machine(), "counts": counts,
            "failed": [r["name"] for r in failed]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
