"""Peak memory of training on the Amazon-670K shape (SYNTHETIC data), native backend, next to the
plan_memory estimate of models/amazon670k.bolt.

  python benchmarks/memory.py [--steps 8]

Peak = this process's peak RSS (ru_maxrss) after building the hash tables and `--steps` training
steps. The plan_memory estimate counts a gradient buffer the size of the weights; the native backend
never allocates one (each touched row's gradient is summed in a per-chunk scratch row and applied at
once), so the script also prints the estimate without it. Goal: under 4 GiB (BOLT 7.5, PyTorch 5.5).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import batches, build_tables, fresh_state, peak_rss_bytes, synth_data, table, write_json  # noqa: E402

from boltc.plan import load_model_source  # noqa: E402
from boltc.runtime.native import NativeExecutor  # noqa: E402

MODEL = Path(__file__).parents[1] / "models" / "amazon670k.bolt"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    _, plan = load_model_source(str(MODEL))
    base = peak_rss_bytes()
    out = plan["layers"][-1]
    X, Y = synth_data(args.steps * plan["train"]["batch"], plan["inputs"][0]["dim"], out["dim"])
    state = fresh_state(plan)
    ex = NativeExecutor(plan, state, threads=2)
    build_tables(plan, state)
    t = time.perf_counter()
    for b in batches(X, Y, plan["train"]["batch"]):
        ex.train_step(b, plan["train"]["lr"])
    dt = time.perf_counter() - t
    peak = peak_rss_bytes()
    est = plan["memory"]
    gib = 1 << 30
    rows = [{"figure": "measured peak RSS (native, 2 threads)", "GiB": round(peak / gib, 2)},
            {"figure": "  of which before the model (Python, libraries, data)", "GiB": round(base / gib, 2)},
            {"figure": "plan_memory estimate (total)", "GiB": round(est["total"] / gib, 2)},
            {"figure": "plan_memory estimate without the gradient buffer", "GiB": round((est["total"] - est["gradients"]) / gib, 2)},
            {"figure": "  weights / optimizer / hash tables", "GiB": " / ".join(
                f"{est[k] / gib:.2f}" for k in ("weights", "optimizer", "hash_tables"))},
            {"figure": "BOLT / PyTorch (PEERS.md)", "GiB": "7.5 / 5.5"}]
    print(f"peak memory, training {args.steps} steps on the 670k shape ({dt:.1f} s)")
    print(table(rows, ["figure", "GiB"]))
    print(f"wrote {write_json('memory', {'peak_rss_bytes': peak, 'baseline_rss_bytes': base, 'plan_memory': est, 'steps': args.steps})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
