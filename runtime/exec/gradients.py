"""Row-sparse gradients: what an executor's `gradients()` returns and `apply_gradients()` takes.

A gradient is a dict `(layer, tensor) -> RowGrad`. A `RowGrad` holds either a whole tensor (`rows is
None`) or only the rows a batch touched: `rows` (r,) int32 sorted and unique, `values` (r, ...) float32.
Which rows a step touches is each op's own rule (`split_row_sparse` in boltc/ops/<op>.py): for example
the input features present in the batch, or the union of its active neurons; a tensor that is not
row-sparse is handed out whole.
Data-parallel training (runtime/distributed*) sums these across workers and splits them by row range.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from boltc.runtime.exec.numpy_rules import ParamGrad

Key = tuple[str, str]


@dataclass
class RowGrad:
    rows: np.ndarray | None      # (r,) int32 sorted unique row ids, or None for a whole tensor
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


def to_param_grads(grads: dict[Key, RowGrad]) -> dict:
    """RowGrads -> runtime/exec/optim.py's `{layer: {tensor: ParamGrad(rows, None, values)}}`."""
    out: dict = {}
    for (layer, name), g in grads.items():
        out.setdefault(layer, {})[name] = ParamGrad(g.rows, None, g.values)
    return out


def to_rowgrads(grads: dict, shapes: dict[Key, tuple[int, ...]]) -> dict[Key, RowGrad]:
    """The interpreter's `{layer: {tensor: ParamGrad}}` -> RowGrads. A block with a column subset
    (rows x cols) is widened to full rows: lazy Adam updates full rows anyway, and merging blocks whose
    column sets differ between workers is not worth the bookkeeping."""
    out: dict[Key, RowGrad] = {}
    for layer, ts in grads.items():
        for name, g in ts.items():
            shape = shapes[(layer, name)]
            rows, cols, val = g.rows, getattr(g, "cols", None), np.asarray(g.value, np.float32)
            if cols is not None:
                full = np.zeros((val.shape[0], shape[1]), np.float32)
                full[:, cols] = val
                val = full
            if rows is None:
                out[(layer, name)] = RowGrad(None, np.ascontiguousarray(val.reshape(shape)))
            else:
                out[(layer, name)] = RowGrad(np.asarray(rows, np.int32), np.ascontiguousarray(val))
    return out


def one_part(g: RowGrad):
    """A gradient as the single part of `apply_parts`: (rows, pos = 0..n-1, [values])."""
    rows = None if g.rows is None else np.ascontiguousarray(g.rows, dtype=np.int32)
    n = g.values.shape[0] if rows is not None or g.values.ndim else 1
    return rows, np.arange(n, dtype=np.int32)[None, :], [np.ascontiguousarray(g.values, dtype=np.float32)]


def sum_of_parts(rows, pos, vals) -> np.ndarray:
    """The summed gradient `apply_parts` applies: (0 + part_0) + part_1 + ... per row, in part order."""
    acc = np.zeros((pos.shape[1],) + vals[0].shape[1:], np.float32)
    for p, v in zip(pos, vals):
        have = p >= 0
        acc[have] += v[p[have]]
    return acc
