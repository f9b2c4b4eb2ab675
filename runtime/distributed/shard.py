"""Sharding training data across workers by file byte ranges, so no worker reads the whole file.

`shard_ranges(path, n)` cuts an uncompressed XC or svmlight file into n byte ranges whose boundaries are
moved forward to the next line start (the driver reads at most one line per boundary); worker i then
`read_shard(path, start, end, ...)`s only its range. The XC header line (`N D L`) is skipped by the
first range. A line belongs to the range that holds its first byte, so every row is read exactly once.

Decisions:
- Compressed (.gz) files cannot be seeked: `shard_ranges` refuses them with a DataError saying to
  decompress (reading a gzip stream to a byte offset means every worker inflates the file up to there).
- Rows are parsed by runtime/data/xcformat.py's `parse_rows` (the whole-file reader's inner step); line
  numbers in errors are global (counted from the file start only when an error is raised, so the happy
  path never scans the prefix).
- A synthetic or in-memory source is sharded by contiguous row ranges (`row_ranges`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from boltc.errors import DataError, Location
from boltc.runtime.data import load as data, synth, xcformat
from boltc.runtime.data.dataset import Dataset
from boltc.runtime.data.load import _guess_format, load_dataset


def _is_header(line: bytes) -> bool:
    parts = line.split()
    return len(parts) == 3 and all(p.isdigit() for p in parts)


def shard_ranges(path: str, n: int) -> list[tuple[int, int]]:
    """n byte ranges [start, end) covering every data row of `path`, each starting at a line start."""
    if str(path).endswith(".gz"):
        raise DataError(f"distributed training shards files by byte range and cannot seek in a gzip file; "
                        f"decompress it first (gunzip -k {os.path.basename(path)})", Location(str(path), 0))
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        first = f.readline()
        body = len(first) if _is_header(first) else 0
        bounds = [body]
        for i in range(1, n):
            target = max(body + (size - body) * i // n, bounds[-1])
            if target >= size:
                bounds.append(size)
                continue
            f.seek(target - 1)
            f.readline()                   # finish the line holding byte target-1: next line starts here
            bounds.append(min(max(f.tell(), bounds[-1]), size))
        bounds.append(size)
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


def row_ranges(rows: int, n: int) -> list[tuple[int, int]]:
    cuts = [rows * i // n for i in range(n + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(n)]


def _line_number(path: str, offset: int) -> int:
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def read_shard(path: str, start: int, end: int, fmt: str = "xc", features: int | None = None,
               classes: int | None = None, one_based: bool = False) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Parse the rows of `path` whose first byte lies in [start, end) -> (X, Y) CSR.

    Uses the project's vectorised block parser (`xcformat.parse_rows`) on the range; its error lines are
    shifted to file line numbers (the prefix is only counted when an error is raised).
    """
    with open(path, "rb") as f:
        f.seek(start)
        blob = f.read(end - start)
    if blob and not blob.endswith(b"\n"):
        blob += b"\n"
    if not blob.strip():
        return (sp.csr_matrix((0, features or 0), dtype=np.float32), sp.csr_matrix((0, classes or 0), dtype=np.float32))
    try:
        return xcformat.parse_rows(blob, str(path), 1, features, classes, one_based,
                                   drop_negative=fmt == "svmlight")
    except DataError as e:
        local = e.location.line if e.location else 1
        raise DataError(e.message, Location(str(path), _line_number(path, start) + local - 1)) from None


def svmlight_one_based(path: str) -> bool:
    """The same rule as the whole-file reader: 1-based unless a feature 0 appears in the first chunk."""
    with open(path, "rb") as f:
        return xcformat.looks_one_based(f.read(xcformat.CHUNK_BYTES))


def slice_dataset(ds: Dataset, lo: int, hi: int) -> Dataset:
    """Rows [lo, hi) of an in-memory dataset (synthetic data or arrays handed to the Python API)."""
    rows = np.arange(lo, hi)
    ins = {k: (v[lo:hi] if isinstance(v, np.ndarray) else v[rows]) for k, v in ds.inputs.items()}
    labels = ds.labels[rows] if ds.labels is not None else None
    return Dataset(inputs=ins, labels=labels, class_names=ds.class_names,
                   source=f"{ds.source}[{lo}:{hi}]", meta=dict(ds.meta))


def plan_shards(source, plan: dict, workers: int) -> list[dict]:
    """One shard description per worker; small, sent to the worker, which loads the rows itself."""
    if isinstance(source, (str, os.PathLike)):
        source = {"kind": "file", "path": str(source), "format": None}
    if isinstance(source, dict) and source.get("kind") == "synthetic":
        rows = int(source["rows"])
        return [{"kind": "synthetic", "source": source, "lo": lo, "hi": hi} for lo, hi in row_ranges(rows, workers)]
    if isinstance(source, dict) and source.get("kind", "file") == "file":
        path = str(source["path"])
        if not Path(path).exists():
            raise DataError("data file not found", Location(path, 0))
        fmt = source.get("format") or _guess_format(path)
        if fmt in ("xc", "svmlight") and not path.endswith(".gz"):
            one_based = fmt == "svmlight" and svmlight_one_based(path)
            return [{"kind": "range", "path": path, "start": a, "end": b, "format": fmt, "one_based": one_based}
                    for a, b in shard_ranges(path, workers)]
    # gzip, CSV/TSV, in-memory data: the driver reads once and hands each worker its slice
    ds = load_dataset(source, plan)
    return [{"kind": "dataset", "dataset": slice_dataset(ds, lo, hi)} for lo, hi in row_ranges(ds.rows, workers)]


def load_shard(spec: dict, plan: dict) -> Dataset:
    """Worker side: the rows of one shard, checked against the plan like any data source."""
    if spec["kind"] == "dataset":
        return spec["dataset"]
    inp = next(i for i in plan["inputs"] if i.get("kind") in ("sparse", "dense"))
    classes = int(plan["target"]["classes"]) if plan.get("target") else None
    if spec["kind"] == "synthetic":
        opts = {k: v for k, v in spec["source"].items() if k not in ("kind", "loc")}
        opts.setdefault("features", int(inp["dim"]))
        if classes is not None:
            opts.setdefault("labels", classes)
        X, Y = synth.generate(opts, spec["lo"], spec["hi"])
        where = f"synthetic rows [{spec['lo']}, {spec['hi']})"
    else:
        X, Y = read_shard(spec["path"], spec["start"], spec["end"], spec["format"], int(inp["dim"]),
                          classes if spec["format"] == "xc" else None, spec["one_based"])
        where = spec["path"]
    ds = data.checked_dataset(X, Y, inp, plan, where)
    ds.meta["shard"] = {k: v for k, v in spec.items() if k != "source"}
    return ds
