"""Sharding training data across workers by file byte ranges, so no worker reads the whole file.

`shard_ranges(path, n)` cuts an uncompressed XC or svmlight file into n byte ranges whose boundaries are
moved forward to the next line start (the driver reads at most one line per boundary); worker i then
`read_shard(path, start, end, ...)`s only its range. The XC header line (`N D L`) is skipped by the
first range. A line belongs to the range that holds its first byte, so every row is read exactly once.

Decisions:
- Compressed (.gz) files cannot be seeked: `shard_ranges` refuses them with a DataError saying to
  decompress (reading a gzip stream to a byte offset means every worker inflates the file up to there).
- Rows are parsed here by a small reader of the two line formats rather than by runtime/data.py, whose
  loader takes a whole file; line numbers in errors are global (counted from the file start only when an
  error is raised, so the happy path never scans the prefix).
- A synthetic or in-memory source is sharded by contiguous row ranges (`row_ranges`).
"""
from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

from boltc.errors import DataError, Location
from boltc.runtime.dataset import Dataset, as_csr


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


def read_shard(path: str, start: int, end: int, input_name: str, features: int, classes: int) -> Dataset:
    """Parse the rows of `path` whose first byte lies in [start, end): XC (`l1,l2 f:v ...`) or svmlight."""
    with open(path, "rb") as f:
        f.seek(start)
        blob = f.read(end - start)
    labels_ptr, labels_idx = [0], []
    feat_ptr, feat_idx, feat_val = [0], [], []
    pos = 0
    for raw in blob.split(b"\n"):
        here, pos = start + pos, pos + len(raw) + 1
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            head, _, rest = raw.partition(b" ") if not raw[:1].isspace() else (b"", b" ", raw)
            if b":" in head:                       # a row with no label whose first token is a feature
                head, rest = b"", raw
            for tok in head.split(b","):
                if tok:
                    lab = int(float(tok))
                    if not 0 <= lab < classes:
                        raise ValueError(f"label {lab} outside [0, {classes})")
                    labels_idx.append(lab)
            for tok in rest.split():
                if tok.startswith(b"qid:"):
                    continue
                k, _, v = tok.partition(b":")
                j = int(k)
                if not 0 <= j < features:
                    raise ValueError(f"feature {j} outside [0, {features})")
                feat_idx.append(j)
                feat_val.append(float(v) if v else 1.0)
        except ValueError as e:
            raise DataError(f"malformed row: {e}", Location(str(path), _line_number(path, here))) from None
        labels_ptr.append(len(labels_idx))
        feat_ptr.append(len(feat_idx))
    n = len(feat_ptr) - 1
    x = sp.csr_matrix((np.asarray(feat_val, np.float32), np.asarray(feat_idx, np.int32), np.asarray(feat_ptr, np.int64)),
                      shape=(n, features))
    y = sp.csr_matrix((np.ones(len(labels_idx), np.float32), np.asarray(labels_idx, np.int32),
                       np.asarray(labels_ptr, np.int64)), shape=(n, classes))
    return Dataset(inputs={input_name: as_csr(x, features)}, labels=as_csr(y, classes),
                   source=f"{path}[{start}:{end}]", meta={"byte_range": (start, end)})


def slice_dataset(ds: Dataset, lo: int, hi: int) -> Dataset:
    """Rows [lo, hi) of an in-memory dataset (synthetic data or arrays handed to the Python API)."""
    rows = np.arange(lo, hi)
    ins = {k: (v[lo:hi] if isinstance(v, np.ndarray) else v[rows]) for k, v in ds.inputs.items()}
    labels = ds.labels[rows] if ds.labels is not None else None
    return Dataset(inputs=ins, labels=labels, class_names=ds.class_names,
                   source=f"{ds.source}[{lo}:{hi}]", meta=dict(ds.meta))
