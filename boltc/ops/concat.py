"""`concat(a, b, ...)`: dense values side by side; the width is the sum of the parts'. No parameters.
Reads dense values (layers' outputs or dense inputs).

Native kernels:
One copy kernel per part and direction, its widths and offsets baked in as constants: the forward
copies part i (B x w_i) into columns [o_i, o_i + w_i) of the output (B x total); the backward copies
those columns of the output's gradient back out as part i's gradient. Pure data movement, split by
examples; no arithmetic, so both directions equal the spec bit for bit.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.ops.base import LowerContext, Op, no_checks, no_row_sparse, no_split_kernels, no_split_params
from boltc.ops.numeric import ptr


# ---------------------------------------------------------------- front end, shapes, plan

def args(kit):
    return kit.NAMES_ONLY            # two or more names of dense values, no keyword arguments


def to_bolt(inputs, attrs, kit) -> str:
    return kit.call("concat", list(inputs))


# ---------------------------------------------------------------- interpreter (the specification)

def forward(layer, params, inputs, active=None, as_pairs=False, ctx=None):
    parts = [np.asarray(v.toarray()) if sp.issparse(v) else v for v in inputs]
    widths = [p.shape[1] for p in parts]
    return np.concatenate(parts, axis=1), {"widths": widths, "sparse": [sp.issparse(v) for v in inputs]}


def backward(layer, params, cache, grad, wrt_pre=False, ctx=None):
    out, start = [], 0
    for w, is_sparse in zip(cache["widths"], cache["sparse"]):
        out.append(None if is_sparse else grad[:, start:start + w])
        start += w
    return out, {}


# ---------------------------------------------------------------- native kernels

def copy_columns(km, name: str, width: int, src_stride: int, src_off: int, dst_stride: int,
                 dst_off: int) -> None:
    """dst[b, dst_off + j] = src[b, src_off + j] for j < width, rows [b0, b1) (row strides given)."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("src", "ptr"), ("dst", "ptr")])
    a = k.arg
    with k.loop(a["b0"], a["b1"], "b") as b:
        s0 = k.add(k.mul(b, k.i64(src_stride)), k.i64(src_off))
        d0 = k.add(k.mul(b, k.i64(dst_stride)), k.i64(dst_off))
        with k.loop(0, width, "j") as j:
            k.st(a["dst"], k.add(d0, j), k.ld(a["src"], k.add(s0, j)))
    k.ret()


def lower(km, layer: dict, ctx: LowerContext) -> dict:
    """Roles part<i> (forward) and grad<i> (backward) for each input i; widths from ctx.in_dims."""
    total, off, out = layer["dim"], 0, {}
    for i, w in enumerate(ctx.in_dims):
        out[f"part{i}"] = f"{layer['name']}__part{i}"
        copy_columns(km, out[f"part{i}"], w, w, 0, total, off)
        out[f"grad{i}"] = f"{layer['name']}__grad{i}"
        copy_columns(km, out[f"grad{i}"], w, total, off, w, 0)
        off += w
    if off != total:
        raise ValueError(f"concat {layer['name']!r}: parts add up to {off}, not {total}")
    return out


# ---------------------------------------------------------------- native runner

def run_forward(ex, layer, ins, step):
    out = np.empty((step.B, layer["dim"]), np.float32)
    for i, v in enumerate(ins):
        ex.run(layer["name"], f"part{i}", step.B, ptr(v), ptr(out), work=v.shape[1])
    return out, {"widths": [v.shape[1] for v in ins]}


def run_backward(ex, layer, cache, g, step):
    g = np.ascontiguousarray(g, dtype=np.float32)
    grads = []
    for i, (src, w) in enumerate(zip(layer["inputs"], cache["widths"])):
        if src not in ex.by_name:                  # a model input: a leaf
            grads.append(None)
            continue
        d = np.empty((step.B, w), np.float32)
        ex.run(layer["name"], f"grad{i}", step.B, ptr(g), ptr(d), work=w)
        grads.append(d)
    return grads


OP = Op(
    name="concat", order=30, summary="dense values side by side",
    args=args, reads="dense", check=no_checks, to_bolt=to_bolt,
    shape=lambda attrs, in_dims: sum(in_dims), weighted_input=False,
    params=lambda layer: {}, param_init={}, plan_entry=lambda attrs, dim, input_sparse: {"dim": dim},
    notes=lambda attrs, dim: "",
    forward=forward, backward=backward, lower=lower, run_forward=run_forward, run_backward=run_backward,
    split_params=no_split_params, split_row_sparse=no_row_sparse, lower_split=no_split_kernels,  # nothing trained
)
