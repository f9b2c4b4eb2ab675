"""Start-up: the first compile of every shipped model, the same compile from a warm kernel cache, and
where a small text model's `boltc train` spends its wall clock (BOLTC_DEBUG=1 breakdown).

    python benchmarks/startup.py [--run-model models/text_tiny.bolt] [--epochs 8]

Compiles run in fresh processes (imports included, as a user sees them): `lower + codegen` of each
model's plan with an empty cache folder (cold), then again with the folder it filled (warm). The run
uses a cache folder warmed by one earlier run of the same command. Writes results/startup.json.

The child processes run as an installed boltc does: Python caches compiled modules (PYTHONDONTWRITEBYTECODE
is removed from their environment; the first run writes the caches). The run's figures: its process
wall clock measured from outside, the `BOLTC_DEBUG=1` parts (start-up = interpreter + imports before the
command), and its CPU time (user + system, from the kernel's accounting: on a loaded machine the wall
clock also holds the time spent waiting for a core).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
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
from boltc.pipeline import load_model_source
from boltc.lower.kernels import compile_plan
_, plan = load_model_source(sys.argv[1])
t1, c1 = time.perf_counter(), time.process_time()
compile_plan(plan)
print(t1 - t, time.perf_counter() - t1, time.process_time() - c1)
"""
PARTS = re.compile(r"\[boltc\] wall clock ([\d.]+)s: (.*)")
CPU_PARTS = re.compile(r"\[boltc\] cpu time ([\d.]+)s: (.*)")


def _env(**extra) -> dict:
    env = dict(os.environ, **extra)
    env.pop("PYTHONDONTWRITEBYTECODE", None)       # as installed: compiled modules are cached
    return env


def compile_times(model: Path, cache: str) -> tuple[float, float, float]:
    """(process wall, parse + passes, lower + codegen, lower + codegen CPU) seconds."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", COMPILE, str(model)], env=_env(BOLTC_CACHE=cache),
                       capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    plan_s, codegen_s, codegen_cpu_s = (float(v) for v in r.stdout.split())
    return wall, plan_s, codegen_s, codegen_cpu_s


def run_breakdown(model: Path, epochs: int, cache: str, out_dir: str) -> dict:
    cmd = [sys.executable, "-m", "boltc.cli", "train", str(model), "--epochs", str(epochs), "--no-progress",
           "-o", os.path.join(out_dir, "m.boltc"), "--backend", "native"]
    env = _env(BOLTC_CACHE=cache, BOLTC_DEBUG="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=model.parent)
    process_wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    m = PARTS.search(r.stderr)
    parts = {k: float(v[:-1]) for k, v in (p.split() for p in m.group(2).split(", "))}
    c = CPU_PARTS.search(r.stderr)
    cpu_parts = {k: float(v[:-1]) for k, v in (p.split() for p in c.group(2).split(", "))}
    trained = re.search(r"trained (\d+) epochs in ([\d.]+)s", r.stderr)
    return {"wall_s": float(m.group(1)), "process_wall_s": process_wall, "parts_s": parts,
            "epochs_s": float(trained.group(2)),
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "outside_training_s": process_wall - parts.get("train", 0.0),
            "cpu_parts_s": cpu_parts, "cpu_outside_training_s": float(c.group(1)) - cpu_parts.get("train", 0.0),
            "load_average": os.getloadavg()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-model", default=str(ROOT / "models" / "text_tiny.bolt"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3, help="timed runs of the train command (the best is reported)")
    ap.add_argument("--no-compile", action="store_true", help="only the train command's breakdown")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in [] if args.no_compile else sorted((ROOT / "models").glob("*.bolt")):
            cache = os.path.join(tmp, model.stem)
            cold = compile_times(model, cache)
            warm = compile_times(model, cache)
            rows.append({"model": model.stem, "cold process s": round(cold[0], 2), "cold codegen s": round(cold[2], 2),
                         "cold codegen CPU s": round(cold[3], 2),
                         "warm process s": round(warm[0], 2), "warm codegen s": round(warm[2], 3),
                         "parse + passes s": round(warm[1], 3)})
            print(json.dumps(rows[-1]), flush=True)
        cache = os.path.join(tmp, "run")
        run_breakdown(Path(args.run_model), args.epochs, cache, tmp)          # fills the cache
        runs = [run_breakdown(Path(args.run_model), args.epochs, cache, tmp) for _ in range(max(1, args.runs))]
        run = min(runs, key=lambda r: r["outside_training_s"])
        run["outside_training_all_s"] = [round(r["outside_training_s"], 3) for r in runs]
    if rows:
        print(table(rows, list(rows[0])))
    print(f"\n`boltc train {Path(args.run_model).name} --epochs {args.epochs}`, warm cache: process wall "
          f"{run['process_wall_s']:.2f}s (CPU {run['cpu_s']:.2f}s), outside training {run['outside_training_s']:.2f}s; "
          f"parts: " + ", ".join(f"{k} {v:.2f}s" for k, v in run["parts_s"].items()) +
          f"; CPU outside training {run['cpu_outside_training_s']:.2f}s: " +
          ", ".join(f"{k} {v:.2f}s" for k, v in run["cpu_parts_s"].items()) +
          f"; load average {run['load_average'][0]:.1f}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("startup_run.json" if args.no_compile else "startup.json")
    path.write_text(json.dumps({"machine": machine(), "load_average_end": os.getloadavg(), "compile": rows, "run": {"model": args.run_model, **run}},
                               indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
