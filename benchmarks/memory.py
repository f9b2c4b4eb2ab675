"""Peak memory of training on the Amazon-670K shape (SYNTHETIC data), native backend, next to the
plan_memory estimate of models/amazon670k.bolt.

  python benchmarks/memory.py [--steps 8] [--moments auto|f32|bf16]

Peak = this process's peak RSS (ru_maxrss) after building the hash tables and `--steps` training
steps; one process per setting (peak RSS cannot be reset), so compare settings by running it twice.
`--moments` overrides the model's `adam(moments=...)` (default: the model's own, auto = bf16 moments
for scores.W, whose f32 moments would take 1.28 GiB). The plan_memory estimate is for the native
backend, which keeps no gradient buffer. Goal: under 4 GiB (BOLT 7.5, PyTorch 5.5).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import batches, build_tables, fresh_state, peak_rss_bytes, synth_data, table, write_json  # noqa: E402

from boltc.pipeline import load_model_source  # noqa: E402
from boltc.runtime.exec.native import NativeExecutor  # noqa: E402

MODEL = Path(__file__).parents[1] / "models" / "amazon670k.bolt"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--moments", choices=["auto", "f32", "bf16"], default=None,
                    help="override the model's adam(moments=...) (default: as the model says)")
    args = ap.parse_args(argv)
    source = MODEL.read_text()
    if args.moments:
        assert "adam(lr=1e-4)" in source
        source = source.replace("adam(lr=1e-4)", f"adam(lr=1e-4, moments={args.moments})")
    graph, plan = load_model_source(source)
    kinds = plan["train"]["moment_dtypes"]
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
            {"figure": "plan_memory estimate (native backend)", "GiB": round(est["total"] / gib, 2)},
            {"figure": "  weights / optimizer / hash tables", "GiB": " / ".join(
                f"{est[k] / gib:.2f}" for k in ("weights", "optimizer", "hash_tables"))},
            {"figure": "  (--backend numpy also: per-batch gradient blocks up to)",
             "GiB": round(graph.graph["memory"]["numpy_gradients"] / gib, 2)},
            {"figure": "BOLT / PyTorch (PEERS.md)", "GiB": "7.5 / 5.5"}]
    storage = ", ".join(f"{layer}.{t} {k}" for layer, ts in kinds.items() for t, k in ts.items())
    print(f"peak memory, training {args.steps} steps on the 670k shape ({dt:.1f} s); Adam moments: {storage}")
    print(table(rows, ["figure", "GiB"]))
    name = "memory" if not args.moments else f"memory_{args.moments}"
    payload = {"peak_rss_bytes": peak, "baseline_rss_bytes": base, "plan_memory": est, "steps": args.steps,
               "moments": args.moments or plan["train"]["moments"], "moment_dtypes": kinds,
               "numpy_gradients_bytes": graph.graph["memory"]["numpy_gradients"]}
    print(f"wrote {write_json(name, payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
