"""`embedding(x, dim, reduce=sum|mean)`: an embedding bag over a sparse input: out_b = sum_f x_bf W[f]
(`mean`: divided by nnz(x_b), 0 for an empty row). W is in-major (in_dim, dim), drawn N(0, 0.01^2).

Native kernels:
Its forward is the sparse-input fc kernel (fc.sparse_fc_fwd) with a linear activation and no bias:
out_b = sum_f x_bf W[f, :], W in-major (in_dim, dim). `mean` then scales each row by 1/nnz(x_b) (0 for
an empty row), the spec's order of operations (sum first, then one multiply by the rounded reciprocal).
Backward: the same scale on the incoming gradient, then the first layer's lazy row update
(backward.rows_update_in_major) over the batch's unique features. The input is a leaf (no input grad).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.ops.base import LowerContext, Op, SplitContext, no_checks
from boltc.ops.numeric import ParamGrad, compress_columns, matmul, ptr
from boltc.ops.runners import sparse_forward, update_sparse_input


# ---------------------------------------------------------------- front end, shapes, plan

def args(kit):
    return (kit.Param("input", kit.reference, positional=True), kit.Param("dim", kit.width, positional=True),
            kit.Param("reduce", kit.word("sum", "mean"), "sum"))


def to_bolt(inputs, attrs, kit) -> str:
    kw = [("reduce", attrs["reduce"])] if attrs.get("reduce", "sum") != "sum" else []
    return kit.call("embedding", [inputs[0], str(attrs["dim"])], kw)


def params(layer) -> dict:
    return {"W": (layer["in_dim"], layer["dim"])}


def plan_entry(attrs, dim, input_sparse) -> dict:
    return {"in_dim": attrs["in_dim"], "dim": dim, "reduce": attrs.get("reduce", "sum"),
            "input_sparse": input_sparse, "layout": "in_major"}


# ---------------------------------------------------------------- interpreter (the specification)

def forward(layer, params, inputs, active=None, as_pairs=False, ctx=None):
    """out_b = sum_f x_bf W[f] (`reduce` sum) or that sum / nnz(x_b) (`mean`; 0 for an empty row).
    The feature values weight the rows (an embedding bag with per-sample weights)."""
    x = inputs[0]
    if not sp.issparse(x):
        x = sp.csr_matrix(x)
    scale = None
    if layer.get("reduce", "sum") == "mean":
        counts = np.diff(x.indptr).astype(params["W"].dtype)
        scale = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0).astype(params["W"].dtype)[:, None]
    out = matmul(x, params["W"])
    if scale is not None:
        out = out * scale
    return out, {"x": x, "scale": scale}


def backward(layer, params, cache, grad, wrt_pre=False, ctx=None):
    g = grad if cache["scale"] is None else grad * cache["scale"]
    feats, xc = compress_columns(cache["x"])
    return [None], {"W": ParamGrad(feats, None, np.asarray(xc.T @ g))}


# ---------------------------------------------------------------- native kernels

def _mean_scale_kernel(km, lib, name: str, dim: int) -> None:
    """buf[b, :] *= (nnz_b > 0 ? 1/nnz_b : 0) for rows [b0, b1), nnz_b = indptr[b+1] - indptr[b];
    in place (one buffer: the forward's output, or a copy of the gradient)."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("indptr", "ptr"), ("buf", "ptr")])
    a = k.arg
    with k.loop(a["b0"], a["b1"], "b") as b:
        n = k.b.sub(k.ld(a["indptr"], k.add(b, k.i64(1)), lib.I64), k.ld(a["indptr"], b, lib.I64))
        inv = k.fdiv(k.f32(1.0), k.b.sitofp(n, lib.F32))
        s = k.select(k.icmp(">", n, k.i64(0)), inv, k.f32(0.0))
        ob = k.mul(b, k.i64(dim))
        with k.loop(0, dim, "j") as j:
            k.st(a["buf"], k.add(ob, j), k.b.fmul(k.ld(a["buf"], k.add(ob, j)), s))
    k.ret()


def lower(km, layer: dict, ctx: LowerContext) -> dict:
    lib, name, dim = ctx.lib, layer["name"], layer["dim"]
    out = {r: lib.symbol(name, r) for r in ("fwd", "upd", "invert")}
    lib.dense.sparse_fc_fwd(km, out["fwd"], dim, "linear", False)
    lib.backward.rows_update_in_major(km, out["upd"], dim, ctx.update)
    lib.backward.invert(km, out["invert"], layer["in_dim"])
    if layer.get("reduce", "sum") == "mean":
        out["scale"] = lib.symbol(name, "scale")
        _mean_scale_kernel(km, lib, out["scale"], dim)
    return out


# ---------------------------------------------------------------- split kernels (data-parallel workers)

def split_params(layer: dict) -> dict:
    return {"W": layer["dim"]}                     # in-major: one row of width dim per input feature


def split_row_sparse(layer: dict, tensor: str) -> bool:
    return tensor == "W"                           # the batch's features


def lower_split(km, layer: dict, ctx: SplitContext) -> dict:
    """`grad`: the in-major row update with store_grad; `apply_W`: rows_apply on listed rows."""
    lib = ctx.lib
    spec = lib.bw.update_spec(ctx.plan, layer)
    out = {"grad": lib.symbol(layer, "grad")}
    lib.bw.rows_update_in_major(km, out["grad"], layer["dim"], spec, store_grad=True)
    out.update(lib.owner_inversion(km, layer))
    out.update(lib.apply_kernels(km, layer, spec, split_params(layer), split_row_sparse))
    return out


# ---------------------------------------------------------------- native runner

def run_forward(ex, layer, ins, step):
    x = ins[0]
    out = sparse_forward(ex, layer, x, None)
    if ex.k.has(layer["name"], "scale"):
        ex.run(layer["name"], "scale", step.B, ptr(x.indptr), ptr(out), work=layer["dim"])
    return out, {"x": x}


def run_backward(ex, layer, cache, g, step):
    x = cache["x"]
    if ex.k.has(layer["name"], "scale"):
        g = np.array(g, dtype=np.float32, order="C")           # scaled in place: a copy of our own
        ex.run(layer["name"], "scale", step.B, ptr(x.indptr), ptr(g), work=layer["dim"])
    update_sparse_input(ex, layer, x, np.ascontiguousarray(g, dtype=np.float32), step)
    return [None]


OP = Op(
    name="embedding", order=20, summary="an embedding bag over a sparse input",
    args=args, reads="sparse", check=no_checks, to_bolt=to_bolt,
    shape=lambda attrs, in_dims: attrs["dim"], weighted_input=True,
    params=params, param_init={"W": "normal"}, plan_entry=plan_entry,
    notes=lambda attrs, dim: f"reduce={attrs.get('reduce', 'sum')}",
    forward=forward, backward=backward, lower=lower, run_forward=run_forward, run_backward=run_backward,
    split_params=split_params, split_row_sparse=split_row_sparse, lower_split=lower_split,
)
