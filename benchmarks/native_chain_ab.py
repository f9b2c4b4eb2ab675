"""Did the DAG executor slow the chain path? Training steps of the 670k-shape chain (SYNTHETIC:
135,909 sparse features -> 256 relu -> 670,091 softmax, batch 256, BOLT's sparsity 0.005) by the current
NativeExecutor and by an older runtime/exec/native.py, in alternating turns in one process, on one state.

  git show cfcfa87:runtime/exec/native.py > /tmp/native_before.py     # the chain-only executor
  python benchmarks/native_chain_ab.py --before /tmp/native_before.py [--rounds 8 --steps 3]

Both executors run the kernels of the current lowering (the chain's kernels are the same code path in
both versions: rules.fused_input_activation keeps the chain's fused activation derivative), so the
comparison isolates the executor's orchestration. They train the same state in turns (a speed
measurement: the trajectory does not matter), each turn `--steps` steps on the next batches, in ABBA
order; the machine is shared and noisy, so the table gives the median and the best turn of each and
their ratio.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import batches, build_tables, fresh_state, synth_data, table, write_json, xc_plan  # noqa: E402

from boltc.runtime.exec.native import NativeExecutor  # noqa: E402


def load_executor(path: str):
    spec = importlib.util.spec_from_file_location("boltc.runtime.native_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.NativeExecutor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="path of the older runtime/exec/native.py")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    F, L, B = 135909, 670091, 256
    plan = xc_plan(F, L, batch=B, lr=1e-4)
    X, Y = synth_data((args.steps * args.rounds * 2 + 2) * B, F, L, seed=1)
    bs = list(batches(X, Y, B))
    state = fresh_state(plan)
    new = NativeExecutor(plan, state, threads=args.threads)
    old = load_executor(args.before)(plan, state, threads=args.threads, kernels=new.k)
    assert new.native and old.native
    build_tables(plan, state)
    lr = plan["train"]["lr"]
    new.train_step(bs[0], lr)
    old.train_step(bs[1], lr)
    times = {"before": [], "after": []}
    i = 2
    for r in range(args.rounds):
        turns = (("before", old), ("after", new))
        for name, ex in (turns if r % 2 == 0 else turns[::-1]):      # ABBA: no fixed order
            t = time.perf_counter()
            for _ in range(args.steps):
                ex.train_step(bs[i % len(bs)], lr)
                i += 1
            times[name].append(args.steps * B / (time.perf_counter() - t))
    rows = [{"executor": n, "median ex/s": round(statistics.median(v), 1), "best ex/s": round(max(v), 1)}
            for n, v in times.items()]
    ratio_med = statistics.median(times["after"]) / statistics.median(times["before"])
    ratio_best = max(times["after"]) / max(times["before"])
    print(f"670k chain (synthetic), batch {B}, {args.threads} threads, {args.rounds} alternating turns of "
          f"{args.steps} steps")
    print(table(rows, ["executor", "median ex/s", "best ex/s"]))
    print(f"after / before: median {ratio_med:.3f}, best {ratio_best:.3f}")
    path = write_json("native_chain_ab", {"before": args.before, "rounds": args.rounds, "steps": args.steps,
                                          "threads": args.threads, "turns_eps": times,
                                          "ratio_median": ratio_med, "ratio_best": ratio_best})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
