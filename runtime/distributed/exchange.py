"""Gradient exchange for data-parallel training: row-sparse gradients, their sum, and their size on the wire.

A gradient is a dict `(layer, tensor) -> RowGrad`. A `RowGrad` holds either a dense tensor (`rows is
None`) or only the rows a worker touched: `rows` (r,) int32 sorted and unique, `values` (r, ...) float32.
Which rows a step touches:
  - an `in_major` fc over a sparse input (W (in_dim, dim)): the input features present in the batch;
  - a sparse `out_major` fc (W (dim, in_dim), b (dim,)): the union of the batch's active neurons;
  - everything else (small dense layers, other ops' parameter vectors, biases of dense layers): the whole tensor.
So on the 100k-label model a step sends about (features in batch) x 256 + (active union) x 257 floats
instead of the 100k x 256 + 100k x 257 of a dense all-reduce; `nbytes` counts what is actually sent
(row ids + values), the figure the benchmark and docs/distributed.md report.

Combining is a weighted sum: worker i sends the mean gradient over its n_i examples and the result is
sum_i (n_i / sum n) g_i, i.e. the mean over the whole global batch -- what one process would compute for
the same total batch. Summation is done in a fixed worker order so every run (and every replica) gets
the same bits (every part is added in worker order).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Key = tuple[str, str]


@dataclass
class RowGrad:
    rows: np.ndarray | None      # (r,) int32 sorted unique row ids, or None for a dense tensor
    values: np.ndarray           # (r, ...) float32, or the whole tensor when rows is None

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + (0 if self.rows is None else self.rows.nbytes))

    def to_dense(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.rows is None:
            return self.values
        out = np.zeros(shape, dtype=np.float32)
        out[self.rows] = self.values
        return out


def grads_nbytes(grads: dict[Key, RowGrad]) -> int:
    return sum(g.nbytes for g in grads.values())


def dense_nbytes(shapes: dict[Key, tuple[int, ...]]) -> int:
    """Bytes of one dense copy of every gradient tensor (float32): what a dense all-reduce moves per copy."""
    return int(sum(4 * int(np.prod(s)) for s in shapes.values()))


def sparse_from_dense(dense: np.ndarray, rows: np.ndarray | None) -> RowGrad:
    """Cut a dense gradient down to `rows` (None keeps it dense). Rows outside `rows` must be zero."""
    if rows is None:
        return RowGrad(None, np.ascontiguousarray(dense, dtype=np.float32))
    rows = np.unique(np.asarray(rows, dtype=np.int64)).astype(np.int32)
    return RowGrad(rows, np.ascontiguousarray(dense[rows], dtype=np.float32))


def combine(parts: list[dict[Key, RowGrad]], counts: list[int]) -> dict[Key, RowGrad]:
    """Weighted sum sum_i (n_i / sum n) g_i of row-sparse gradients; touched rows are the union.

    Each part's rows are sorted and unique, so merging is a union of the row ids plus one scatter-add
    per part into the union's rows: O(total rows sent), never O(dense size), and no sort of the values.
    """
    total = float(sum(counts))
    if not parts:
        return {}
    weights = [np.float32(n / total) for n in counts]
    out: dict[Key, RowGrad] = {}
    for key in parts[0]:
        gs = [p[key] for p in parts]
        if any(g.rows is None for g in gs):
            acc = None
            for g, w in zip(gs, weights):
                if g.rows is not None:
                    raise ValueError(f"gradient {key}: dense on one worker, row-sparse on another")
                acc = g.values * w if acc is None else acc + g.values * w
            out[key] = RowGrad(None, acc.astype(np.float32, copy=False))
            continue
        union = gs[0].rows
        for g in gs[1:]:
            union = np.union1d(union, g.rows)
        union = union.astype(np.int32)
        acc = np.zeros((union.size,) + gs[0].values.shape[1:], np.float32)
        for g, w in zip(gs, weights):              # a part's rows are unique: fancy += adds each once
            if g.rows.size:
                acc[np.searchsorted(union, g.rows)] += g.values * w
        out[key] = RowGrad(union, acc)
    return out


def densify(grads: dict[Key, RowGrad], shapes: dict[Key, tuple[int, ...]]) -> dict[Key, RowGrad]:
    """The dense all-reduce baseline: every tensor sent whole (zeros where nothing was touched)."""
    return {k: RowGrad(None, g.to_dense(shapes[k])) for k, g in grads.items()}


def touched_rows(grads: dict[Key, RowGrad]) -> dict[Key, np.ndarray | None]:
    return {k: g.rows for k, g in grads.items()}
