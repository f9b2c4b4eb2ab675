"""Training from a file larger than we want in memory: streamed vs read whole (SYNTHETIC data).

  python benchmarks/stream_memory.py [--rows 400000] [--keep DIR]

Writes a seeded synthetic XC training file with `boltc synth` (Amazon-670K's input shape: 135,909
features, ~75 nonzeros per row; 2,000 labels so that the model itself stays small and the data
dominates memory), then trains one epoch of a 135,909 -> 64 relu -> 2,000 softmax model twice, each in
a fresh process: once with the file read whole, once streamed (`file(..., stream=true)`,
runtime/data/stream.py). Prints peak RSS, examples/s and test P@1 of each, and writes
benchmarks/results/stream_memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import machine, table, write_json  # noqa: E402

MODEL = """
model streamed {{
  input  features: sparse(135909)
  target labels:   multilabel(2000)
  hidden = fc(features, 64, relu)
  scores = fc(hidden, 2000, softmax)
  loss    cross_entropy(scores, labels)
  metrics precision@1
  train {{
    optimizer adam(lr=0.001)
    batch     256
    epochs    1
  }}
  data {{
    train file("{train}", stream={stream})
    test  file("{test}")
  }}
}}
"""

CHILD = r"""
import json, resource, sys, time
import boltc
m = boltc.compile(sys.argv[1])
t = time.perf_counter()
hist = m.fit(progress=False)
secs = time.perf_counter() - t
p1 = m.evaluate(sparse=False)["precision@1"]
rows = hist["epochs"][-1]["examples_per_s"] * hist["epochs"][-1]["seconds"]
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "seconds": secs, "examples_per_s": rows / secs, "p1": p1}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400000)
    ap.add_argument("--keep", default=None, help="folder for the data (kept; reused if present)")
    args = ap.parse_args(argv)
    folder = Path(args.keep or tempfile.mkdtemp(prefix="boltc_stream_"))
    train, test = folder / "train.txt", folder / "test.txt"
    if not train.exists():
        subprocess.run([sys.executable, "-m", "boltc.cli", "synth", "-o", str(folder), "--rows", str(args.rows),
                        "--test-rows", "5000", "--labels", "2000"], check=True)
    size = train.stat().st_size
    rows = []
    for stream in ("false", "true"):
        src = folder / f"model_{stream}.bolt"
        src.write_text(MODEL.format(train=train, test=test, stream=stream))
        out = subprocess.run([sys.executable, "-c", CHILD, str(src)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"data": "streamed" if stream == "true" else "read whole",
                     "peak RSS MB": round(r["peak_rss"] / 1e6), "examples/s": round(r["examples_per_s"]),
                     "epoch s": round(r["seconds"], 1), "test P@1": round(r["p1"], 2)})
    print(f"\nSYNTHETIC training file: {args.rows:,} rows, {size / 1e6:,.0f} MB of XC text; one epoch")
    print(table(rows, ["data", "peak RSS MB", "examples/s", "epoch s", "test P@1"]))
    write_json("stream_memory", {"machine": machine(), "synthetic": True, "rows": args.rows,
                                 "file_bytes": size, "results": rows})
    if not args.keep:
        for p in folder.iterdir():
            os.remove(p)
        folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
