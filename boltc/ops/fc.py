"""`fc(x, dim, activation, sparsity=auto, hash=auto, bias=true)`: a fully connected layer, z = x W (+ b),
value f(z). With sparsity < 1 each example computes only its active neurons, chosen by an LSH index of
its input (`hash`: dwta(...) or srp(...); the SLIDE/BOLT method); a hidden sparse layer's value is 0
outside the active set, the output's is (ids, values). W is `in_major` (in_dim, dim) when the input is a
sparse model input (a feature's row contiguous) and `out_major` (dim, in_dim) otherwise (a neuron's row
contiguous: what LSH selection gathers); drawn N(0, 0.01^2); b zeros.

The native kernels are built from the kernel library's fc emitters (boltc/lower/fc.py forward,
boltc/lower/backward.py updates and input gradients, boltc/lower/select.py hashing and lookup,
boltc/lower/loss.py the output's fused loss), which embedding shares.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltValidationError
from boltc.ops.base import LowerContext, Op, SplitContext
from boltc.ops.numeric import (ParamGrad, act_grad, activate, activation_backward, compress_columns, loss_options,
                               matmul, ptr, scatter_dense)
from boltc.ops.runners import (ADAM_OPS, apply_sparse_input, grad_buffer, merge_sparse_input, owned_inversion,
                               shifted, sparse_forward, update_sparse_input)

ACTIVATIONS = ("relu", "tanh", "sigmoid", "softmax", "linear")


# ---------------------------------------------------------------- front end, shapes, plan

def args(kit):
    return (kit.Param("input", kit.reference, positional=True), kit.Param("dim", kit.width, positional=True),
            kit.Param("activation", kit.word(*ACTIVATIONS, what="activation"), "linear", positional=True),
            kit.Param("sparsity", kit.sparsity, "auto"), kit.Param("hash", kit.hash, "auto"),
            kit.Param("bias", kit.boolean, True))


def check(attrs) -> list:
    """Settings that are each valid but not together: [(message, word of the call to point at)]."""
    sparsity, hash_ = attrs.get("sparsity"), attrs.get("hash")
    out = []
    if hash_ == "none" and isinstance(sparsity, float) and sparsity < 1.0:
        out.append((f"a sparse layer (sparsity={sparsity:g}) needs a hash to choose its active "
                    "neurons: use hash=auto, dwta(...) or srp(...)", "hash"))
    if isinstance(hash_, dict) and sparsity == 1.0:
        out.append(("hash settings have no effect on a dense layer (sparsity=1.0)", "hash"))
    return out


def to_bolt(inputs, attrs, kit) -> str:
    kw = []
    if attrs.get("sparsity", "auto") != "auto":
        kw.append(("sparsity", kit.value(attrs["sparsity"])))
    if attrs.get("hash", "auto") != "auto":
        kw.append(("hash", kit.hash(attrs["hash"])))
    if not attrs.get("bias", True):
        kw.append(("bias", "false"))
    return kit.call("fc", [inputs[0], str(attrs["dim"]), attrs.get("activation", "linear")], kw)


def params(layer) -> dict:
    dim, in_dim = layer["dim"], layer["in_dim"]
    shapes = {"W": (in_dim, dim) if layer.get("layout") == "in_major" else (dim, in_dim)}
    if layer.get("bias", True):
        shapes["b"] = (dim,)
    return shapes


def plan_entry(attrs, dim, input_sparse) -> dict:
    # a sparse input's row per feature is contiguous (in_major); every other fc reads a neuron's row
    sparsity = float(attrs["sparsity"])
    return {"in_dim": attrs["in_dim"], "dim": dim, "activation": attrs["activation"],
            "bias": attrs.get("bias", True), "input_sparse": input_sparse,
            "layout": "in_major" if input_sparse else "out_major", "sparsity": sparsity,
            "active": max(1, int(sparsity * dim)),
            "hash": dict(attrs["hash"]) if isinstance(attrs.get("hash"), dict) else None}


def notes(attrs, dim) -> str:
    s = attrs["sparsity"]
    text = attrs["activation"] + (", dense" if s >= 1.0 else f", sparsity {s:g} ({max(1, int(s * dim))} active)")
    h = attrs.get("hash")
    if isinstance(h, dict):
        text += (f", {h['family']} K={h['hashes']} range={h['range_bits']} bits L={h['tables']} "
                 f"reservoir={h['reservoir']}")
    return text


# ---------------------------------------------------------------- interpreter (the specification)

UNION_RATIO = 16      # gather path when the batch's union of active ids exceeds 16x the per-row count
_GATHER_CHUNK = 1 << 22


def _use_gather(layer, x, union_size: int, k: int) -> bool:
    """Wide sparse layers (union of a batch's active sets >> per-example active count, e.g. 100k labels
    at 500 active): per-example row gathers cost B*k*in instead of the union GEMM's B*|U|*in. Only for a
    dense input and out_major W (a neuron's row contiguous), which is how wide output layers are laid out."""
    return (union_size > UNION_RATIO * k and not sp.issparse(x)
            and layer.get("layout", "out_major") != "in_major")


def forward(layer, params, inputs, active=None, as_pairs=False, ctx=None):
    """z = x @ W (+ b) over the active neurons of each example (all when `active` is None); value = f(z).

    Layout: `in_major` W is (in_dim, dim), `out_major` W is (dim, in_dim) (CONTRACTS.md section 4).
    With an active set, the batch's union U of active ids is gathered once (W[U]) and z is read back per
    example from x @ W[U]^T: one GEMM instead of B small gathers; when U is much wider than one
    example's set (`_use_gather`), each example's rows are gathered instead, in chunks of examples."""
    x = inputs[0]
    W, b = params["W"], params.get("b")
    in_major = layer.get("layout", "out_major") == "in_major"
    if active is None:
        z = matmul(x, W if in_major else W.T)
        if b is not None:
            z = z + b
        act = activate(layer["activation"], z)
        return act, {"x": x, "z": z, "act": act, "active": None}
    active = np.asarray(active)
    union, inv = np.unique(active, return_inverse=True)
    inv = inv.reshape(active.shape)
    cache = {"x": x, "active": active, "union": union, "inv": inv, "pairs": as_pairs}
    if _use_gather(layer, x, len(union), active.shape[1]):
        B, k = active.shape
        z = np.empty((B, k), dtype=np.result_type(x.dtype, W.dtype))
        step = max(1, _GATHER_CHUNK // max(1, k * W.shape[1]))
        for s in range(0, B, step):
            z[s:s + step] = np.einsum("bki,bi->bk", W[active[s:s + step]], x[s:s + step])
        cache["gather"] = True
    else:
        wu = W[:, union] if in_major else W[union].T          # (in, |U|)
        z = np.take_along_axis(matmul(x, wu), inv, axis=1)
        cache["wu"], cache["gather"] = wu, False
    if b is not None:
        z = z + b[active]
    act = activate(layer["activation"], z)
    cache.update(z=z, act=act)
    value = (active, act) if as_pairs else scatter_dense(active, act, layer["dim"])
    return value, cache


def backward(layer, params, cache, grad, wrt_pre=False, ctx=None):
    x, active = cache["x"], cache["active"]
    in_major = layer.get("layout", "out_major") == "in_major"
    has_bias = params.get("b") is not None
    if active is not None and not wrt_pre and not cache["pairs"]:
        grad = np.take_along_axis(grad, active.astype(np.int64), axis=1)     # dense value -> active positions
    dz = grad if wrt_pre else activation_backward(layer["activation"], cache["z"], cache["act"], grad)
    sparse_x = sp.issparse(x)
    grads = {}
    if active is not None and cache["gather"]:
        # sparse (B x |U|) and (B x dim) matrices of dz: every product below costs B*k*in
        B, k = active.shape
        rows = np.repeat(np.arange(B), k)
        Gu = sp.csr_matrix((dz.ravel(), (cache["inv"].ravel(), rows)), shape=(len(cache["union"]), B))
        grads["W"] = ParamGrad(cache["union"], None, np.asarray(Gu @ x))
        if has_bias:
            grads["b"] = ParamGrad(cache["union"], None,
                                   np.bincount(cache["inv"].ravel(), weights=dz.ravel(),
                                               minlength=len(cache["union"])).astype(dz.dtype))
        S = sp.csr_matrix((dz.ravel(), (rows, active.ravel())), shape=(B, params["W"].shape[0]))
        return [np.asarray(S @ params["W"])], grads
    if active is None:
        G, cols, wfull = dz, None, params["W"]
    else:
        # scatter dz onto the union columns: G[b, pos(U, id)] = dz[b, j]
        G = np.zeros((dz.shape[0], len(cache["union"])), dtype=dz.dtype)
        np.put_along_axis(G, cache["inv"], dz, axis=1)
        cols, wfull = cache["union"], None
    # weight gradient block
    if sparse_x:
        feats, xc = compress_columns(x)
        block = np.asarray(xc.T @ G)                                     # (|F|, |cols|)
        if in_major:
            grads["W"] = ParamGrad(feats, cols, block)
        else:
            grads["W"] = ParamGrad(cols, feats, np.ascontiguousarray(block.T))
    elif in_major:
        grads["W"] = ParamGrad(None, cols, x.T @ G)                      # (in, |cols|)
    else:
        grads["W"] = ParamGrad(cols, None, G.T @ x)                      # (|cols|, in), contiguous
    if has_bias:
        grads["b"] = ParamGrad(cols, None, G.sum(axis=0))
    # input gradient (none for a sparse input: a leaf)
    if sparse_x:
        dx = None
    elif active is None:
        dx = G @ (wfull.T if in_major else wfull)
    else:
        dx = G @ cache["wu"].T
    return [dx], grads


# ---------------------------------------------------------------- native kernels

def lower(km, layer: dict, ctx: LowerContext) -> dict:
    lib = ctx.lib
    opt = ctx.update                     # backward.UpdateSpec: optimizer, moment storage, decay
    name, dim, in_dim = layer["name"], layer["dim"], layer["in_dim"]
    act, bias = layer["activation"], bool(layer.get("bias", True))
    is_out = ctx.is_output
    f_act = "linear" if is_out else act       # the output's activation is fused with the loss
    out: dict[str, str] = {}
    if ctx.input_sparse:
        out["fwd"] = lib.symbol(layer, "fwd")
        lib.dense.sparse_fc_fwd(km, out["fwd"], dim, f_act, bias)
        out["upd"] = lib.symbol(layer, "upd")
        lib.backward.rows_update_in_major(km, out["upd"], dim, opt)
        out["invert"] = lib.symbol(layer, "invert")
        lib.backward.invert(km, out["invert"], in_dim)
        if bias:
            out["bias_upd"] = lib.symbol(layer, "bias_upd")
            lib.backward.dense_update(km, out["bias_upd"], opt)
    else:
        out["fwd"] = lib.symbol(layer, "fwd")
        lib.dense.dense_fc_fwd(km, out["fwd"], in_dim, dim, f_act, bias, gather=False)
        out["upd"] = lib.symbol(layer, "upd")
        lib.backward.rows_update_out_major(km, out["upd"], in_dim, dim, False, bias, opt)
        # the BLAS path of a dense layer (dense_blas below): the gradient comes from sgemm, these apply
        # the optimizer to every entry of W and b
        out["w_upd"] = lib.symbol(layer, "w_upd")
        lib.backward.dense_update(km, out["w_upd"], opt, tensor="W")
        if bias:
            out["bias_upd"] = lib.symbol(layer, "bias_upd")
            lib.backward.dense_update(km, out["bias_upd"], opt)
        if ctx.needs_dx:
            out["dx"] = lib.symbol(layer, "dx")
            lib.backward.input_grad(km, out["dx"], in_dim, dim, False, ctx.in_activation)
        k = layer["active"]
        if k < dim:
            # a sparse hidden layer applies its activation in the gather kernel; the output's stays
            # linear (fused with the loss) and also has the neuron-order forward for large batches
            out["fwd_active"] = lib.symbol(layer, "fwd_active")
            lib.dense.dense_fc_fwd(km, out["fwd_active"], in_dim, k, f_act, bias, gather=True)
            out["upd_active"] = lib.symbol(layer, "upd_active")
            lib.backward.rows_update_out_major(km, out["upd_active"], in_dim, k, True, bias, opt)
            if is_out:
                out["fwd_neuron"] = lib.symbol(layer, "fwd_neuron")
                lib.backward.fwd_by_neuron(km, out["fwd_neuron"], in_dim, k, bias)
            if ctx.needs_dx:
                out["upd_active_dx"] = lib.symbol(layer, "upd_active_dx")
                lib.backward.rows_update_blocked(km, out["upd_active_dx"], in_dim, k, bias, opt)
                out["dx_active"] = lib.symbol(layer, "dx_active")
                lib.backward.input_grad(km, out["dx_active"], in_dim, k, True, ctx.in_activation)
            out["invert"] = lib.symbol(layer, "invert")
            lib.backward.invert(km, out["invert"], dim)
    if is_out:
        out.update(lib.OUTPUT_RULES[ctx.loss][1](km, layer, layer["active"] < dim,
                                                 **loss_options(ctx.plan)))
    if layer.get("hash"):
        out.update(lib.select.lower_hash(km, layer, layer["hash"]))
    return out


# ---------------------------------------------------------------- split kernels (data-parallel workers)

def split_params(layer: dict) -> dict:
    """W's rows are input features (in_major: width dim) or neurons (width in_dim); b one per neuron."""
    out = {"W": layer["dim"] if layer.get("layout") == "in_major" else layer["in_dim"]}
    if layer.get("bias", True):
        out["b"] = 1
    return out


def split_row_sparse(layer: dict, tensor: str) -> bool:
    """in_major: W's touched rows are the batch's features (b is whole); LSH-sparse: the active neurons."""
    if layer.get("layout") == "in_major":
        return tensor == "W"
    return layer.get("active", layer["dim"]) < layer["dim"]


def lower_split(km, layer: dict, ctx: SplitContext) -> dict:
    """`grad` (and `grad_active`, `grad_active_dx` for an LSH-sparse layer): the fused updates with
    store_grad; `apply_W`, `apply_b`: rows_apply."""
    lib = ctx.lib
    spec = lib.bw.update_spec(ctx.plan, layer)
    out: dict[str, str] = {"grad": lib.symbol(layer, "grad")}
    if ctx.input_sparse:
        lib.bw.rows_update_in_major(km, out["grad"], layer["dim"], spec, store_grad=True)
        out.update(lib.owner_inversion(km, layer))
    else:
        bias, dim, in_dim = bool(layer.get("bias", True)), layer["dim"], layer["in_dim"]
        lib.bw.rows_update_out_major(km, out["grad"], in_dim, dim, False, bias, spec, store_grad=True)
        if layer.get("active", dim) < dim:
            out.update(lib.owner_inversion(km, layer))
            out["grad_active"] = lib.symbol(layer, "grad_active")
            lib.bw.rows_update_out_major(km, out["grad_active"], in_dim, layer["active"], True, bias, spec,
                                         store_grad=True)
            if ctx.input_is_layer:
                out["grad_active_dx"] = lib.symbol(layer, "grad_active_dx")
                lib.bw.rows_update_out_major(km, out["grad_active_dx"], in_dim, layer["active"], True, bias, spec,
                                             fuse_dx=True, store_grad=True)
                # factor mode (a worker hands out its input rows and logits' gradient): the input
                # gradient alone; the row owners run the fused `upd_active` on the whole batch's factors
                out["dx_active"] = lib.symbol(layer, "dx_active")
                lib.rows_dx(km, out["dx_active"], in_dim, layer["active"])
    out.update(lib.apply_kernels(km, layer, spec, split_params(layer), split_row_sparse))
    return out


# ---------------------------------------------------------------- native runner

# Fixed chunks of the wide layer's unique neurons for the fused update + input gradient: each chunk has
# its own input-gradient buffer (B x in_dim, small), summed in chunk order afterwards. The chunking does
# not depend on the thread count, so neither does the result.
N_CHUNKS = 8
# An LSH-sparse layer's input gradient is fused into its update (W's rows read once) when W is larger than
# this; a smaller W stays in cache, and the input gradient runs first, split by examples (`dx_active`).
FUSED_DX_MIN_WEIGHT_BYTES = 8 << 20
# Below this batch size the active-set forward gathers per example (no inversion: batch-1 latency);
# above it, it runs in neuron order (each weight row read once, in address order).
NEURON_MAJOR_MIN_BATCH = 32
# Dense scoring of an output layer at least this big (dim * in_dim) for a batch >= 32 goes to BLAS.
DENSE_GEMM_MIN_WEIGHTS = 1 << 22
# A dense fc (every neuron, dense input) runs its forward as sgemm calls into numpy's BLAS
# (runtime/exec/blas.py, reached as `ex.blas`) when it multiplies at least this many times
# (B * dim * in_dim), and its backward too (dW = g^T x and dx = g W by sgemm, then the optimizer kernel
# over every entry) from a batch of DENSE_BLAS_MIN_BATCH_BACKWARD. Measured with benchmarks/dense_blas.py
# (docs/native.md "Dense layers"): the forward gained 1.1-2.4x on every shape tried; the backward writes
# and rereads a gradient as large as W where the generated kernel fuses gradient and update, which lost
# below batch 128 (0.4x at batch 1, 0.8x at 16-64) and won from it (1.07x at 128, 1.4-1.9x at 256).
# A layer of at least DENSE_BLAS_BIG_WEIGHTS weights takes the BLAS backward from batch
# DENSE_BLAS_BIG_MIN_BATCH: delicious.bolt's 2,048 -> 983 output at batch 64 (one thread, CPU time, best
# of 4 alternating rounds, 2026-12-07): a training step 23.45 ms with the generated backward, 16.09 ms
# with BLAS's (the fused kernel's gain, W read once, is small against a 129M multiply-add gradient).
DENSE_BLAS_MIN_MACS = 1 << 16
DENSE_BLAS_MIN_BATCH_BACKWARD = 128
DENSE_BLAS_BIG_WEIGHTS = 1 << 20
DENSE_BLAS_BIG_MIN_BATCH = 32


def run_forward(ex, layer, ins, step):
    name, dim = layer["name"], layer["dim"]
    p = ex.state.params[name]
    W, b = p["W"], p.get("b")
    x, B = ins[0], step.B
    cache = {"x": x, "ids": None, "inv": None}
    if layer.get("layout") == "in_major":
        out = sparse_forward(ex, layer, x, b)
    else:
        ids = cache["ids"] = _active_ids(ex, layer, x, step)
        if name == ex.output:
            out = _output_logits(ex, layer, x, ids, W, b, step, cache)
        elif ids is None and dense_blas(ex, layer, B):
            out = ex.blas.matmul_nt(ex.pool, x, W, b)
            if layer["activation"] == "relu":
                np.maximum(out, 0, out=out)
            elif layer["activation"] != "linear":
                out = np.ascontiguousarray(activate(layer["activation"], out), dtype=np.float32)
        elif ids is None:
            out = np.empty((B, dim), np.float32)
            ex.run(name, "fwd", B, ptr(x), None, ptr(W), ptr(b), ptr(out), work=dim * layer["in_dim"])
        else:
            # a sparse hidden layer: act over the active set, a dense value that is 0 elsewhere (spec)
            act = np.empty(ids.shape, np.float32)
            ex.run(name, "fwd_active", B, ptr(x), ptr(ids), ptr(W), ptr(b), ptr(act),
                 work=ids.shape[1] * layer["in_dim"])
            out = np.zeros((B, dim), np.float32)
            np.put_along_axis(out, ids.astype(np.int64), act, axis=1)
    cache["out"] = out
    return out, cache


def _active_ids(ex, layer, x, step) -> np.ndarray | None:
    """The layer's active sets: given (`active=`), chosen by its LSH index (not in dense mode; the
    output's training sets include the labels), or None (every neuron), as the interpreter decides."""
    name = layer["name"]
    ids = None
    if step.active and name in step.active:
        ids = np.ascontiguousarray(step.active[name], dtype=np.int32)
    elif layer.get("hash") and step.mode != "dense" and name in ex.state.lsh:
        is_out = name == ex.output
        labels = step.batch.labels if (step.mode == "train" and is_out) else None
        seed = step.seed if is_out else step.layer_seed(name)
        ids = ex.select(layer, x, labels, seed,
                        is_out and step.insert_missed and getattr(ex.state.lsh[name], "frozen", False))
    if ids is not None and layer["active"] == layer["dim"]:
        raise BoltValidationError(f"layer {name!r} is dense: the native backend takes no active sets for it")
    if ids is not None and (ids.ndim != 2 or ids.shape[1] != layer["active"]):
        raise BoltValidationError(f"layer {name!r}: active sets must hold {layer['active']} ids per example")
    return ids


def _output_logits(ex, layer, x, ids, W, b, step, cache) -> np.ndarray:
    """The output's logits over its active set `ids` (given, or chosen by LSH) or, ids None, over every
    neuron."""
    name, B = layer["name"], step.B
    if ids is not None:
        out = np.empty(ids.shape, np.float32)
        if B >= NEURON_MAJOR_MIN_BATCH:
            cache["inv"] = inv = ex.invert(ids, layer["dim"], ex.k.fn(name, "invert"))
            ex.run(name, "fwd_neuron", inv[3], ptr(inv[0]), ptr(inv[1]), ptr(inv[2]), ptr(x), ptr(W), ptr(b),
                 ptr(out), work=ids.size / max(1, inv[3]) * layer["in_dim"])
        else:
            ex.run(name, "fwd_active", B, ptr(x), ptr(ids), ptr(W), ptr(b), ptr(out),
                 work=ids.shape[1] * layer["in_dim"])
        return out
    if (B >= NEURON_MAJOR_MIN_BATCH and layer["dim"] * layer["in_dim"] >= DENSE_GEMM_MIN_WEIGHTS) \
            or dense_blas(ex, layer, B):
        # dense scoring of a wide layer for a batch is a real GEMM (B x in @ in x dim): the host BLAS
        # sgemm (numpy's) runs it near FLOP peak, which a dot-product kernel does not (measured 4.7 s vs
        # ~1 s for 256 x 670k); runtime/exec/blas.py splits it in fixed blocks over our pool
        return ex.blas.matmul_nt(ex.pool, x, W, b)
    out = np.empty((B, layer["dim"]), np.float32)
    ex.run(name, "fwd", B, ptr(x), None, ptr(W), ptr(b), ptr(out), work=layer["dim"] * layer["in_dim"])
    return out


def dense_blas(ex, layer, B: int, backward: bool = False) -> bool:
    """Whether this dense fc runs on BLAS at batch B (see DENSE_BLAS_MIN_MACS): a model file built
    before the BLAS path has no `w_upd` kernel and keeps the generated ones."""
    return (ex.k.has(layer["name"], "w_upd") and layer.get("layout") != "in_major"
            and B * layer["dim"] * layer["in_dim"] >= DENSE_BLAS_MIN_MACS
            and (not backward or B >= DENSE_BLAS_MIN_BATCH_BACKWARD
                 or (B >= DENSE_BLAS_BIG_MIN_BATCH and layer["dim"] * layer["in_dim"] >= DENSE_BLAS_BIG_WEIGHTS)))


def _dense_blas_backward(ex, layer, x, g, step):
    """The dense fc's backward on BLAS: dx = g W (W before its update, the fused activation derivative
    applied), dW = g^T x and db = sum_b g, then the optimizer over every entry (generated kernels split
    by entries: thread-count independent)."""
    name = layer["name"]
    p, m, v = ex.param_state(name)
    W, b = p["W"], p.get("b")
    dx = None
    if ex.k.has(name, "dx"):
        dx = ex.blas.matmul_nn(ex.pool, g, W)
        fused = ex.fused_activation[name]
        if fused:
            dx = act_grad(fused, x, dx)
    gW = ex.blas.matmul_tn(ex.pool, g, x)
    if step.grads is not None:                     # gradient mode: handed out, applied later (lower/split.py)
        step.grads[(name, "W")] = (None, gW)
        if b is not None:
            step.grads[(name, "b")] = (None, np.ascontiguousarray(g.sum(axis=0, dtype=np.float32)))
        return [dx]
    ex.run(name, "w_upd", W.size, ptr(W), ptr(gW), ptr(m["W"]), ptr(v["W"]), ptr(step.hyper), work=ADAM_OPS)
    if b is not None:
        db = np.ascontiguousarray(g.sum(axis=0, dtype=np.float32))
        ex.run(name, "bias_upd", layer["dim"], ptr(b), ptr(db), ptr(m["b"]), ptr(v["b"]), ptr(step.hyper),
               work=ADAM_OPS)
    return [dx]


# Positions per block of the blocked fused update (at least; more when one neuron has more): its
# per-chunk regrouping scratch is 16 bytes a position.
BLOCKED_MIN_CAP = 8192


def _blocked_scratch(ex, name: str, B: int, cap: int, in_dim: int) -> list:
    """Per-chunk scratch of the blocked fused update (backward.rows_update_blocked), kept between steps."""
    have = ex.kernel_scratch.get(("blocked", name))
    if have is None or have[0]["lb"].size < cap or have[0]["cnt"].size < B + 1:
        have = ex.kernel_scratch[("blocked", name)] = [
            {"scratch": np.zeros(in_dim, np.float32), "cnt": np.zeros(B + 1, np.int64),
             "lb": np.empty(cap, np.int32), "lg": np.empty(cap, np.float32), "bn": np.empty(cap, np.int32),
             "bg": np.empty(cap, np.float32)} for _ in range(N_CHUNKS)]
    return have


def run_backward(ex, layer, cache, g, step):
    name, B = layer["name"], step.B
    ids = cache["ids"]
    if name != ex.output and name not in ex.pre_activation_grads:
        g = act_grad(layer["activation"], cache["out"], g)
        if ids is not None:                        # a sparse hidden layer: its active positions only
            g = np.ascontiguousarray(np.take_along_axis(g, ids.astype(np.int64), axis=1))
    x = cache["x"]
    if layer.get("layout") == "in_major":
        update_sparse_input(ex, layer, x, g, step)
        return [None]
    p, m, v = ex.param_state(name)
    W, b = p["W"], p.get("b")
    mb, vb = (m.get("b"), v.get("b")) if b is not None else (None, None)
    needs_dx = ex.k.has(name, "dx")
    grad_mode = step.grads is not None            # data-parallel workers: gradients stored, not applied
    if ids is not None:
        if step.factors is not None:
            # factor mode: hand out what the weight gradient is made of (apply_active_factors below)
            step.factors[name] = {"kind": "active", "ids": ids, "g": g, "x": x}
            if not needs_dx or step.defer_dx:       # deferred: the row owners compute the input gradient
                return [None]
        uniq, seg, pos, nu = cache["inv"] if cache["inv"] is not None else ex.invert(
            ids, layer["dim"], ex.k.fn(name, "invert"))
        if grad_mode and step.factors is None:
            gW, gb = grad_buffer(ex, (name, "W"), (nu, layer["in_dim"])), grad_buffer(ex, (name, "b"), (nu,))
            rows = uniq[:nu].copy()
            step.grads[(name, "W")] = (rows, gW)
            if b is not None:
                step.grads[(name, "b")] = (rows, gb)
        if grad_mode and not needs_dx and step.factors is None:
            ex.run_split(name, "grad_active", nu, ptr(uniq), ptr(seg), ptr(pos), B, ptr(g), ptr(x), ptr(W),
                         ptr(gW), ptr(gb), per_thread=ex.scratch_ptrs, work=layer["in_dim"] * (ids.size / max(1, nu) + 1))
            return [None]
        if not needs_dx:
            ex.run(name, "upd_active", nu, ptr(uniq), ptr(seg), ptr(pos), B, ptr(g), ptr(x), ptr(W), ptr(b),
                 ptr(m["W"]), ptr(v["W"]), ptr(mb), ptr(vb), ptr(step.hyper), per_thread=ex.scratch_ptrs,
                 work=layer["in_dim"] * (ids.size / max(1, nu) + ADAM_OPS))
            return [None]
        if ex.k.has(name, "dx_active") and W.nbytes <= FUSED_DX_MIN_WEIGHT_BYTES:
            # W stays in cache: the input gradient by examples (each dx row written by one thread), then
            # the update (or, gradient mode, the gradient) alone; no per-chunk buffers to clear and sum
            dx = np.empty_like(x)                  # the kernel applies the fused activation derivative
            ex.run(name, "dx_active", B, ptr(g), ptr(ids), ptr(W), ptr(x), ptr(dx),
                   work=ids.shape[1] * layer["in_dim"])
            if step.factors is not None:           # factor mode: the owners update from the factors
                return [dx]
            if grad_mode:
                ex.run_split(name, "grad_active", nu, ptr(uniq), ptr(seg), ptr(pos), B, ptr(g), ptr(x), ptr(W),
                             ptr(gW), ptr(gb), per_thread=ex.scratch_ptrs,
                             work=layer["in_dim"] * (ids.size / max(1, nu) + 1))
            else:
                ex.run(name, "upd_active", nu, ptr(uniq), ptr(seg), ptr(pos), B, ptr(g), ptr(x), ptr(W), ptr(b),
                       ptr(m["W"]), ptr(v["W"]), ptr(mb), ptr(vb), ptr(step.hyper), per_thread=ex.scratch_ptrs,
                       work=layer["in_dim"] * (ids.size / max(1, nu) + ADAM_OPS))
            return [dx]
        # fused: the weight update and the input gradient (from W before its update) in one pass
        bounds = [(c * nu // N_CHUNKS, (c + 1) * nu // N_CHUNKS) for c in range(N_CHUNKS)]
        # the chunks' input-gradient buffers, kept between steps and cleared here (a fresh 2 MB np.zeros
        # each step costs its page faults)
        dxbufs = ex.kernel_scratch.get(("dxbufs", name))
        if dxbufs is None or dxbufs.shape[1:] != x.shape:
            dxbufs = ex.kernel_scratch[("dxbufs", name)] = np.zeros((N_CHUNKS,) + x.shape, np.float32)
        else:
            dxbufs.fill(0.0)
        scratch = [np.empty(layer["in_dim"], np.float32) for _ in range(N_CHUNKS)]
        if step.factors is not None:
            fn = ex.split_kernels.fn(name, "dx_active")
            args = (ptr(uniq), ptr(seg), ptr(pos), ptr(g), ptr(W))
            per_chunk = [(ptr(dxbufs[c]),) for c in range(N_CHUNKS)]
        elif grad_mode:
            fn = ex.split_kernels.fn(name, "grad_active_dx")
            args = (ptr(uniq), ptr(seg), ptr(pos), B, ptr(g), ptr(x), ptr(W), ptr(gW), ptr(gb))
            per_chunk = [(ptr(scratch[c]), ptr(dxbufs[c])) for c in range(N_CHUNKS)]
        else:
            # the blocked kernel (backward.rows_update_blocked): its chunks' regrouping scratch, for blocks
            # of at most `cap` positions (and at least one neuron's)
            fn = ex.k.fn(name, "upd_active_dx")
            cap = max(BLOCKED_MIN_CAP, int(np.diff(seg[:nu + 1]).max(initial=0)))
            blk = _blocked_scratch(ex, name, B, cap, layer["in_dim"])
            args = (ptr(uniq), ptr(seg), ptr(pos), B, ptr(g), ptr(x), ptr(W), ptr(b), ptr(m["W"]), ptr(v["W"]),
                    ptr(mb), ptr(vb), ptr(step.hyper), cap)
            per_chunk = [(ptr(s["scratch"]), ptr(dxbufs[c]), ptr(s["cnt"]), ptr(s["lb"]), ptr(s["lg"]), ptr(s["bn"]),
                          ptr(s["bg"])) for c, s in enumerate(blk)]
        if ex.worth_two_threads(nu * layer["in_dim"] * (2 * ids.size / max(1, nu) + ADAM_OPS)):
            ex.pool.run_chunks(fn, bounds, *args, per_chunk=per_chunk)
        else:                                      # small: the same chunks in order on this thread
            for (lo, hi), extra in zip(bounds, per_chunk):
                if hi > lo:
                    fn(lo, hi, *args, *extra)
        dx = dxbufs[0].copy()
        for c in range(1, N_CHUNKS):               # fixed order: thread-count independent
            dx += dxbufs[c]
        fused = ex.fused_activation[name]
        return [act_grad(fused, x, dx) if fused else dx]
    if dense_blas(ex, layer, B, backward=True):
        return _dense_blas_backward(ex, layer, x, np.ascontiguousarray(g, dtype=np.float32), step)
    dx = None
    if needs_dx:
        dx = np.empty_like(x)                      # the kernel applies the fused activation derivative
        ex.run(name, "dx", B, ptr(g), None, ptr(W), ptr(x), ptr(dx), work=layer["dim"] * layer["in_dim"])
    if grad_mode:
        gW, gb = grad_buffer(ex, (name, "W"), (layer["dim"], layer["in_dim"])), grad_buffer(ex, (name, "b"), (layer["dim"],))
        ex.run_split(name, "grad", layer["dim"], None, None, None, B, ptr(g), ptr(x), ptr(W), ptr(gW), ptr(gb),
                     per_thread=ex.scratch_ptrs, work=layer["in_dim"] * (B + 1))
        step.grads[(name, "W")] = (None, gW)
        if b is not None:
            step.grads[(name, "b")] = (None, gb)
        return [dx]
    ex.run(name, "upd", layer["dim"], None, None, None, B, ptr(g), ptr(x), ptr(W), ptr(b), ptr(m["W"]),
         ptr(v["W"]), ptr(mb), ptr(vb), ptr(step.hyper), per_thread=ex.scratch_ptrs,
         work=layer["in_dim"] * (B + ADAM_OPS))
    return [dx]


# ---------------------------------------------------------------- factors (data-parallel workers)

def merge_active_factors(fs: list) -> dict:
    """Workers' factors of an LSH-sparse layer stacked in worker order: the whole batch's active sets,
    logits' gradients and input rows."""
    if len(fs) == 1:
        return fs[0]
    return {"kind": "active", **{k: np.concatenate([f[k] for f in fs]) for k in ("ids", "g", "x")}}


def apply_active_factors(ex, layer, f: dict, owned: dict, moments: dict, hyper, copy_out: bool) -> dict:
    """The fused lazy update (`upd_active`) of the owned neurons from the whole batch's factors: the
    single-process arithmetic (each row's gradient summed over the batch's positions in order) on the
    owner's rows only. W is the replica's own; moments are the owner's shards (runners.shifted)."""
    name = layer["name"]
    p = ex.state.params[name]
    W, b = p["W"], p.get("b")
    ids = np.ascontiguousarray(f["ids"], dtype=np.int32)
    g, x = np.ascontiguousarray(f["g"], np.float32), np.ascontiguousarray(f["x"], np.float32)
    lo, hi = owned["W"]
    uniq, seg, pos, nu = owned_inversion(ex, name, ids, lo, hi)
    (mW, vW), (mb, vb) = moments["W"], moments.get("b", (None, None))
    ex.run(name, "upd_active", nu, ptr(uniq), ptr(seg), ptr(pos), ids.shape[0],
           ptr(g), ptr(x), ptr(W), ptr(b), shifted(mW, lo), shifted(vW, lo), shifted(mb, lo), shifted(vb, lo),
           ptr(hyper), per_thread=ex.scratch_ptrs, work=layer["in_dim"] * (ids.size / max(1, nu) + ADAM_OPS))
    rows = np.array(uniq[:nu])
    out = {"W": (rows, W[rows] if copy_out else None)}
    if b is not None:
        out["b"] = (rows, b[rows] if copy_out else None)
    return out


FACTOR_KINDS = {"active": (merge_active_factors, apply_active_factors),
                "sparse_input": (merge_sparse_input, apply_sparse_input)}


OP = Op(
    name="fc", order=10, summary="a fully connected layer, optionally LSH-sparse",
    args=args, reads="any", check=check, to_bolt=to_bolt,
    shape=lambda attrs, in_dims: attrs["dim"], weighted_input=True,
    params=params, param_init={"W": "normal", "b": "zeros"}, plan_entry=plan_entry, notes=notes,
    forward=forward, backward=backward, lower=lower, run_forward=run_forward, run_backward=run_backward,
    split_params=split_params, split_row_sparse=split_row_sparse, lower_split=lower_split,
    extra={"factor_kinds": FACTOR_KINDS},
)
