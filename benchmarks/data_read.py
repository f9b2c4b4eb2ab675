"""How fast boltc reads (and generates) Extreme Classification Repository text files (plain and gzip) into CSR.

Compares, in one run on the same files: boltc's vectorised reader (runtime/data/xcformat.py), and a plain
Python line-by-line parser (the baseline any hand-written loader starts from). The data file is
synthetic (runtime/data/synth.py, Amazon-670K-shaped rows: 135,909 features, ~75 nonzeros, 670,091 labels),
written to a temporary folder (never into the repository). Reports MB/s of text (uncompressed bytes),
wall time and CPU time (the machines are shared: CPU time is the steadier figure).

    python benchmarks/data_read.py [--rows 50000] [--baseline-rows 10000]
Writes benchmarks/results/data_read.json.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from boltc.runtime.data import synth, xcformat

RESULTS = Path(__file__).parent / "results"


def python_baseline(path):
    """The obvious loader: split every line in Python."""
    rows, cols, vals, lrows, lcols = [], [], [], [], []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        n, d, l = map(int, f.readline().split())
        for i, line in enumerate(f):
            parts = line.rstrip("\n").split(" ")
            if parts[0]:
                for lab in parts[0].split(","):
                    lrows.append(i)
                    lcols.append(int(lab))
            for tok in parts[1:]:
                if tok:
                    j, v = tok.split(":")
                    rows.append(i)
                    cols.append(int(j))
                    vals.append(float(v))
    X = sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(n, d))
    Y = sp.csr_matrix((np.ones(len(lcols), np.float32), (lrows, lcols)), shape=(n, l))
    return X, Y


def measure(fn, path, text_bytes):
    t0, c0 = time.perf_counter(), time.process_time()
    X, Y = fn(path)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "mb_per_s_wall": text_bytes / 1e6 / wall,
            "mb_per_s_cpu": text_bytes / 1e6 / cpu, "rows": X.shape[0], "nnz": int(X.nnz)}, (X, Y)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--baseline-rows", type=int, default=10000, help="rows for the slow Python baseline")
    args = ap.parse_args()
    out = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "synthetic": True, "rows": args.rows, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        spec = dict(rows=args.rows, features=135909, labels=670091, seed=1)
        t0, c0 = time.perf_counter(), time.process_time()
        X, Y = synth.generate(spec)
        gen_wall, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
        out["synthetic_generation"] = {"rows": args.rows, "wall_s": gen_wall, "cpu_s": gen_cpu,
                                       "rows_per_s_cpu": args.rows / gen_cpu, "nnz_per_row": X.nnz / X.shape[0]}
        plain, gz = Path(tmp) / "train.txt", Path(tmp) / "train.txt.gz"
        xcformat.write_xc(plain, X, Y)
        xcformat.write_xc(gz, X, Y)
        small = Path(tmp) / "small.txt"
        xcformat.write_xc(small, X[:args.baseline_rows], Y[:args.baseline_rows])
        size, size_small = plain.stat().st_size, small.stat().st_size
        table = []
        for name, fn, path, nbytes in (
                ("boltc xcformat, plain", xcformat.read_xc, plain, size),
                ("boltc xcformat, gzip", xcformat.read_xc, gz, size),
                ("boltc xcformat, plain (baseline rows)", xcformat.read_xc, small, size_small),
                ("python line loop (baseline rows)", python_baseline, small, size_small)):
            r, (Xr, Yr) = measure(fn, path, nbytes)
            r["reader"] = name
            r["text_mb"] = nbytes / 1e6
            table.append(r)
            if path == small:
                ref = (X[:args.baseline_rows], Y[:args.baseline_rows])
                assert abs(Xr - ref[0]).max() < 1e-5 and (Yr != ref[1]).nnz == 0, f"{name} read wrong values"
        base = table[3]
        for r in table:
            r["speedup_vs_python_cpu"] = base["cpu_s"] / r["cpu_s"] * (r["text_mb"] / base["text_mb"])
        out["results"] = table
    print(f"{'reader':<40}{'MB':>9}{'wall s':>9}{'cpu s':>9}{'MB/s wall':>11}{'MB/s cpu':>10}{'x python':>10}")
    for r in table:
        print(f"{r['reader']:<40}{r['text_mb']:>9.1f}{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}"
              f"{r['mb_per_s_wall']:>11.1f}{r['mb_per_s_cpu']:>10.1f}{r['speedup_vs_python_cpu']:>10.1f}")
    g = out["synthetic_generation"]
    print(f"synthetic generator (runtime/data/synth.py): {g['rows']:,} Amazon-670K-shaped rows in {g['cpu_s']:.2f} s CPU "
          f"({g['rows_per_s_cpu']:,.0f} rows/s, {g['nnz_per_row']:.1f} nnz/row)")
    print("(data: synthetic, Amazon-670K-shaped rows)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data_read.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
