"""Optimizers on touched rows only (lazy), and learning-rate schedules.

Lazy Adam (BOLT, TF LazyAdam): for each gradient block `ParamGrad(rows, cols, g)` only W[rows][:, cols]
and its moments move:  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
W -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), with t the global step (1-based) — the same
bias correction for every row, as BOLT. Rows not touched keep their moments unchanged (no decay), which
is what makes it lazy; on the touched rows the update equals dense Adam's.
SGD: with momentum mu, `m = mu m + g; W -= lr m` on the touched block (plain SGD when mu = 0).

This is the specification of the native update kernels (boltc/lower/backward.py `_update`), and the
two agree bit for bit given the same gradient: both round the hyper-parameters to the weights' dtype
once (bias corrections computed in float64 first, as runtime/exec/native.py `_hyper` does) and evaluate
the same float32 operations in the same order, one rounding each (no fused multiply-add):
    m' = b1*m + (1-b1)*g;  v' = b2*v + (1-b2)*(g*g);  store m', v'
    step = (lr * (m'/bc1)) / (sqrt(v'/bc2) + eps)  [+ (lr*wd)*W for weight matrices];  W = W - step
Moments stored as bfloat16 (uint16 arrays; `adam(moments=bf16|auto)`, rule and reasons in
boltc/plan/moments.py) are widened exactly before the update, rounded to nearest even on
store, and m', v' above are then the stored (rounded) values.
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


def f32_from_bf16(h: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly: the bits are the top half of the float32."""
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def bf16_from_f32(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounded to nearest, ties to even. Adding 0x7FFF plus the lowest
    kept bit to the bit pattern carries into the kept half exactly when the dropped half is above a tie,
    or a tie with an odd kept half; this is also right for subnormals, and finite values past the
    largest bfloat16 round to inf. NaN would carry into the exponent, so it is kept as a quiet NaN
    (its top bits, with the quiet bit set) instead."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, (b >> np.uint32(16)) | np.uint32(0x40), rounded).astype(np.uint16)


BF16 = np.dtype(np.uint16)        # how bfloat16 moments are stored (numpy has no bfloat16 dtype)


class Adam:
    """Lazy Adam; `weight_decay` > 0 adds AdamW's decoupled decay W -= lr * wd * W on the touched
    blocks of weight matrices (`W`; not biases or other vectors), so often-updated rows shrink more often."""

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-7, weight_decay=0.0):
        self.b1, self.b2, self.eps, self.wd = beta1, beta2, eps, weight_decay

    def hyper(self, lr: float, t: int, dtype) -> dict:
        """The hyper-parameters as scalars of the compute dtype, rounded as the native kernels get them."""
        c = np.dtype(dtype).type
        b1, b2 = c(self.b1), c(self.b2)
        return {"b1": b1, "b2": b2, "omb1": c(1) - b1, "omb2": c(1) - b2, "eps": c(self.eps), "lr": c(lr),
                "bc1": c(1 - self.b1 ** t), "bc2": c(1 - self.b2 ** t), "lrwd": c(lr) * c(self.wd)}

    def apply(self, state, grads: dict, lr: float) -> None:
        """`grads[layer][tensor]` = ParamGrad; uses and advances nothing but the touched blocks.
        `state.step` must already count this step (t >= 1)."""
        t = max(1, state.step)
        for layer, tensors in grads.items():
            for name, pg in tensors.items():
                W, m, v = state.params[layer][name], state.m[layer][name], state.v[layer][name]
                bf16 = m.dtype == BF16
                if bf16 and (v.dtype != BF16 or W.dtype != np.float32):
                    raise TypeError(f"{layer}.{name}: bf16 moments need float32 weights and both moments bf16")
                h = self.hyper(lr, t, W.dtype)
                decay = bool(self.wd) and name == "W"
                for ix, is_view, g in _row_blocks(pg, W.shape):
                    self._block(W, m, v, ix, is_view and not bf16, g.astype(W.dtype, copy=False), h, bf16, decay)

    @staticmethod
    def _block(W, m, v, ix, in_place: bool, g, h, bf16: bool, decay: bool) -> None:
        # in_place: m[ix] / v[ix] are views of float moments, updated where they lie (no copies)
        mi = f32_from_bf16(m[ix]) if bf16 else m[ix]
        vi = f32_from_bf16(v[ix]) if bf16 else v[ix]
        mi *= h["b1"]
        mi += h["omb1"] * g
        vi *= h["b2"]
        vi += h["omb2"] * (g * g)
        if bf16:
            mq, vq = bf16_from_f32(mi), bf16_from_f32(vi)
            m[ix], v[ix] = mq, vq
            mi, vi = f32_from_bf16(mq), f32_from_bf16(vq)        # the step uses what is stored
        elif not in_place:
            m[ix], v[ix] = mi, vi
        step = mi / h["bc1"]
        step *= h["lr"]
        denom = vi / h["bc2"]
        np.sqrt(denom, out=denom)
        denom += h["eps"]
        step /= denom
        if decay:
            step += h["lrwd"] * W[ix]
        W[ix] -= step


class SGD:
    """SGD with optional momentum; `weight_decay` > 0 adds the same decoupled decay as Adam's,
    W -= lr * step + (lr * wd) * W, on the touched rows of weight matrices (not biases)."""

    def __init__(self, momentum=0.0, weight_decay=0.0):
        self.mu, self.wd = momentum, weight_decay

    def apply(self, state, grads: dict, lr: float) -> None:
        for layer, tensors in grads.items():
            for name, pg in tensors.items():
                W = state.params[layer][name]
                c = W.dtype.type                  # scalars rounded to the weights' dtype, as the kernels
                ix, _ = _index(pg, W.shape)
                g = pg.value.astype(W.dtype, copy=False)
                if self.mu:
                    m = state.m[layer][name]
                    mi = c(self.mu) * m[ix] + g
                    m[ix] = mi
                else:
                    mi = g
                step = c(lr) * mi
                if self.wd and name == "W":
                    step = step + (c(lr) * c(self.wd)) * W[ix]
                W[ix] -= step


def make_optimizer(train: dict):
    kind = train.get("optimizer", "adam")
    if kind == "adam":
        return Adam(train.get("beta1", 0.9), train.get("beta2", 0.999), train.get("eps", 1e-7),
                    train.get("weight_decay", 0.0))
    if kind == "sgd":
        return SGD(train.get("momentum", 0.0), train.get("weight_decay", 0.0))
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
