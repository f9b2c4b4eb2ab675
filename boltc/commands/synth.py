"""`boltc synth -o dir/`: write seeded synthetic extreme-classification data (runtime/data/synth.py) as XC
text files dir/train.txt and dir/test.txt (same task, different example seeds). The figures of any
benchmark on these files are synthetic, and reports must say so."""
from __future__ import annotations

import gzip
import os
import sys
import time
from pathlib import Path

from boltc.errors import BoltError
from boltc.runtime.data import synth
from boltc.runtime.data.synth import SynthSpec
from boltc.runtime.data.xcformat import format_rows

HELP = "write seeded synthetic XC data (train.txt / test.txt) shaped like the public XC datasets"


def add_arguments(p) -> None:
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--rows", type=int, default=10000, help="training rows")
    p.add_argument("--test-rows", type=int, default=None, help="test rows (default: rows / 10; 0 = none)")
    p.add_argument("--features", type=int, default=135909)
    p.add_argument("--labels", type=int, default=670091)
    p.add_argument("--nnz", type=int, default=75, help="average nonzeros per row")
    p.add_argument("--seed", type=int, default=1, help="seed of the training rows (test rows use seed+1)")
    p.add_argument("--task", type=int, default=0, help="seed of the prototypes / label frequencies")
    p.add_argument("--gzip", action="store_true", help="write .txt.gz")


def _write(path: Path, spec) -> int:
    """Stream blocks of rows to an XC file (the whole data set never sits in memory)."""
    tmp = path.with_name(path.name + ".tmp")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(tmp, "wb") as f:
        f.write(f"{spec.rows} {spec.features} {spec.labels}\n".encode())
        for _, X, Y in synth.iter_blocks(spec):
            f.write(format_rows(X, Y))
    os.replace(tmp, path)
    return spec.rows


def run(args) -> int:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    test_rows = args.rows // 10 if args.test_rows is None else args.test_rows
    base = dict(features=args.features, labels=args.labels, nnz=args.nnz, task=args.task)
    if args.rows < 1:
        raise BoltError("--rows must be at least 1")
    suffix = ".txt.gz" if args.gzip else ".txt"
    t0 = time.perf_counter()
    for name, rows, seed in (("train", args.rows, args.seed), ("test", test_rows, args.seed + 1)):
        if rows <= 0:
            continue
        spec = SynthSpec.from_options(dict(base, rows=rows, seed=seed))
        path = out / (name + suffix)
        _write(path, spec)
        print(f"wrote {path} ({rows:,} rows, {args.features:,} features, {args.labels:,} labels; synthetic, "
              f"task={args.task} seed={seed})", file=sys.stderr)
    print(f"done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0
