"""`layernorm(x, eps=1e-5)`: y = gamma * (x - mean) / sqrt(var + eps) + beta per example, over its
features (biased variance). Parameters gamma (ones) and beta (zeros), one per feature. Reads a dense
value (a layer's output or a dense input).

Native kernels:

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

import numpy as np

from boltc.ops.base import LowerContext, Op, SplitContext, no_checks
from boltc.ops.numeric import ParamGrad, ptr
from boltc.ops.runners import ADAM_OPS

DEFAULT_EPS = 1e-5


# ---------------------------------------------------------------- front end, shapes, plan

def args(kit):
    return (kit.Param("input", kit.reference, positional=True),
            kit.Param("eps", kit.real(0.0, low_open=True), DEFAULT_EPS))


def to_bolt(inputs, attrs, kit) -> str:
    kw = [("eps", kit.value(attrs["eps"]))] if attrs.get("eps", DEFAULT_EPS) != DEFAULT_EPS else []
    return kit.call("layernorm", list(inputs), kw)


def params(layer) -> dict:
    return {"gamma": (layer["dim"],), "beta": (layer["dim"],)}


def plan_entry(attrs, dim, input_sparse) -> dict:
    return {"dim": dim, "eps": attrs.get("eps", DEFAULT_EPS)}


def notes(attrs, dim) -> str:
    return f"eps={attrs.get('eps', DEFAULT_EPS):g}"


# ---------------------------------------------------------------- interpreter (the specification)

def forward(layer, params, inputs, active=None, as_pairs=False, ctx=None):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per example over its features (biased var)."""
    x = inputs[0]
    eps = layer.get("eps", 1e-5)
    mu = x.mean(axis=1, keepdims=True)
    xm = x - mu
    inv_std = 1.0 / np.sqrt((xm * xm).mean(axis=1, keepdims=True) + eps)
    xhat = xm * inv_std
    return xhat * params["gamma"] + params["beta"], {"xhat": xhat, "inv_std": inv_std}


def backward(layer, params, cache, grad, wrt_pre=False, ctx=None):
    xhat, inv_std = cache["xhat"], cache["inv_std"]
    d = xhat.shape[1]
    dxhat = grad * params["gamma"]
    dx = inv_std / d * (d * dxhat - dxhat.sum(axis=1, keepdims=True)
                        - xhat * (dxhat * xhat).sum(axis=1, keepdims=True))
    return [dx], {"gamma": ParamGrad(None, None, (grad * xhat).sum(axis=0)),
                  "beta": ParamGrad(None, None, grad.sum(axis=0))}


# ---------------------------------------------------------------- native kernels

def _fwd_kernel(km, lib, name: str, dim: int, eps: float) -> None:
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("x", "ptr"), ("gamma", "ptr"), ("beta", "ptr"),
                         ("y", "ptr"), ("xhat", "ptr"), ("inv_std", "ptr")])
    a = k.arg
    D = k.i64(dim)
    with k.loop(a["b0"], a["b1"], "b") as b:
        xb = k.mul(b, D)
        tot = k.var(lib.F32, k.f32(0.0))
        with k.loop(0, dim, "j") as j:
            k.set(tot, k.fadd(k.get(tot), k.ld(a["x"], k.add(xb, j))))
        mu = k.fdiv(k.get(tot), k.f32(float(dim)))
        sq = k.var(lib.F32, k.f32(0.0))
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


def _bwd_kernel(km, lib, name: str, dim: int) -> None:
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("g", "ptr"), ("gamma", "ptr"), ("xhat", "ptr"),
                         ("inv_std", "ptr"), ("dx", "ptr")])
    a = k.arg
    D = k.i64(dim)
    fd = k.f32(float(dim))
    with k.loop(a["b0"], a["b1"], "b") as b:
        xb = k.mul(b, D)
        s1 = k.var(lib.F32, k.f32(0.0))
        s2 = k.var(lib.F32, k.f32(0.0))
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


def _pgrad_kernel(km, lib, name: str, dim: int) -> None:
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


