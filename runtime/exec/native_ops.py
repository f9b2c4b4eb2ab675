"""NATIVE_OPS: how the native executor runs each op's kernels (the runtime side of boltc/lower/rules.py),
keyed by op like NUMPY_RULES:
    forward(ex, layer, ins, step) -> (value, cache)
    backward(ex, layer, cache, g, step) -> input gradients (one per input; None for a leaf)

`ex` is the NativeExecutor (pool, kernels, state, scratch); `ins` the layer's input values (a CSR batch
for a sparse input, C-contiguous float32 arrays otherwise); `step` the per-call context (mode, active
sets, seeds, hyper-parameters, the inversions of sparse inputs shared by the layers reading them).
`g` is the gradient of the layer's value, except for (a) the output layer, which gets the gradient of
its logits from the fused loss kernel, and (b) an fc whose only reader applied its activation
derivative (rules.fused_input_activation), which gets its pre-activation gradient.

Every kernel writes only rows (or columns) its own slice owns, and gradients are summed in a fixed
order, so every result is the same for any thread count. Each layer's input gradient is computed from
its parameters before it updates them.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from boltc.errors import BoltValidationError
from boltc.runtime.exec import blas
from boltc.runtime.exec.native_kernels import ptr
from boltc.runtime.exec.numpy_rules import activate

# Fixed chunks of the wide layer's unique neurons for the fused update + input gradient: each chunk has
# its own input-gradient buffer (B x in_dim, small), summed in chunk order afterwards. The chunking does
# not depend on the thread count, so neither does the result.
N_CHUNKS = 8
# Below this batch size the active-set forward gathers per example (no inversion: batch-1 latency);
# above it, it runs in neuron order (each weight row read once, in address order).
NEURON_MAJOR_MIN_BATCH = 32
# Dense scoring of an output layer at least this big (dim * in_dim) for a batch >= 32 goes to BLAS.
DENSE_GEMM_MIN_WEIGHTS = 1 << 22
# A dense fc (every neuron, dense input) runs its forward as sgemm calls into numpy's BLAS
# (runtime/exec/blas.py) when it multiplies at least this many times (B * dim * in_dim), and its
# backward too (dW = g^T x and dx = g W by sgemm, then the optimizer kernel over every entry) from a
# batch of DENSE_BLAS_MIN_BATCH_BACKWARD. Measured with benchmarks/dense_blas.py (docs/native.md "Dense
# layers"): the forward gained 1.1-2.4x on every shape tried; the backward writes and rereads a gradient
# as large as W where the generated kernel fuses gradient and update, which lost below batch 128
# (0.4x at batch 1, 0.8x at 16-64) and won from it (1.07x at 128, 1.4-1.9x at 256).
DENSE_BLAS_MIN_MACS = 1 << 16
DENSE_BLAS_MIN_BATCH_BACKWARD = 128
# Handing a slice to the pool costs about 0.1 ms (a lock hand-off each way), more than a small kernel
# spends on its whole range: text_tiny.bolt (64 hidden units, batch 64) trained at 80k ex/s on 2 threads
# and 188k on 1. So a kernel takes a second thread only for at least this many multiply-adds (or bytes
# of a copy) per thread, estimated per item at each call (`_run`'s `work`). Wide layers (the 670k
# chain) always split; results never depend on the split (every kernel is slice-independent).
MIN_WORK_PER_THREAD = 1 << 18
ADAM_OPS = 12               # an optimizer update, per element, counted as this many multiply-adds


@dataclass
class Step:
    """What one forward (and backward) call shares between layers."""
    mode: str
    batch: object
    B: int
    active: dict | None = None
    seed: int = 0
    insert_missed: bool = False
    hyper: np.ndarray | None = None
    inversions: dict = field(default_factory=dict)     # sparse input name -> (uniq, seg, pos, n, prow)

    def layer_seed(self, name: str) -> int:
        """The random-fill seed of a sparse hidden layer: the step's, mixed with the layer's name, so
        layers do not draw the same fill stream (the output uses the step's seed itself)."""
        return (self.seed ^ zlib.crc32(name.encode()) * 0x9E3779B97F4A7C15) & ((1 << 63) - 1)


def act_grad(activation: str, act: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Same formulas as boltc/lower/backward.py act_grad (and the spec's activation_backward)."""
    if activation == "relu":
        d = d * (act > 0)
    elif activation == "sigmoid":
        d = d * (act * (1 - act))
    elif activation == "tanh":
        d = d * (1 - act * act)
    return np.ascontiguousarray(d, dtype=np.float32)


def min_items(work: float) -> int:
    """Items per thread below which a kernel whose items cost `work` each stays on one thread."""
    return max(1, int(MIN_WORK_PER_THREAD // max(1.0, work)))


def _run(ex, name: str, role: str, n: int, *args, work: float, **kw) -> None:
    """Layer `name`'s kernel `role` over n items, each about `work` multiply-adds (see MIN_WORK_PER_THREAD)."""
    ex.pool.run(ex.k.fn(name, role), n, *args, min_per_thread=min_items(work), **kw)


def _params(ex, name):
    return ex.state.params[name], ex.state.m.get(name, {}), ex.state.v.get(name, {})


# ---------------------------------------------------------------- sparse inputs (fc and embedding)

def _sparse_forward(ex, layer, x, bias) -> np.ndarray:
    out = np.empty((x.shape[0], layer["dim"]), np.float32)
    _run(ex, layer["name"], "fwd", x.shape[0], ptr(x.indptr), ptr(x.indices), ptr(x.data),
         ptr(ex.state.params[layer["name"]]["W"]), ptr(bias), ptr(out),
         work=layer["dim"] * (x.nnz / max(1, x.shape[0]) + 1))
    return out


def _update_sparse_input(ex, layer, x, dz: np.ndarray, step: Step) -> None:
    """Lazy update of an in-major W (and a dense bias) from dz: split by the batch's unique features.
    The inversion of x's feature ids is made once per step for every layer reading the same input."""
    name, src = layer["name"], layer["inputs"][0]
    p, m, v = _params(ex, name)
    inv = step.inversions.get(src)
    if inv is None:
        uniq, seg, pos, nu = ex.invert(x.indices, layer["in_dim"], ex.k.fn(name, "invert"))
        prow = np.repeat(np.arange(x.shape[0], dtype=np.int32), np.diff(x.indptr))
        inv = step.inversions[src] = (uniq, seg, pos, nu, prow)
    uniq, seg, pos, nu, prow = inv
    _run(ex, name, "upd", nu, ptr(uniq), ptr(seg), ptr(pos), ptr(prow), ptr(x.data), ptr(dz), ptr(p["W"]),
         ptr(m["W"]), ptr(v["W"]), ptr(step.hyper), per_thread=ex.scratch_ptrs,
         work=layer["dim"] * (x.nnz / max(1, nu) + ADAM_OPS))
    if p.get("b") is not None:
        db = np.ascontiguousarray(dz.sum(axis=0, dtype=np.float32))
        _run(ex, name, "bias_upd", layer["dim"], ptr(p["b"]), ptr(db), ptr(m["b"]), ptr(v["b"]), ptr(step.hyper),
             work=ADAM_OPS)


# ---------------------------------------------------------------- fc

def fc_forward(ex, layer, ins, step: Step):
    name, dim = layer["name"], layer["dim"]
    p = ex.state.params[name]
    W, b = p["W"], p.get("b")
    x, B = ins[0], step.B
    cache = {"x": x, "ids": None, "inv": None}
    if layer.get("layout") == "in_major":
        out = _sparse_forward(ex, layer, x, b)
    else:
        ids = cache["ids"] = _active_ids(ex, layer, x, step)
        if name == ex.output:
            out = _output_logits(ex, layer, x, ids, W, b, step, cache)
        elif ids is None and dense_blas(ex, layer, B):
            out = blas.matmul_nt(ex.pool, x, W, b)
            if layer["activation"] == "relu":
                np.maximum(out, 0, out=out)
            elif layer["activation"] != "linear":
                out = np.ascontiguousarray(activate(layer["activation"], out), dtype=np.float32)
        elif ids is None:
            out = np.empty((B, dim), np.float32)
            _run(ex, name, "fwd", B, ptr(x), None, ptr(W), ptr(b), ptr(out), work=dim * layer["in_dim"])
        else:
            # a sparse hidden layer: act over the active set, a dense value that is 0 elsewhere (spec)
            act = np.empty(ids.shape, np.float32)
            _run(ex, name, "fwd_active", B, ptr(x), ptr(ids), ptr(W), ptr(b), ptr(act),
                 work=ids.shape[1] * layer["in_dim"])
            out = np.zeros((B, dim), np.float32)
            np.put_along_axis(out, ids.astype(np.int64), act, axis=1)
    cache["out"] = out
    return out, cache


def _active_ids(ex, layer, x, step: Step) -> np.ndarray | None:
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


def _output_logits(ex, layer, x, ids, W, b, step: Step, cache) -> np.ndarray:
    """The output's logits over its active set `ids` (given, or chosen by LSH) or, ids None, over every
    neuron."""
    name, B = layer["name"], step.B
    if ids is not None:
        out = np.empty(ids.shape, np.float32)
        if B >= NEURON_MAJOR_MIN_BATCH:
            cache["inv"] = inv = ex.invert(ids, layer["dim"], ex.k.fn(name, "invert"))
            _run(ex, name, "fwd_neuron", inv[3], ptr(inv[0]), ptr(inv[1]), ptr(inv[2]), ptr(x), ptr(W), ptr(b),
                 ptr(out), work=ids.size / max(1, inv[3]) * layer["in_dim"])
        else:
            _run(ex, name, "fwd_active", B, ptr(x), ptr(ids), ptr(W), ptr(b), ptr(out),
                 work=ids.shape[1] * layer["in_dim"])
        return out
    if (B >= NEURON_MAJOR_MIN_BATCH and layer["dim"] * layer["in_dim"] >= DENSE_GEMM_MIN_WEIGHTS) \
            or dense_blas(ex, layer, B):
        # dense scoring of a wide layer for a batch is a real GEMM (B x in @ in x dim): the host BLAS
        # sgemm (numpy's) runs it near FLOP peak, which a dot-product kernel does not (measured 4.7 s vs
        # ~1 s for 256 x 670k); runtime/exec/blas.py splits it in fixed blocks over our pool
        return blas.matmul_nt(ex.pool, x, W, b)
    out = np.empty((B, layer["dim"]), np.float32)
    _run(ex, name, "fwd", B, ptr(x), None, ptr(W), ptr(b), ptr(out), work=layer["dim"] * layer["in_dim"])
    return out


def dense_blas(ex, layer, B: int, backward: bool = False) -> bool:
    """Whether this dense fc runs on BLAS at batch B (see DENSE_BLAS_MIN_MACS): a model file built
    before the BLAS path has no `w_upd` kernel and keeps the generated ones."""
    return (ex.k.has(layer["name"], "w_upd") and layer.get("layout") != "in_major"
            and B * layer["dim"] * layer["in_dim"] >= DENSE_BLAS_MIN_MACS
            and (not backward or B >= DENSE_BLAS_MIN_BATCH_BACKWARD))


def _dense_blas_backward(ex, layer, x, g, step: Step):
    """The dense fc's backward on BLAS: dx = g W (W before its update, the fused activation derivative
    applied), dW = g^T x and db = sum_b g, then the optimizer over every entry (generated kernels split
    by entries: thread-count independent)."""
    name = layer["name"]
    p, m, v = _params(ex, name)
    W, b = p["W"], p.get("b")
    dx = None
    if ex.k.has(name, "dx"):
        dx = blas.matmul_nn(ex.pool, g, W)
        fused = ex.fused_activation[name]
        if fused:
            dx = act_grad(fused, x, dx)
    gW = blas.matmul_tn(ex.pool, g, x)
    _run(ex, name, "w_upd", W.size, ptr(W), ptr(gW), ptr(m["W"]), ptr(v["W"]), ptr(step.hyper), work=ADAM_OPS)
    if b is not None:
        db = np.ascontiguousarray(g.sum(axis=0, dtype=np.float32))
        _run(ex, name, "bias_upd", layer["dim"], ptr(b), ptr(db), ptr(m["b"]), ptr(v["b"]), ptr(step.hyper),
             work=ADAM_OPS)
    return [dx]


def fc_backward(ex, layer, cache, g, step: Step):
    name, B = layer["name"], step.B
    ids = cache["ids"]
    if name != ex.output and name not in ex.pre_activation_grads:
        g = act_grad(layer["activation"], cache["out"], g)
        if ids is not None:                        # a sparse hidden layer: its active positions only
            g = np.ascontiguousarray(np.take_along_axis(g, ids.astype(np.int64), axis=1))
    x = cache["x"]
    if layer.get("layout") == "in_major":
        _update_sparse_input(ex, layer, x, g, step)
        return [None]
    p, m, v = _params(ex, name)
    W, b = p["W"], p.get("b")
    mb, vb = (m.get("b"), v.get("b")) if b is not None else (None, None)
    needs_dx = ex.k.has(name, "dx")
    if ids is not None:
        uniq, seg, pos, nu = cache["inv"] if cache["inv"] is not None else ex.invert(
            ids, layer["dim"], ex.k.fn(name, "invert"))
        if not needs_dx:
            _run(ex, name, "upd_active", nu, ptr(uniq), ptr(seg), ptr(pos), B, ptr(g), ptr(x), ptr(W), ptr(b),
                 ptr(m["W"]), ptr(v["W"]), ptr(mb), ptr(vb), ptr(step.hyper), per_thread=ex.scratch_ptrs,
                 work=layer["in_dim"] * (ids.size / max(1, nu) + ADAM_OPS))
            return [None]
        # fused: the weight update and the input gradient (from W before its update) in one pass
        bounds = [(c * nu // N_CHUNKS, (c + 1) * nu // N_CHUNKS) for c in range(N_CHUNKS)]
        dxbufs = np.zeros((N_CHUNKS,) + x.shape, np.float32)
        scratch = [np.empty(layer["in_dim"], np.float32) for _ in range(N_CHUNKS)]
        fn = ex.k.fn(name, "upd_active_dx")
        args = (ptr(uniq), ptr(seg), ptr(pos), B, ptr(g), ptr(x), ptr(W), ptr(b), ptr(m["W"]), ptr(v["W"]),
                ptr(mb), ptr(vb), ptr(step.hyper))
        per_chunk = [(ptr(scratch[c]), ptr(dxbufs[c])) for c in range(N_CHUNKS)]
        if nu * layer["in_dim"] * (2 * ids.size / max(1, nu) + ADAM_OPS) >= 2 * MIN_WORK_PER_THREAD:
            ex.pool.run_chunks(fn, bounds, *args, per_chunk=per_chunk)
        else:                                      # small: the same chunks in order on this thread
            for (lo, hi), extra in zip(bounds, per_chunk):
                if hi > lo:
                    fn(lo, hi, *args, *extra)
        dx = dxbufs[0]
        for c in range(1, N_CHUNKS):               # fixed order: thread-count independent
            dx += dxbufs[c]
        fused = ex.fused_activation[name]
        return [act_grad(fused, x, dx) if fused else dx]
    if dense_blas(ex, layer, B, backward=True):
        return _dense_blas_backward(ex, layer, x, np.ascontiguousarray(g, dtype=np.float32), step)
    dx = None
    if needs_dx:
        dx = np.empty_like(x)                      # the kernel applies the fused activation derivative
        _run(ex, name, "dx", B, ptr(g), None, ptr(W), ptr(x), ptr(dx), work=layer["dim"] * layer["in_dim"])
    _run(ex, name, "upd", layer["dim"], None, None, None, B, ptr(g), ptr(x), ptr(W), ptr(b), ptr(m["W"]),
         ptr(v["W"]), ptr(mb), ptr(vb), ptr(step.hyper), per_thread=ex.scratch_ptrs,
         work=layer["in_dim"] * (B + ADAM_OPS))
    return [dx]


# ---------------------------------------------------------------- embedding

def embedding_forward(ex, layer, ins, step: Step):
    x = ins[0]
    out = _sparse_forward(ex, layer, x, None)
    if ex.k.has(layer["name"], "scale"):
        _run(ex, layer["name"], "scale", step.B, ptr(x.indptr), ptr(out), work=layer["dim"])
    return out, {"x": x}


def embedding_backward(ex, layer, cache, g, step: Step):
    x = cache["x"]
    if ex.k.has(layer["name"], "scale"):
        g = np.array(g, dtype=np.float32, order="C")           # scaled in place: a copy of our own
        _run(ex, layer["name"], "scale", step.B, ptr(x.indptr), ptr(g), work=layer["dim"])
    _update_sparse_input(ex, layer, x, np.ascontiguousarray(g, dtype=np.float32), step)
    return [None]


# ---------------------------------------------------------------- concat

def concat_forward(ex, layer, ins, step: Step):
    out = np.empty((step.B, layer["dim"]), np.float32)
    for i, v in enumerate(ins):
        _run(ex, layer["name"], f"part{i}", step.B, ptr(v), ptr(out), work=v.shape[1])
    return out, {"widths": [v.shape[1] for v in ins]}


def concat_backward(ex, layer, cache, g, step: Step):
    g = np.ascontiguousarray(g, dtype=np.float32)
    grads = []
    for i, (src, w) in enumerate(zip(layer["inputs"], cache["widths"])):
        if src not in ex.by_name:                  # a model input: a leaf
            grads.append(None)
            continue
        d = np.empty((step.B, w), np.float32)
        _run(ex, layer["name"], f"grad{i}", step.B, ptr(g), ptr(d), work=w)
        grads.append(d)
    return grads


# ---------------------------------------------------------------- layernorm

def layernorm_forward(ex, layer, ins, step: Step):
    p = ex.state.params[layer["name"]]
    x, B, d = ins[0], step.B, layer["dim"]
    y, xhat, inv_std = np.empty((B, d), np.float32), np.empty((B, d), np.float32), np.empty(B, np.float32)
    _run(ex, layer["name"], "fwd", B, ptr(x), ptr(p["gamma"]), ptr(p["beta"]), ptr(y), ptr(xhat), ptr(inv_std),
         work=4 * d)
    return y, {"xhat": xhat, "inv_std": inv_std}


def layernorm_backward(ex, layer, cache, g, step: Step):
    name, B, d = layer["name"], step.B, layer["dim"]
    p, m, v = _params(ex, name)
    g = np.ascontiguousarray(g, dtype=np.float32)
    dx = None
    if layer["inputs"][0] in ex.by_name:           # gamma before its update
        dx = np.empty((B, d), np.float32)
        _run(ex, name, "bwd", B, ptr(g), ptr(p["gamma"]), ptr(cache["xhat"]), ptr(cache["inv_std"]), ptr(dx),
             work=5 * d)
    dgamma, dbeta = np.empty(d, np.float32), np.empty(d, np.float32)
    _run(ex, name, "pgrad", d, B, ptr(g), ptr(cache["xhat"]), ptr(dgamma), ptr(dbeta), work=2 * B)
    for t, grad in (("gamma", dgamma), ("beta", dbeta)):
        _run(ex, name, f"upd_{t}", d, ptr(p[t]), ptr(grad), ptr(m[t]), ptr(v[t]), ptr(step.hyper), work=ADAM_OPS)
    return [dx]


NATIVE_OPS = {
    "fc": (fc_forward, fc_backward),
    "embedding": (embedding_forward, embedding_backward),
    "concat": (concat_forward, concat_backward),
    "layernorm": (layernorm_forward, layernorm_backward),
}
