"""`dropout(x, rate)`: in a training step, each value of x is kept with probability 1 - rate and scaled
by 1 / (1 - rate), else set to 0; in evaluation and inference it is x itself. No parameters. Reads a
dense value.

Which values are kept is a function of (the training seed, the step, the layer's name, the value's
position in the batch) only: keep[b, j] = (h >> 32) >= floor(rate * 2^32), h = splitmix64(key + b*dim + j)
in 64-bit wrap-around arithmetic, key = RunContext.layer_seed(name) of the step's seed
(boltc/ops/base.py step_seed). So both backends drop the same values (the interpreter computes the
hash with NumPy's uint64 arithmetic, the kernel with LLVM's i64, identically), every element is
decided on its own (the same result for any thread count), and a run resumed from a checkpoint drops
what the uninterrupted run dropped (the step is in the checkpoint). The kept values are multiplied by
the float32 scale (a value times the same float32 number: bit-identical between the backends).
"""
from __future__ import annotations

import numpy as np

from boltc.ops.base import LowerContext, Op, no_row_sparse, no_split_kernels, no_split_params
from boltc.ops.numeric import ptr

_M64 = (1 << 64) - 1
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def threshold(rate: float) -> int:
    """Values whose hash's upper 32 bits are below this are dropped: rate of the 2^32 outcomes."""
    return min(1 << 32, int(float(rate) * (1 << 32)))


def scale(rate: float, dtype=np.float32):
    return dtype(1.0) / (dtype(1.0) - dtype(rate))


def keep_mask(key: int, rows: int, dim: int, rate: float) -> np.ndarray:
    """bool (rows, dim): which values a training step keeps (the specification of the `fwd` kernel)."""
    i = np.arange(rows * dim, dtype=np.uint64) + np.uint64(key & _M64)
    z = i + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(32)) >= np.uint64(threshold(rate))).reshape(rows, dim)


# ---------------------------------------------------------------- front end, shapes, plan

def args(kit):
    return (kit.Param("input", kit.reference, positional=True),
            # `auto`: boltc tune searches 0..0.5 (boltc/tune/space.py); untuned, 0 (keeps every value)
            kit.Param("rate", kit.tunable(kit.real(0.0, 1.0, what="a dropout rate"), "dropout", 0.0),
                      positional=True))


def check(attrs) -> list:
    rate = attrs.get("rate")
    if isinstance(rate, float) and rate >= 1.0:
        return [(f"a dropout rate must be below 1 (rate={rate:g} would drop every value)", "dropout")]
    return []


def to_bolt(inputs, attrs, kit) -> str:
    return kit.call("dropout", [inputs[0], kit.value(attrs["rate"])])


def plan_entry(attrs, dim, input_sparse) -> dict:
    return {"dim": dim, "rate": float(attrs["rate"])}


# ---------------------------------------------------------------- interpreter (the specification)

def forward(layer, params, inputs, active=None, as_pairs=False, ctx=None):
    x = inputs[0]
    if ctx is None or not ctx.training or layer["rate"] == 0.0:
        return x, {"mask": None}
    keep = keep_mask(ctx.layer_seed(layer["name"]), x.shape[0], x.shape[1], layer["rate"])
    mask = np.where(keep, scale(layer["rate"], x.dtype.type), x.dtype.type(0))
    return x * mask, {"mask": mask}


def backward(layer, params, cache, grad, wrt_pre=False, ctx=None):
    mask = cache["mask"]
    return [grad if mask is None else grad * mask], {}


# ---------------------------------------------------------------- native kernels

def _i64(v: int) -> int:
    """A 64-bit pattern as the signed constant LLVM's i64 takes."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _fwd_kernel(km, lib, name: str, dim: int, rate: float) -> None:
    """fwd(b0, b1, key, x, y, mask): rows [b0, b1); mask keeps scale or 0 for the backward."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("key", "i64"), ("x", "ptr"), ("y", "ptr"),
                         ("mask", "ptr")])
    a, b = k.arg, k.b
    c = {n: k.i64(_i64(v)) for n, v in (("golden", _GOLDEN), ("mix1", _MIX1), ("mix2", _MIX2))}
    limit = k.i64(_i64(threshold(rate)))
    s = k.f32(float(scale(rate)))
    with k.loop(a["b0"], a["b1"], "b") as row:
        base = b.mul(row, k.i64(dim))
        with k.loop(0, dim, "j") as j:
            i = b.add(base, j)
            z = b.add(b.add(a["key"], i), c["golden"])             # wrap-around: no nsw/nuw flags
            z = b.mul(b.xor(z, b.lshr(z, k.i64(30))), c["mix1"])
            z = b.mul(b.xor(z, b.lshr(z, k.i64(27))), c["mix2"])
            z = b.xor(z, b.lshr(z, k.i64(31)))
            keep = b.icmp_unsigned(">=", b.lshr(z, k.i64(32)), limit)
            m = k.select(keep, s, k.f32(0.0))
            k.st(a["mask"], i, m)
            k.st(a["y"], i, b.fmul(k.ld(a["x"], i), m))
    k.ret()


def _bwd_kernel(km, name: str, dim: int) -> None:
    """bwd(b0, b1, g, mask, dx): dx = g * mask over rows [b0, b1)."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("g", "ptr"), ("mask", "ptr"), ("dx", "ptr")])
    a, b = k.arg, k.b
    with k.loop(a["b0"], a["b1"], "b") as row:
        base = b.mul(row, k.i64(dim))
        with k.loop(0, dim, "j") as j:
            i = b.add(base, j)
            k.st(a["dx"], i, b.fmul(k.ld(a["g"], i), k.ld(a["mask"], i)))
    k.ret()


def lower(km, layer: dict, ctx: LowerContext) -> dict:
    lib, name, dim = ctx.lib, layer["name"], layer["dim"]
    out = {r: lib.symbol(name, r) for r in ("fwd", "bwd")}
    _fwd_kernel(km, lib, out["fwd"], dim, float(layer["rate"]))
    _bwd_kernel(km, out["bwd"], dim)
    return out


# ---------------------------------------------------------------- native runner

def run_forward(ex, layer, ins, step):
    x = ins[0]
    if not step.training or layer["rate"] == 0.0:
        return x, {"mask": None}
    B, d = step.B, layer["dim"]
    y, mask = np.empty((B, d), np.float32), np.empty((B, d), np.float32)
    ex.run(layer["name"], "fwd", B, step.layer_seed(layer["name"]), ptr(x), ptr(y), ptr(mask), work=8 * d)
    return y, {"mask": mask}


def run_backward(ex, layer, cache, g, step):
    if layer["inputs"][0] not in ex.by_name:       # a model input: a leaf
        return [None]
    if cache["mask"] is None:
        return [g]
    g = np.ascontiguousarray(g, dtype=np.float32)
    dx = np.empty_like(g)
    ex.run(layer["name"], "bwd", step.B, ptr(g), ptr(cache["mask"]), ptr(dx), work=layer["dim"])
    return [dx]


OP = Op(
    name="dropout", order=50, summary="drops values at random in training steps (seeded, resumable)",
    args=args, reads="dense", check=check, to_bolt=to_bolt,
    shape=lambda attrs, in_dims: in_dims[0], weighted_input=False,
    params=lambda layer: {}, param_init={}, plan_entry=plan_entry,
    notes=lambda attrs, dim: f"rate={attrs['rate']:g}, training steps only",
    forward=forward, backward=backward, lower=lower, run_forward=run_forward, run_backward=run_backward,
    split_params=no_split_params, split_row_sparse=no_row_sparse, lower_split=no_split_kernels,  # nothing trained
)
