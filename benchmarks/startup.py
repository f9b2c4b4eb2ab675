"""Start-up: the first compile of every shipped model, the same compile from a warm kernel cache, and
where a small text model's `boltc train` spends its wall clock (BOLTC_DEBUG=1 breakdown).

    python benchmarks/startup.py [--run-model models/text_tiny.bolt] [--epochs 8]

Compiles run in fresh processes (imports included, as a user sees them): `lower + codegen` of each
model's plan with an empty cache folder (cold), then again with the folder it filled (warm). The run
uses a cache folder warmed by one earlier run of the same command. Writes results/startup.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import machine, table  # noqa: E402

ROOT = Path(__file__).parents[1]
RESULTS = Path(__file__).parent / "results"
COMPILE = """
import sys, time
t = time.perf_counter()
from boltc.plan import load_model_source
from boltc.runtime.exec.native_kernels import compile_plan
_, plan = load_model_source(sys.argv[1])
t1 = time.perf_counter()
compile_plan(plan)
print(t1 - t, time.perf_counter() - t1)
"""
PARTS = re.compile(r"\[boltc\] wall clock ([\d.]+)s: (.*)")


def compile_times(model: Path, cache: str) -> tuple[float, float, float]:
    """(process wall, parse + passes, lower + codegen) seconds."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", COMPILE, str(model)], env=dict(os.environ, BOLTC_CACHE=cache),
                       capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    plan_s, codegen_s = (float(v) for v in r.stdout.split())
    return wall, plan_s, codegen_s


def run_breakdown(model: Path, epochs: int, cache: str, out_dir: str) -> dict:
    cmd = [sys.executable, "-m", "boltc.cli", "train", str(model), "--epochs", str(epochs), "--no-progress",
           "-o", os.path.join(out_dir, "m.boltc"), "--backend", "native"]
    env = dict(os.environ, BOLTC_CACHE=cache, BOLTC_DEBUG="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=model.parent)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    m = PARTS.search(r.stderr)
    parts = {k: float(v[:-1]) for k, v in (p.split() for p in m.group(2).split(", "))}
    trained = re.search(r"trained (\d+) epochs in ([\d.]+)s", r.stderr)
    return {"wall_s": float(m.group(1)), "parts_s": parts, "epochs_s": float(trained.group(2)),
            "outside_training_s": float(m.group(1)) - parts.get("train", 0.0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-model", default=str(ROOT / "models" / "text_tiny.bolt"))
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in sorted((ROOT / "models").glob("*.bolt")):
            cache = os.path.join(tmp, model.stem)
            cold = compile_times(model, cache)
            warm = compile_times(model, cache)
            rows.append({"model": model.stem, "cold process s": round(cold[0], 2), "cold codegen s": round(cold[2], 2),
                         "warm process s": round(warm[0], 2), "warm codegen s": round(warm[2], 3),
                         "parse + passes s": round(warm[1], 3)})
            print(json.dumps(rows[-1]), flush=True)
        cache = os.path.join(tmp, "run")
        run_breakdown(Path(args.run_model), args.epochs, cache, tmp)          # fills the cache
        run = run_breakdown(Path(args.run_model), args.epochs, cache, tmp)
    print(table(rows, list(rows[0])))
    print(f"\n`boltc train {Path(args.run_model).name} --epochs {args.epochs}`, warm cache: wall {run['wall_s']:.2f}s, "
          f"outside training {run['outside_training_s']:.2f}s; parts: " +
          ", ".join(f"{k} {v:.2f}s" for k, v in run["parts_s"].items()))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "startup.json"
    path.write_text(json.dumps({"machine": machine(), "compile": rows, "run": {"model": args.run_model, **run}},
                               indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
