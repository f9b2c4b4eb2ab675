"""Lowering of `embedding(x, dim, reduce=sum|mean)`: an embedding bag over a sparse input.

Its forward is the sparse-input fc kernel (fc.sparse_fc_fwd) with a linear activation and no bias:
out_b = sum_f x_bf W[f, :], W in-major (in_dim, dim). `mean` then scales each row by 1/nnz(x_b) (0 for
an empty row), the spec's order of operations (sum first, then one multiply by the rounded reciprocal).
Backward: the same scale on the incoming gradient, then the first layer's lazy row update
(backward.rows_update_in_major) over the batch's unique features. The input is a leaf (no input grad).
"""
from __future__ import annotations

from boltc.lower import backward as bw
from boltc.lower import fc as fwd
from boltc.lower.builder import F32, I64, KernelModule, symbol


def mean_scale(km: KernelModule, name: str, dim: int) -> None:
    """buf[b, :] *= (nnz_b > 0 ? 1/nnz_b : 0) for rows [b0, b1), nnz_b = indptr[b+1] - indptr[b];
    in place (one buffer: the forward's output, or a copy of the gradient)."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("indptr", "ptr"), ("buf", "ptr")])
    a = k.arg
    with k.loop(a["b0"], a["b1"], "b") as b:
        n = k.b.sub(k.ld(a["indptr"], k.add(b, k.i64(1)), I64), k.ld(a["indptr"], b, I64))
        inv = k.fdiv(k.f32(1.0), k.b.sitofp(n, F32))
        s = k.select(k.icmp(">", n, k.i64(0)), inv, k.f32(0.0))
        ob = k.mul(b, k.i64(dim))
        with k.loop(0, dim, "j") as j:
            k.st(a["buf"], k.add(ob, j), k.b.fmul(k.ld(a["buf"], k.add(ob, j)), s))
    k.ret()


def lower_embedding(km: KernelModule, layer: dict, ctx: dict) -> dict:
    name, dim = layer["name"], layer["dim"]
    out = {r: symbol(name, r) for r in ("fwd", "upd", "invert")}
    fwd.sparse_fc_fwd(km, out["fwd"], dim, "linear", False)
    bw.rows_update_in_major(km, out["upd"], dim, ctx["update"])
    bw.invert(km, out["invert"], layer["in_dim"])
    if layer.get("reduce", "sum") == "mean":
        out["scale"] = symbol(name, "scale")
        mean_scale(km, out["scale"], dim)
    return out
