"""Plain containers that cross module boundaries in the runtime: a Dataset and a Batch.

Sparse values are scipy.sparse CSR matrices with int32 indices, int64 indptr and float32 data
(`as_csr` normalises anything else). Labels are always a CSR matrix of shape (rows, classes) whose
nonzero columns are the example's label ids (single-label: exactly one per row; binary: classes == 1 and
a row holds column 0 when positive). Dense inputs are float32 C-contiguous 2-D arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from boltc.errors import DataError, Location


def as_csr(x, dim: int | None = None) -> sp.csr_matrix:
    m = sp.csr_matrix(x)
    if dim is not None and m.shape[1] != dim:
        m = sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], dim))
    m.sum_duplicates()
    m.sort_indices()
    m.indices = m.indices.astype(np.int32, copy=False)
    m.indptr = m.indptr.astype(np.int64, copy=False)
    m.data = m.data.astype(np.float32, copy=False)
    return m


def take_rows(m: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """m[rows] for a CSR matrix, in O(nonzeros taken). Why not m[rows]: scipy's row indexing of a CSR with
    int64 indptr and int32 indices first casts the *whole* index array to int64 (measured: 32 ms per
    256-row batch of a 400k-row, 30M-nonzero file, against 0.1 ms here), which made in-memory training
    on large files 4x slower than streaming them."""
    rows = np.asarray(rows, dtype=np.int64)
    starts, ends = m.indptr[rows], m.indptr[rows + 1]
    lens = ends - starts
    indptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    pos = np.arange(indptr[-1], dtype=np.int64) + np.repeat(starts - indptr[:-1], lens)
    out = sp.csr_matrix((m.data[pos], m.indices[pos], indptr), shape=(rows.size, m.shape[1]))
    # in the dtypes the native kernels read (as as_csr): scipy's constructor casts indptr to int32 when
    # it fits, and the executor would then convert every batch again (a scipy copy per input per step)
    out.indptr = indptr
    out.indices = out.indices.astype(np.int32, copy=False)
    return out


@dataclass
class Dataset:
    inputs: dict[str, object]                 # input name -> CSR (sparse/text/categorical) or ndarray (dense)
    labels: sp.csr_matrix | None              # (rows, classes), None at predict time
    class_names: list[str] | None = None      # for text classifiers: id -> name
    source: str = ""                          # file path or "synthetic(...)", for messages
    meta: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        first = next(iter(self.inputs.values()))
        return first.shape[0]

    def take(self, rows: np.ndarray) -> "Batch":
        ins = {k: (_take(v, rows) if not isinstance(v, np.ndarray) else np.ascontiguousarray(v[rows]))
               for k, v in self.inputs.items()}
        labels = _take(self.labels, rows) if self.labels is not None else None
        return Batch(inputs=ins, labels=labels, rows=np.asarray(rows, dtype=np.int64))


@dataclass
class Batch:
    inputs: dict[str, object]
    labels: sp.csr_matrix | None
    rows: np.ndarray | None = None            # dataset row ids (for the sampler)
    weights: np.ndarray | None = None         # per-example importance weights (float32) or None

    @property
    def size(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


def _take(m, rows):
    return take_rows(m, rows) if sp.isspmatrix_csr(m) else m[rows]


def _target(plan: dict) -> dict:
    return plan.get("target") or {}


def l2_normalize_rows(X: sp.csr_matrix) -> sp.csr_matrix:
    """Rows scaled to unit L2 norm (empty rows stay empty). Why an option: linear XC baselines (and
    the ridge numbers in shared/data READMEs) use L2-normalised rows; binary bag-of-words rows of very
    different lengths otherwise feed the first layer inputs of very different scales."""
    X = X.copy()
    sq = np.add.reduceat(X.data.astype(np.float64) ** 2, X.indptr[:-1]) if X.nnz else np.zeros(X.shape[0])
    sq[np.diff(X.indptr) == 0] = 1.0
    X.data /= np.repeat(np.sqrt(sq), np.diff(X.indptr)).astype(np.float32)
    return X


def keep_features(X: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """X with only the entries of feature ids start..stop-1 (`sparse(dim, keep=range(start, stop))`); ids
    are not shifted, so the width stays."""
    X = as_csr(X)
    kept = (X.indices >= start) & (X.indices < stop)
    if kept.all():
        return X
    indptr = np.concatenate(([0], np.cumsum(kept)))[X.indptr].astype(X.indptr.dtype)
    return sp.csr_matrix((X.data[kept], X.indices[kept], indptr), shape=X.shape)


def checked_dataset(X: sp.csr_matrix, Y: sp.csr_matrix | None, inp: dict, plan: dict, where: str) -> Dataset:
    """X, Y checked against the plan's input `inp` and target (DataError naming `where`), widened to
    the model's dims, labels as 0/1 CSR: the one check for every source (files, chunks, arrays). An input declared
    `sparse(dim, normalize=l2)` gets its rows scaled to unit length here, and `keep=range(a, b)` its other
    features dropped, so every source (training file, streamed chunk, array, stdin row at predict) is
    treated alike."""
    dim = int(inp["dim"])
    if inp.get("keep") and inp.get("kind") == "sparse":
        X = keep_features(X, *inp["keep"])       # before normalize=l2: the kept features make the unit row
    if inp.get("normalize") == "l2" and inp.get("kind") == "sparse":
        X = l2_normalize_rows(as_csr(X))
    if X.shape[1] > dim:
        raise DataError(f"the data has {X.shape[1]} features but input '{inp['name']}' has dim {dim}",
                        Location(where, 0))
    labels = None
    target = _target(plan)
    if Y is not None and target:
        classes = int(target["classes"])
        Y = as_csr(Y)
        if target.get("kind") == "binary":
            # binary: positive rows hold column 0; the file marks them with label 1 (0/1 and -1/+1 files)
            pos = np.zeros(Y.shape[0], dtype=bool)
            if Y.shape[1] > 1:
                pos = np.asarray(Y[:, 1].toarray()).ravel() > 0
            Y = sp.csr_matrix((np.ones(pos.sum(), np.float32), (np.flatnonzero(pos), np.zeros(pos.sum(), int))),
                              shape=(Y.shape[0], 1))
        elif Y.shape[1] > classes:
            used = int(Y.indices.max(initial=-1)) + 1
            if used > classes:
                raise DataError(f"the data uses label {used - 1} but target '{target['name']}' has "
                                f"{classes} classes", Location(where, 0))
        labels = as_csr(Y, classes)
        labels.data[:] = 1.0
    value = as_csr(X, dim)
    if inp.get("kind") == "dense":
        value = np.ascontiguousarray(value.toarray(), dtype=np.float32)
    return Dataset(inputs={inp["name"]: value}, labels=labels, source=where)
