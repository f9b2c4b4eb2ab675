"""Where a native training step's time goes, kernel by kernel (CPU time, one thread by default).

    python benchmarks/step_profile.py [--model 20ng_nextword] [--steps 30] [--threads 1] [--epoch 0]

Trains a shipped model (models/<name>.bolt, its first training rows, as benchmarks/model_speed.py reads
them) for a few warm-up steps, then times `--steps` steps: every generated kernel's calls are timed
(time.process_time around each ctypes call: with more than one thread a kernel's slices on the pool's
other threads are not counted, so use --threads 1 for a breakdown), the LSH upkeep (table rebuilds on
their schedule, `after_step`) separately, and "Python and numpy" is the step's time outside the
kernels. `--epoch 1` times the frozen epochs (no rebuilds; missed labels inserted). Prints a table;
writes results/step_profile_<model>[_<tag>].json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import machine, table  # noqa: E402
from model_speed import training_batches  # noqa: E402

import boltc  # noqa: E402
from boltc.lower import kernels as kernel_library  # noqa: E402
from boltc.runtime.exec.state import neuron_rows  # noqa: E402

ROOT = Path(__file__).parents[1]
RESULTS = Path(__file__).parent / "results"


def timed_kernels(spent: collections.Counter, calls: collections.Counter):
    """Make every Kernels.fn(layer, role) callable add its CPU time to spent[layer.role]."""
    original = kernel_library.Kernels.fn

    def fn(self, layer, role):
        f = original(self, layer, role)
        key = f"{layer}.{role}"

        def call(*args):
            t = time.process_time()
            f(*args)
            spent[key] += time.process_time() - t
            calls[key] += 1
        return call
    kernel_library.Kernels.fn = fn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="20ng_nextword")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epoch", type=int, default=0, help="1: the frozen epochs (see model_speed.py --epoch)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    spent, calls = collections.Counter(), collections.Counter()
    timed_kernels(spent, calls)
    model = boltc.compile(str(ROOT / "models" / f"{args.model}.bolt"), backend="native", threads=args.threads)
    ex = model.executor
    B = int(model.plan["train"]["batch"])
    batches, rows = training_batches(model, args.model, (args.warmup + args.steps) * B)
    lr = float(model.plan["train"]["lr"])
    per_epoch = -(-rows // B)
    for b in batches[:args.warmup]:
        ex.train_step(b, lr)
        if args.epoch:
            ex.after_step(args.epoch, 0, per_epoch)
    spent.clear()
    calls.clear()
    step_s = upkeep_s = 0.0
    timed = batches[args.warmup:args.warmup + args.steps]
    for i, b in enumerate(timed):
        t0 = time.process_time()
        ex.train_step(b, lr)
        t1 = time.process_time()
        ex.after_step(args.epoch, i + args.warmup, per_epoch)
        upkeep_s += time.process_time() - t1
        step_s += t1 - t0
    n = len(timed)
    kernel_s = sum(spent.values())
    rows_out = [{"part": k, "ms per step": f"{1e3 * v / n:.2f}", "calls per step": f"{calls[k] / n:.1f}"}
                for k, v in spent.most_common()]
    rows_out.append({"part": "Python and numpy (step and upkeep, outside kernels)",
                     "ms per step": f"{1e3 * (step_s + upkeep_s - kernel_s) / n:.2f}", "calls per step": "-"})
    print(f"{args.model}: batch {B}, {n} steps, threads {args.threads}, epoch {args.epoch}: step "
          f"{1e3 * step_s / n:.2f} ms CPU + upkeep {1e3 * upkeep_s / n:.2f} ms ({B * n / (step_s + upkeep_s):,.0f} "
          f"examples/s), load average {os.getloadavg()[0]:.1f}")
    print(table(rows_out, list(rows_out[0])))
    # one table rebuild of each LSH layer (the first epoch's upkeep), timed alone, and its share per step
    rebuilds = {}
    for layer in ex.upkeep.layers:
        name = layer["name"]
        spent.clear()
        t = time.process_time()
        ex.state.lsh[name].build(neuron_rows(layer, ex.state.params[name]["W"]))
        ms = 1e3 * (time.process_time() - t)
        every = ex.upkeep.intervals(layer, per_epoch)[0]
        rebuilds[name] = {"ms": ms, "every_batches": every, "hash_ms": 1e3 * spent.get(f"{name}.hash", 0.0)}
        print(f"table rebuild of {name}: {ms:.0f} ms CPU (hashing {rebuilds[name]['hash_ms']:.0f} ms), every "
              f"{every} batches of the first epoch ({per_epoch} batches): {ms / every:.2f} ms a step")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"step_profile_{args.model}{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"machine": machine(), "model": args.model, "batch": B, "steps": n,
                               "threads": args.threads, "epoch": args.epoch, "load_average": os.getloadavg(),
                               "step_ms": 1e3 * step_s / n, "upkeep_ms": 1e3 * upkeep_s / n,
                               "kernels_ms": {k: 1e3 * v / n for k, v in spent.items()},
                               "calls_per_step": {k: c / n for k, c in calls.items()}, "rebuilds": rebuilds},
                              indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