def lower(km, layer: dict, ctx: LowerContext) -> dict:
    lib, name, dim = ctx.lib, layer["name"], layer["dim"]
    out = {r: lib.symbol(name, r) for r in ("fwd", "bwd", "pgrad", "upd_gamma", "upd_beta")}
    _fwd_kernel(km, lib, out["fwd"], dim, float(layer.get("eps", 1e-5)))
    _bwd_kernel(km, lib, out["bwd"], dim)
    _pgrad_kernel(km, lib, out["pgrad"], dim)
    kinds = lib.moment_dtypes(ctx.plan)
    for tensor in ("gamma", "beta"):
        spec = lib.backward.UpdateSpec(ctx.optimizer, moments_b=lib.moment_kind(kinds, name, tensor))
        lib.backward.dense_update(km, out[f"upd_{tensor}"], spec, tensor="b")
    return out


# ---------------------------------------------------------------- split kernels (data-parallel workers)

def split_params(layer: dict) -> dict:
    return {"gamma": 1, "beta": 1}                 # one entry per feature; every step touches all


def split_row_sparse(layer: dict, tensor: str) -> bool:
    return False


def lower_split(km, layer: dict, ctx: SplitContext) -> dict:
    """No grad kernel (`pgrad` already writes dgamma, dbeta); `apply_gamma`, `apply_beta`: rows_apply
    over every entry with the tensor's moment storage, no decay (as `upd_<tensor>`)."""
    lib, name = ctx.lib, layer["name"]
    kinds = lib.moment_dtypes(ctx.plan)
    out: dict[str, str] = {}
    for tensor in ("gamma", "beta"):
        out[f"apply_{tensor}"] = lib.symbol(layer, f"apply_{tensor}")
        spec = lib.bw.UpdateSpec(ctx.plan.get("train", {}).get("optimizer", "adam"),
                                 moments_b=lib.moment_kind(kinds, name, tensor))
        lib.rows_apply(km, out[f"apply_{tensor}"], 1, spec, "b", False)
    return out


# ---------------------------------------------------------------- native runner

def run_forward(ex, layer, ins, step):
    p = ex.state.params[layer["name"]]
    x, B, d = ins[0], step.B, layer["dim"]
    y, xhat, inv_std = np.empty((B, d), np.float32), np.empty((B, d), np.float32), np.empty(B, np.float32)
    ex.run(layer["name"], "fwd", B, ptr(x), ptr(p["gamma"]), ptr(p["beta"]), ptr(y), ptr(xhat), ptr(inv_std),
         work=4 * d)
    return y, {"xhat": xhat, "inv_std": inv_std}


def run_backward(ex, layer, cache, g, step):
    name, B, d = layer["name"], step.B, layer["dim"]
    p, m, v = ex.param_state(name)
    g = np.ascontiguousarray(g, dtype=np.float32)
    dx = None
    if layer["inputs"][0] in ex.by_name:           # gamma before its update
        dx = np.empty((B, d), np.float32)
        ex.run(name, "bwd", B, ptr(g), ptr(p["gamma"]), ptr(cache["xhat"]), ptr(cache["inv_std"]), ptr(dx),
             work=5 * d)
    dgamma, dbeta = np.empty(d, np.float32), np.empty(d, np.float32)
    ex.run(name, "pgrad", d, B, ptr(g), ptr(cache["xhat"]), ptr(dgamma), ptr(dbeta), work=2 * B)
    if step.grads is not None:                     # gradient mode: handed out, applied later (lower/split.py)
        step.grads[(name, "gamma")], step.grads[(name, "beta")] = (None, dgamma), (None, dbeta)
        return [dx]
    for t, grad in (("gamma", dgamma), ("beta", dbeta)):
        ex.run(name, f"upd_{t}", d, ptr(p[t]), ptr(grad), ptr(m[t]), ptr(v[t]), ptr(step.hyper), work=ADAM_OPS)
    return [dx]


OP = Op(
    name="layernorm", order=40, summary="per-example normalisation with a learnt scale and shift",
    args=args, reads="dense", check=no_checks, to_bolt=to_bolt,
    shape=lambda attrs, in_dims: in_dims[0], weighted_input=False,
    params=params, param_init={"gamma": "ones", "beta": "zeros"}, plan_entry=plan_entry, notes=notes,
    forward=forward, backward=backward, lower=lower, run_forward=run_forward, run_backward=run_backward,
    split_params=split_params, split_row_sparse=split_row_sparse, lower_split=lower_split,
)
