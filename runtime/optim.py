"""Optimizers on touched rows only (lazy), and learning-rate schedules.

Lazy Adam (BOLT, TF LazyAdam): for each gradient block `ParamGrad(rows, cols, g)` only W[rows][:, cols]
and its moments move:  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
W -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), with t the global step (1-based) — the same
bias correction for every row, as BOLT. Rows not touched keep their moments unchanged (no decay), which
is what makes it lazy; on the touched rows the update equals dense Adam's.
SGD: with momentum mu, `m = mu m + g; W -= lr m` on the touched block (plain SGD when mu = 0).
"""
from __future__ import annotations

import math

import numpy as np


def _index(pg, shape):
    """Index of the touched block, and whether it is a view (slices: update in place, no copies).
    A rows/cols list covering every row/column (sorted unique ids) becomes a slice."""
    rows = None if pg.rows is None or len(pg.rows) == shape[0] else pg.rows
    cols = None if pg.cols is None or len(shape) < 2 or len(pg.cols) == shape[1] else pg.cols
    if rows is not None and cols is not None:
        return np.ix_(rows, cols), False
    if rows is not None:
        return rows, False
    if cols is not None:
        return (slice(None), cols), False
    return slice(None), True


ROW_CHUNK = 8192      # rows per gather/scatter block: the temporaries stay in cache (2.4x at 72k rows)


def _row_blocks(pg, shape):
    """Yield (index, is_view, g) blocks covering the touched block of a parameter, rows chunked."""
    ix, is_view = _index(pg, shape)
    if is_view or pg.rows is None or len(pg.rows) <= ROW_CHUNK:
        yield ix, is_view, pg.value
        return
    for s in range(0, len(pg.rows), ROW_CHUNK):
        sub = type(pg)(pg.rows[s:s + ROW_CHUNK], pg.cols, pg.value[s:s + ROW_CHUNK])
        yield _index(sub, shape)[0], False, sub.value


class Adam:
    """Lazy Adam; `weight_decay` > 0 adds AdamW's decoupled decay W -= lr * wd * W on the touched
    blocks of weight matrices (`W`; not biases or layernorm), so often-updated rows shrink more often."""

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-7, weight_decay=0.0):
        self.b1, self.b2, self.eps, self.wd = beta1, beta2, eps, weight_decay

    def apply(self, state, grads: dict, lr: float) -> None:
        """`grads[layer][tensor]` = ParamGrad; uses and advances nothing but the touched blocks.
        `state.step` must already count this step (t >= 1)."""
        t = max(1, state.step)
        c1, c2 = 1 - self.b1 ** t, 1 - self.b2 ** t
        for layer, tensors in grads.items():
            for name, pg in tensors.items():
                W, m, v = state.params[layer][name], state.m[layer][name], state.v[layer][name]
                for ix, is_view, g in _row_blocks(pg, W.shape):
                    g = g.astype(W.dtype, copy=False)
                    mi, vi = m[ix], v[ix]               # views when is_view, else gathered copies
                    mi *= self.b1
                    mi += (1 - self.b1) * g
                    vi *= self.b2
                    vi += (1 - self.b2) * (g * g)
                    denom = np.sqrt(vi * (1 / c2))
                    denom += self.eps
                    step = mi / denom
                    step *= lr / c1
                    if not is_view:
                        m[ix], v[ix] = mi, vi
                    if self.wd and name == "W":
                        step += (lr * self.wd) * W[ix]
                    W[ix] -= step


class SGD:
    def __init__(self, momentum=0.0):
        self.mu = momentum

    def apply(self, state, grads: dict, lr: float) -> None:
        for layer, tensors in grads.items():
            for name, pg in tensors.items():
                W = state.params[layer][name]
                ix, _ = _index(pg, W.shape)
                g = pg.value.astype(W.dtype, copy=False)
                if self.mu:
                    m = state.m[layer][name]
                    mi = self.mu * m[ix] + g
                    m[ix] = mi
                    W[ix] -= lr * mi
                else:
                    W[ix] -= lr * g


def make_optimizer(train: dict):
    kind = train.get("optimizer", "adam")
    if kind == "adam":
        return Adam(train.get("beta1", 0.9), train.get("beta2", 0.999), train.get("eps", 1e-7),
                    train.get("weight_decay", 0.0))
    if kind == "sgd":
        return SGD(train.get("momentum", 0.0))
    raise ValueError(f"unknown optimizer {kind!r}")


def lr_at(base_lr: float, schedule: dict | None, step: int, total_steps: int, steps_per_epoch: int = 1) -> float:
    """Learning rate for 0-based `step` of `total_steps`.
    warmup W steps: lr * (step+1)/W first; then the schedule over the remaining steps, with p in [0, 1]:
    constant lr; linear lr * (1 - (1-end) p); cosine lr * (end + (1-end)(1 + cos(pi p))/2);
    step: lr * gamma^floor(epoch / every), epoch = step // steps_per_epoch."""
    schedule = schedule or {"kind": "constant"}
    warm = int(schedule.get("warmup", 0) or 0)
    if step < warm:
        return base_lr * (step + 1) / warm
    kind = schedule.get("kind", "constant")
    span = max(1, total_steps - warm)
    p = min(1.0, max(0.0, (step - warm) / span))
    end = float(schedule.get("end", 0.0))
    if kind == "constant":
        return base_lr
    if kind == "linear":
        return base_lr * (1 - (1 - end) * p)
    if kind == "cosine":
        return base_lr * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * p)))
    if kind == "step":
        every = max(1, int(schedule.get("every", 1)))
        return base_lr * float(schedule.get("gamma", 0.1)) ** ((step // max(1, steps_per_epoch)) // every)
    raise ValueError(f"unknown lr schedule {kind!r}")
