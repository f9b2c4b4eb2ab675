"""Lowering of `layernorm(x, eps)`: y = gamma * (x - mean) / sqrt(var + eps) + beta per example (biased
variance), as runtime/exec/numpy_rules.py layernorm_forward / layernorm_backward.

- `fwd`, split by examples: two passes per row (mean, then the centred sum of squares: no cancellation
  of E[x^2] - E[x]^2); keeps xhat (B x d) and 1/std (B) for the backward.
- `bwd`, split by examples: with dxhat = g * gamma,
      dx = (1/std) / d * (d * dxhat - sum_j dxhat - xhat * sum_j dxhat * xhat)
  (the spec's expression, same operation order; only the two row sums are reassociated).
- `pgrad`, split by *features*: dgamma[j] = sum_b g[b, j] xhat[b, j], dbeta[j] = sum_b g[b, j], each
  summed over the examples in order by the one thread that owns column j, so the result does not depend
  on the thread count (a split by examples would race on every column).
- `upd_gamma`, `upd_beta`: backward.dense_update (lazy Adam / SGD; every entry touched), each with its
  tensor's moment storage; no weight decay (runtime/exec/optim.py decays weight matrices only).
"""
from __future__ import annotations

from boltc.lower import backward as bw
from boltc.lower.builder import F32, KernelModule, symbol
from boltc.passes.plan_memory_moments import moment_dtypes, moment_kind


def layernorm_fwd(km: KernelModule, name: str, dim: int, eps: float) -> None:
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("x", "ptr"), ("gamma", "ptr"), ("beta", "ptr"),
                         ("y", "ptr"), ("xhat", "ptr"), ("inv_std", "ptr")])
    a = k.arg
    D = k.i64(dim)
    with k.loop(a["b0"], a["b1"], "b") as b:
        xb = k.mul(b, D)
        tot = k.var(F32, k.f32(0.0))
        with k.loop(0, dim, "j") as j:
            k.set(tot, k.fadd(k.get(tot), k.ld(a["x"], k.add(xb, j))))
        mu = k.fdiv(k.get(tot), k.f32(float(dim)))
        sq = k.var(F32, k.f32(0.0))
        with k.loop(0, dim, "j2") as j:
            d = k.b.fsub(k.ld(a["x"], k.add(xb, j)), mu)
            k.set(sq, k.fadd(k.get(sq), k.fmul(d, d)))
        var = k.fdiv(k.get(sq), k.f32(float(dim)))
        r = k.fdiv(k.f32(1.0), k.sqrt(k.b.fadd(var, k.f32(eps))))
        k.st(a["inv_std"], b, r)
        with k.loop(0, dim, "j3") as j:
            o = k.add(xb, j)
            xh = k.b.fmul(k.b.fsub(k.ld(a["x"], o), mu), r)
            k.st(a["xhat"], o, xh)
            k.st(a["y"], o, k.b.fadd(k.b.fmul(xh, k.ld(a["gamma"], j)), k.ld(a["beta"], j)))
    k.ret()


def layernorm_bwd(km: KernelModule, name: str, dim: int) -> None:
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("g", "ptr"), ("gamma", "ptr"), ("xhat", "ptr"),
                         ("inv_std", "ptr"), ("dx", "ptr")])
    a = k.arg
    D = k.i64(dim)
    fd = k.f32(float(dim))
    with k.loop(a["b0"], a["b1"], "b") as b:
        xb = k.mul(b, D)
        s1 = k.var(F32, k.f32(0.0))
        s2 = k.var(F32, k.f32(0.0))
        with k.loop(0, dim, "j") as j:
            o = k.add(xb, j)
            dxh = k.b.fmul(k.ld(a["g"], o), k.ld(a["gamma"], j))
            k.set(s1, k.fadd(k.get(s1), dxh))
            k.set(s2, k.fadd(k.get(s2), k.fmul(dxh, k.ld(a["xhat"], o))))
        c = k.fdiv(k.ld(a["inv_std"], b), fd)
        with k.loop(0, dim, "j2") as j:
            o = k.add(xb, j)
            dxh = k.b.fmul(k.ld(a["g"], o), k.ld(a["gamma"], j))
            inner = k.b.fsub(k.b.fsub(k.b.fmul(fd, dxh), k.get(s1)), k.b.fmul(k.ld(a["xhat"], o), k.get(s2)))
            k.st(a["dx"], o, k.b.fmul(c, inner))
    k.ret()


def layernorm_pgrad(km: KernelModule, name: str, dim: int) -> None:
    """Columns [j0, j1): rows in order, vectorized across the columns (plain adds: no reassociation)."""
    k = km.kernel(name, [("j0", "i64"), ("j1", "i64"), ("nrows", "i64"), ("g", "ptr"), ("xhat", "ptr"),
                         ("dgamma", "ptr"), ("dbeta", "ptr")])
    a = k.arg
    with k.loop(a["j0"], a["j1"], "j0") as j:
        k.st(a["dgamma"], j, k.f32(0.0))
        k.st(a["dbeta"], j, k.f32(0.0))
    with k.loop(0, a["nrows"], "b") as b:
        xb = k.mul(b, k.i64(dim))
        with k.loop(a["j0"], a["j1"], "j") as j:
            o = k.add(xb, j)
            g = k.ld(a["g"], o)
            k.st(a["dgamma"], j, k.b.fadd(k.ld(a["dgamma"], j), k.b.fmul(g, k.ld(a["xhat"], o))))
            k.st(a["dbeta"], j, k.b.fadd(k.ld(a["dbeta"], j), g))
    k.ret()


def lower_layernorm(km: KernelModule, layer: dict, ctx: dict) -> dict:
    name, dim = layer["name"], layer["dim"]
    out = {r: symbol(name, r) for r in ("fwd", "bwd", "pgrad", "upd_gamma", "upd_beta")}
    layernorm_fwd(km, out["fwd"], dim, float(layer.get("eps", 1e-5)))
    layernorm_bwd(km, out["bwd"], dim)
    layernorm_pgrad(km, out["pgrad"], dim)
    kinds = moment_dtypes(ctx["plan"])
    for tensor in ("gamma", "beta"):
        spec = bw.UpdateSpec(ctx["optimizer"], moments_b=moment_kind(kinds, name, tensor))
        bw.dense_update(km, out[f"upd_{tensor}"], spec, tensor="b")
    return out
