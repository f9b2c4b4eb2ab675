"""Output kernels: the loss fused with the output activation, and what inference needs (top-k, and the
row log-sum-exp that turns softmax logits into probabilities).

`OUTPUT_RULES[loss]` adds the kernels of an output layer over K columns (its active set, or every
neuron) and returns role -> symbol. Roles "ce"/"bce" are the loss over the active set, "*_all" over
every neuron. The softmax kernel (`fc.softmax_ce`) lives with the forward kernels; the sigmoid one is
here. Both overwrite the logits with the activation and write the per-example loss and the logits'
gradient scaled by scale[b] (importance weight / batch size), as runtime/exec/numpy_rules.py LOSS_RULES.
"""
from __future__ import annotations

from boltc.lower import fc as fwd, select as sel
from boltc.lower.builder import F32, Kernel, KernelModule, symbol


def log1p(k: Kernel, u):
    """log(1 + u) for u in [0, 1], accurate where 1 + u rounds (Goldberg's trick): u when 1 + u == 1,
    else log(1 + u) * u / ((1 + u) - 1). Plain log(1 + u) would lose every term below 6e-8 (|z| > 17)."""
    w = k.b.fadd(k.f32(1.0), u)
    d = k.b.fsub(w, k.f32(1.0))
    exact = k.fcmp("==", d, k.f32(0.0))
    safe = k.select(exact, k.f32(1.0), d)                  # no 0/0 on the branch not taken
    return k.select(exact, u, k.b.fdiv(k.b.fmul(k.log(w), u), safe))


def sigmoid_bce(km: KernelModule, name: str, k_active: int) -> None:
    """Sigmoid + binary cross-entropy per column, rows [b0, b1) (numpy_rules.sigmoid_binary_cross_entropy):
    y = 1 where ids[b, k] is one of the row's labels, else 0;
    loss_b = sum_k max(z, 0) - z y + log1p(exp(-|z|));  grad[b, k] = scale_b (sigmoid(z) - y).
    Both the loss and the sigmoid use e = exp(-|z|) <= 1, so neither overflows; logits -> sigmoid(z)."""
    k = km.kernel(name, fwd.LOSS_PARAMS)
    a = k.arg
    K = k.i64(k_active)
    N = k.opaque_i64(k_active, "k")          # loop bound: see Kernel.opaque_i64
    with k.loop(a["b0"], a["b1"], "b") as b:
        ob = k.mul(b, K)
        l0, l1 = fwd.label_range(k, a, b)
        fwd.mark_labels(k, a, l0, l1, True)
        sc = k.ld(a["scale"], b)
        loss = k.var(F32, k.f32(0.0))
        with k.loop(0, N, "k") as kk:
            i = k.add(ob, kk)
            z = k.ld(a["logits"], i)
            y = fwd.target_weight(k, a, i, l0, l1, k.f32(1.0))
            e = k.exp(k.b.fneg(k.call("llvm.fabs.f32", F32, z)))
            pos = k.fcmp(">=", z, k.f32(0.0))
            s = k.select(pos, k.fdiv(k.f32(1.0), k.b.fadd(k.f32(1.0), e)),
                         k.fdiv(e, k.b.fadd(k.f32(1.0), e)))
            term = k.b.fadd(k.b.fsub(k.fmax(z, k.f32(0.0)), k.b.fmul(z, y)), log1p(k, e))
            k.set(loss, k.b.fadd(k.get(loss), term))
            k.st(a["logits"], i, s)
            k.st(a["grad"], i, k.b.fmul(sc, k.b.fsub(s, y)))
        k.st(a["loss"], b, k.get(loss))
        fwd.mark_labels(k, a, l0, l1, False)
    k.ret()



def _widths(layer: dict, sparse: bool) -> list[tuple[str, int]]:
    """(role suffix, columns): the active set ("") when the layer is sparse, and every neuron ("_all",
    dense inference and dense training)."""
    return ([("", layer["active"])] if sparse else []) + [("_all", layer["dim"])]


def lower_softmax_ce(km: KernelModule, layer: dict, sparse: bool, smoothing: float = 0.0) -> dict:
    out = {}
    for s, width in _widths(layer, sparse):
        out["ce" + s] = symbol(layer, "ce" + s)
        fwd.softmax_ce(km, out["ce" + s], width, smoothing)
        out["topk" + s] = symbol(layer, "topk" + s)
        sel.topk(km, out["topk" + s], width, not s)
        out["lse" + s] = symbol(layer, "lse" + s)
        fwd.row_logsumexp(km, out["lse" + s], width)
    return out


def lower_sigmoid_bce(km: KernelModule, layer: dict, sparse: bool, smoothing: float = 0.0) -> dict:
    out = {}
    for s, width in _widths(layer, sparse):
        out["bce" + s] = symbol(layer, "bce" + s)
        sigmoid_bce(km, out["bce" + s], width)
        out["topk" + s] = symbol(layer, "topk" + s)
        sel.topk(km, out["topk" + s], width, not s)
    return out


# loss -> (the output activation it is fused with, the rule adding the output's kernels)
OUTPUT_RULES = {
    "cross_entropy": ("softmax", lower_softmax_ce),
    "binary_cross_entropy": ("sigmoid", lower_sigmoid_bce),
}
LOSS_ROLE = {"cross_entropy": "ce", "binary_cross_entropy": "bce"}
