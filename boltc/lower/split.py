"""The split training kernels of data-parallel workers: a batch's gradient, and applying a gradient.

The single-process kernels fuse each row's gradient sum with its optimizer update (backward.py): no
gradient buffer is ever written. A data-parallel worker must hand its gradient to the others before
anyone updates, so `lower_split(plan)` makes, in a module of its own (built only when a run asks for
it, so single-process plans compile exactly what they did):
  grad roles   the fused update kernels with `store_grad=True`: the same per-row sums in the same
               order, written as gW[u, :] (and gb[u]) for the unique rows u instead of applied;
  apply roles  `rows_apply`: lazy Adam / SGD on listed rows from a gradient block, with backward.py's
               `_update` (one rounding per operation, no FMA), per tensor (its moment storage, decay).
So gradient + apply of one batch is the fused update bit for bit (tests/test_native_split.py), and a
combined gradient of several workers is applied with exactly the single-process arithmetic.

What each op trains and which kernels it needs is its own (`split_params`, `split_row_sparse`,
`lower_split` in boltc/ops/<op>.py); this module is the library those rules write with (`rows_apply`,
`apply_kernels`, backward.py as `bw`, `symbol`, `moment_dtypes`, `moment_kind`) and the dispatch.

Rows are addressed relative to the W, m and v pointers the caller passes: a worker that owns rows
[lo, hi) of a tensor (ZeRO-1, runtime/distributed) passes W + lo rows and its moment shard, and row
ids minus lo.
"""
from __future__ import annotations

import sys
from typing import Callable

from boltc.lower import backward as bw
from boltc.lower.builder import I64, PTR, KernelModule, symbol
from boltc.lower.fc import prefetch_row
from boltc.lower.rules import native_support, reads_sparse_input
from boltc.ops import OPS
from boltc.ops.base import SplitContext
from boltc.plan.moments import moment_dtypes, moment_kind  # noqa: F401 (library of the ops' split rules)


def rows_apply(km: KernelModule, name: str, width: int, spec: bw.UpdateSpec, tensor: str, listed: bool) -> None:
    """Sum a row's gradient over parts, update the row, copy it out. For u in [u0, u1): row n =
    uniq[u] (listed) or u; g = (0 + part_0[pos[0, u]]) + part_1[pos[1, u]] + ... over the parts that
    hold the row (pos -1: absent), added in part order with one rounding each (as NumPy's
    `acc[pos] += part` in part order: the same bits); param[n, :] updated with g by backward.py's
    `_update`; the new row written to out[u, :] (out NULL: not written). `vals` holds the parts' data
    addresses (int64). `tensor` "W" uses the spec's weight moments and decay, anything else the bias
    moments, no decay. Listed rows are prefetched PREFETCH_ROWS ahead like the fused updates.
    One part with pos = 0..n-1 is a plain apply: gradient + apply of one batch = the fused update."""
    moments = spec.moments_w if tensor == "W" else spec.moments_b
    decay = spec.weight_decay if tensor == "W" else 0.0
    k = km.kernel(name, [("u0", "i64"), ("u1", "i64"), ("uniq", "ptr"), ("nparts", "i64"), ("nu", "i64"),
                         ("pos", "ptr"), ("vals", "ptr"), ("W", "ptr"), ("mW", "ptr"), ("vW", "ptr"),
                         ("hyper", "ptr"), ("out", "ptr"), ("has_out", "i64"), ("scratch", "ptr")])
    a = k.arg
    D = k.i64(width)
    hp = bw._hyper(k)
    row_spec = bw.UpdateSpec(spec.optimizer, moments, moments, decay)
    with k.loop(a["u0"], a["u1"], "u") as u:
        n = k.ld_i32_as_i64(a["uniq"], u) if listed else u
        if listed and width >= 16:
            bw._prefetch_update_rows(k, row_spec, bw.UPDATE_PREFETCH, k.mul(bw._ahead_neuron(k, u), D), width)
        with k.loop(0, width, "j0") as j:
            k.st(a["scratch"], j, k.f32(0.0))
        with k.loop(0, a["nparts"], "i") as i:
            p = k.ld_i32_as_i64(a["pos"], k.add(k.mul(i, a["nu"]), u))
            with k.if_(k.icmp(">=", p, k.i64(0))):
                part = k.b.inttoptr(k.ld(a["vals"], i, I64), PTR)
                pb = k.mul(p, D)
                with k.loop(0, width, "j") as j:
                    k.st(a["scratch"], j, k.b.fadd(k.ld(a["scratch"], j), k.ld(part, k.add(pb, j))))
        wb, ob = k.mul(n, D), k.mul(u, D)
        with k.loop(0, width, "j2") as j:
            bw._update(k, hp, spec.optimizer, a["W"], a["mW"], a["vW"], k.add(wb, j), k.ld(a["scratch"], j),
                       moments, decay)
        with k.if_(k.icmp("!=", a["has_out"], k.i64(0))):
            with k.loop(0, width, "j3") as j:
                k.st(a["out"], k.add(ob, j), k.ld(a["W"], k.add(wb, j)))
    k.ret()


