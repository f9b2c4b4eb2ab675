"""How far does a share of 20ng_nextword's training rows held out overstate its test rows? The data set's
own count baseline (`ngram_baseline.py` in its folder: the most frequent next words given the previous two
words, backing off to one, then to unigram) scored both ways: trained on the training file and scored on
the test file (other messages), and trained on a seeded 95% of the training rows and scored on the other 5%
(positions from the same messages: the split `holdout 0.05` makes). No network is trained.

    python benchmarks/nextword_holdout.py [--share 0.05] [--seed 0]

Prints a table and writes benchmarks/results/nextword_holdout.json.
"""
from __future__ import annotations

import argparse
import gzip
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_json  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / ".." / "shared" / "data" / "20ng_nextword"


def baseline(train: Path, test: Path) -> dict:
    out = subprocess.run([sys.executable, str(DATA / "ngram_baseline.py"), str(train), str(test)],
                         check=True, capture_output=True, text=True).stdout
    p1, p5 = re.search(r"trigram-backoff P@1 ([\d.]+), P@5 ([\d.]+)", out).groups()
    return {"rows": int(re.search(r"rows (\d+)", out).group(1)), "P@1": float(p1), "P@5": float(p5)}


def write_xc(path: Path, header: str, lines: list[str]) -> Path:
    _, features, labels = header.split()      # the row count is this file's own
    with gzip.open(path, "wt", compresslevel=1) as f:
        f.write(f"{len(lines)} {features} {labels}\n")
        f.writelines(lines)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 0.0 < args.share < 1.0:
        ap.error(f"--share: expected a fraction between 0 and 1 (exclusive), got {args.share}")
    if not (DATA / "train.txt.gz").exists():
        print(f"skipped: {DATA} is absent")
        return
    with gzip.open(DATA / "train.txt.gz", "rt") as f:
        header = f.readline()
        lines = f.readlines()
    order = np.random.default_rng(args.seed).permutation(len(lines))
    n_held = int(round(args.share * len(lines)))
    with tempfile.TemporaryDirectory() as tmp:
        held = write_xc(Path(tmp) / "held.txt.gz", header, [lines[i] for i in order[:n_held]])
        rest = write_xc(Path(tmp) / "rest.txt.gz", header, [lines[i] for i in order[n_held:]])
        rows = [("training file -> test file (other messages)", baseline(DATA / "train.txt.gz", DATA / "test.txt.gz")),
                (f"{100 * (1 - args.share):g}% of the training rows -> the other {100 * args.share:g}% (same messages)",
                 baseline(rest, held))]
    print("| trained on -> scored on | rows scored | P@1 | P@5 |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['rows']:,} | {r['P@1']:.2f} | {r['P@5']:.2f} |")
    write_json("nextword_holdout", {"synthetic": False, "command": " ".join(["benchmarks/nextword_holdout.py", *sys.argv[1:]]),
                                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "share": args.share, "seed": args.seed,
                                    "rows": [{"split": name, **r} for name, r in rows]})


if __name__ == "__main__":
    main()