def rows_dx(km: KernelModule, name: str, in_dim: int, k_active: int) -> None:
    """The input gradient of an LSH-sparse layer alone: for unique neurons u in [u0, u1), for each of
    its positions p (example b = p // K): dxbuf[b, :] += grad[p] * W[uniq[u], :]. The same loops and the
    same operation per element as the `fuse_dx` part of backward.rows_update_out_major, so with the same
    chunks the same bits; no weight gradient is summed. A data-parallel worker that hands out its
    layer's factors (the input rows and the logits' gradient) computes only this; the row owners then
    run the fused update on the whole batch's factors (runtime/distributed/worker.py)."""
    k = km.kernel(name, [("u0", "i64"), ("u1", "i64"), ("uniq", "ptr"), ("seg", "ptr"), ("pos", "ptr"),
                         ("grad", "ptr"), ("W", "ptr"), ("dxbuf", "ptr")])
    a = k.arg
    IN, K = k.i64(in_dim), k.i64(k_active)
    with k.loop(a["u0"], a["u1"], "u") as u:
        if in_dim >= 16:                          # hints only (as the fused kernel's): the same bits
            prefetch_row(k, a["W"], k.mul(bw._ahead_neuron(k, u), IN), in_dim)
        wb = k.mul(k.ld_i32_as_i64(a["uniq"], u), IN)
        s0 = k.ld(a["seg"], u, I64)
        s1 = k.ld(a["seg"], k.add(u, k.i64(1)), I64)
        with k.loop(s0, s1, "s") as s:
            p = k.ld_i32_as_i64(a["pos"], s)
            g = k.ld(a["grad"], p)
            xb = k.mul(k.b.sdiv(p, K), IN)
            with k.loop(0, in_dim, "j") as j:
                o = k.add(xb, j)
                k.st(a["dxbuf"], o, k.fadd(k.ld(a["dxbuf"], o), k.fmul(g, k.ld(a["W"], k.add(wb, j)))))
    k.ret()


def apply_kernels(km: KernelModule, layer: dict, spec: bw.UpdateSpec, widths: dict[str, int],
                  row_sparse: Callable) -> dict[str, str]:
    """One `rows_apply` kernel per trained tensor (role `apply_<tensor>`), with the layer's update spec;
    `row_sparse(layer, tensor)`: whether it applies listed rows only (the op's split_row_sparse)."""
    out: dict[str, str] = {}
    for tensor, width in widths.items():
        out[f"apply_{tensor}"] = symbol(layer, f"apply_{tensor}")
        rows_apply(km, out[f"apply_{tensor}"], width, spec, tensor, row_sparse(layer, tensor))
    return out


def owner_inversion(km: KernelModule, layer: dict) -> dict[str, str]:
    """Role `invert_range` (backward.invert_range): a row owner inverts only its own rows' ids of the
    whole batch's active sets or features."""
    sym = symbol(layer, "invert_range")
    bw.invert_range(km, sym)
    return {"invert_range": sym}


def param_widths(layer: dict) -> dict[str, int]:
    """Each trained tensor of a layer -> its row width (elements per row of the first dimension)."""
    return OPS[layer["op"]].split_params(layer)


def row_sparse(layer: dict, tensor: str) -> bool:
    """Whether a step touches only some rows of the tensor (else the whole tensor is its gradient)."""
    return OPS[layer["op"]].split_row_sparse(layer, tensor)


def lower_split(plan: dict) -> tuple[KernelModule, dict[str, dict[str, str]]]:
    """The grad and apply kernels of every layer: layer -> role -> symbol (roles `grad`, `grad_active`,
    `grad_active_dx`, `apply_<tensor>`), each op's from its `lower_split` rule (boltc/ops/<op>.py), which
    reads this module as its library."""
    reason = native_support(plan)
    if reason is not None:
        raise ValueError(reason)
    km = KernelModule(plan.get("model", "boltc") + ".split")
    inputs = {i["name"]: i for i in plan["inputs"]}
    lib = sys.modules[__name__]
    syms: dict[str, dict[str, str]] = {}
    for layer in plan["layers"]:
        src = layer["inputs"][0]
        ctx = SplitContext(plan, input_sparse=reads_sparse_input(layer, inputs), input_is_layer=src not in inputs,
                           lib=lib)
        syms[layer["name"]] = OPS[layer["op"]].lower_split(km, layer, ctx)
    return km, syms
