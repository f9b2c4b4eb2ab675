"""NUMPY_RULES: the forward and backward rule of every computing op, keyed by op (the executable spec).

Each rule is `OpRule(forward, backward)`:
    forward(layer, params, inputs, active, as_pairs) -> (value, cache)
    backward(layer, params, cache, grad, wrt_pre=False) -> (input_grads, param_grads)

- `layer` is the plan's layer dict, `params` its tensors (`W`, `b`, `gamma`, `beta`), `inputs` the values
  of its inputs (a CSR matrix for a sparse input, a dense `(B, d)` array otherwise).
- `active` is `None` (all neurons) or `(B, k)` int32 neuron ids per example, no duplicates in a row.
- A layer with an active set yields `(ids, act)` when `as_pairs` (the model output) and otherwise a dense
  `(B, dim)` value that is exactly 0 outside the active set (inactive neurons output 0, not f(0), as BOLT).
- `grad` is the gradient of the loss w.r.t. the layer's value: `(B, k)` for pairs, `(B, dim)` otherwise.
  With `wrt_pre=True` it is the gradient w.r.t. the pre-activation `z` over the same positions (the fused
  softmax/sigmoid + loss path of the output layer, numerically stable).
- `input_grads[i]` is None for a sparse (CSR) input: those are leaves of the graph.
- `param_grads[name]` is a `ParamGrad(rows, cols, value)`: the gradient block touched by this batch
  (`rows`/`cols` sorted unique ids or None = all). This is what lazy Adam updates; nothing else moves.

Every rule preserves the dtype of its inputs (float32 in training, float64 in the gradient tests).
Loss rules (`LOSS_RULES`) take the output pre-activation `z` over `active` (or all columns) and the
label CSR and return `(loss (B,), dz)` with the per-example loss and its gradient (not yet averaged).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp


@dataclass
class ParamGrad:
    rows: np.ndarray | None      # touched row ids (sorted, unique) or None = every row
    cols: np.ndarray | None      # touched column ids (sorted, unique) or None = every column
    value: np.ndarray            # the dense block W[rows][:, cols]'s gradient

    def dense(self, shape) -> np.ndarray:
        """The full-size gradient (zeros outside the block); for tests and references."""
        out = np.zeros(shape, dtype=self.value.dtype)
        if out.ndim == 1:
            out[slice(None) if self.rows is None else self.rows] += self.value
        else:
            r = slice(None) if self.rows is None else self.rows
            c = slice(None) if self.cols is None else self.cols
            if self.rows is not None and self.cols is not None:
                out[np.ix_(self.rows, self.cols)] += self.value
            else:
                out[r, c] += self.value
        return out


@dataclass(frozen=True)
class OpRule:
    forward: Callable
    backward: Callable


# ---------------------------------------------------------------- activations (on the active positions)

def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # split by sign so exp never overflows
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def activate(kind: str, z: np.ndarray) -> np.ndarray:
    """Softmax is taken row-wise over the columns given (the active set, or all neurons)."""
    if kind == "relu":
        return np.maximum(z, 0)
    if kind == "tanh":
        return np.tanh(z)
    if kind == "sigmoid":
        return _sigmoid(z)
    if kind == "softmax":
        return _softmax(z)
    if kind == "linear":
        return z
    raise ValueError(f"unknown activation {kind!r}")


def activation_backward(kind: str, z: np.ndarray, act: np.ndarray, dact: np.ndarray) -> np.ndarray:
    if kind == "relu":
        return dact * (z > 0)
    if kind == "tanh":
        return dact * (1 - act * act)
    if kind == "sigmoid":
        return dact * act * (1 - act)
    if kind == "softmax":
        return act * (dact - (dact * act).sum(axis=1, keepdims=True))
    if kind == "linear":
        return dact
    raise ValueError(f"unknown activation {kind!r}")


# ---------------------------------------------------------------- helpers

def _compress_columns(x: sp.csr_matrix):
    """(F, Xc): the sorted unique feature ids of a CSR batch and the batch re-indexed onto them, so
    gradient blocks have |F| rows instead of in_dim (lazy updates touch only F)."""
    feats, inv = np.unique(x.indices, return_inverse=True)
    xc = sp.csr_matrix((x.data, inv.astype(np.int32), x.indptr), shape=(x.shape[0], len(feats)))
    return feats, xc


def _matmul(x, w: np.ndarray) -> np.ndarray:
    """x (CSR or dense) @ w, always a dense ndarray."""
    out = x @ w
    return np.asarray(out)


def _scatter_dense(active: np.ndarray, vals: np.ndarray, dim: int) -> np.ndarray:
    out = np.zeros((active.shape[0], dim), dtype=vals.dtype)
    np.put_along_axis(out, active.astype(np.int64), vals, axis=1)
    return out


# ---------------------------------------------------------------- fc

UNION_RATIO = 16      # gather path when the batch's union of active ids exceeds 16x the per-row count
_GATHER_CHUNK = 1 << 22


def _use_gather(layer, x, union_size: int, k: int) -> bool:
    """Wide sparse layers (union of a batch's active sets >> per-example active count, e.g. 100k labels
    at 500 active): per-example row gathers cost B*k*in instead of the union GEMM's B*|U|*in. Only for a
    dense input and out_major W (a neuron's row contiguous), which is how wide output layers are laid out."""
    return (union_size > UNION_RATIO * k and not sp.issparse(x)
            and layer.get("layout", "out_major") != "in_major")


def fc_forward(layer, params, inputs, active, as_pairs=False):
    """z = x @ W (+ b) over the active neurons of each example (all when `active` is None); value = f(z).

    Layout: `in_major` W is (in_dim, dim), `out_major` W is (dim, in_dim) (CONTRACTS.md section 4).
    With an active set, the batch's union U of active ids is gathered once (W[U]) and z is read back per
    example from x @ W[U]^T: one GEMM instead of B small gathers; when U is much wider than one
    example's set (`_use_gather`), each example's rows are gathered instead, in chunks of examples."""
    x = inputs[0]
    W, b = params["W"], params.get("b")
    in_major = layer.get("layout", "out_major") == "in_major"
    if active is None:
        z = _matmul(x, W if in_major else W.T)
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
        z = np.take_along_axis(_matmul(x, wu), inv, axis=1)
        cache["wu"], cache["gather"] = wu, False
    if b is not None:
        z = z + b[active]
    act = activate(layer["activation"], z)
    cache.update(z=z, act=act)
    value = (active, act) if as_pairs else _scatter_dense(active, act, layer["dim"])
    return value, cache


def fc_backward(layer, params, cache, grad, wrt_pre=False):
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
        feats, xc = _compress_columns(x)
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


# ---------------------------------------------------------------- embedding bag

def embedding_forward(layer, params, inputs, active=None, as_pairs=False):
    """out_b = sum_f x_bf W[f] (`reduce` sum) or that sum / nnz(x_b) (`mean`; 0 for an empty row).
    The feature values weight the rows (an embedding bag with per-sample weights)."""
    x = inputs[0]
    if not sp.issparse(x):
        x = sp.csr_matrix(x)
    scale = None
    if layer.get("reduce", "sum") == "mean":
        counts = np.diff(x.indptr).astype(params["W"].dtype)
        scale = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0).astype(params["W"].dtype)[:, None]
    out = _matmul(x, params["W"])
    if scale is not None:
        out = out * scale
    return out, {"x": x, "scale": scale}


def embedding_backward(layer, params, cache, grad, wrt_pre=False):
    g = grad if cache["scale"] is None else grad * cache["scale"]
    feats, xc = _compress_columns(cache["x"])
    return [None], {"W": ParamGrad(feats, None, np.asarray(xc.T @ g))}


# ---------------------------------------------------------------- concat

def concat_forward(layer, params, inputs, active=None, as_pairs=False):
    parts = [np.asarray(v.toarray()) if sp.issparse(v) else v for v in inputs]
    widths = [p.shape[1] for p in parts]
    return np.concatenate(parts, axis=1), {"widths": widths, "sparse": [sp.issparse(v) for v in inputs]}


def concat_backward(layer, params, cache, grad, wrt_pre=False):
    out, start = [], 0
    for w, is_sparse in zip(cache["widths"], cache["sparse"]):
        out.append(None if is_sparse else grad[:, start:start + w])
        start += w
    return out, {}


# ---------------------------------------------------------------- layernorm

def layernorm_forward(layer, params, inputs, active=None, as_pairs=False):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per example over its features (biased var)."""
    x = inputs[0]
    eps = layer.get("eps", 1e-5)
    mu = x.mean(axis=1, keepdims=True)
    xm = x - mu
    inv_std = 1.0 / np.sqrt((xm * xm).mean(axis=1, keepdims=True) + eps)
    xhat = xm * inv_std
    return xhat * params["gamma"] + params["beta"], {"xhat": xhat, "inv_std": inv_std}


def layernorm_backward(layer, params, cache, grad, wrt_pre=False):
    xhat, inv_std = cache["xhat"], cache["inv_std"]
    d = xhat.shape[1]
    dxhat = grad * params["gamma"]
    dx = inv_std / d * (d * dxhat - dxhat.sum(axis=1, keepdims=True)
                        - xhat * (dxhat * xhat).sum(axis=1, keepdims=True))
    return [dx], {"gamma": ParamGrad(None, None, (grad * xhat).sum(axis=0)),
                  "beta": ParamGrad(None, None, grad.sum(axis=0))}


NUMPY_RULES: dict[str, OpRule] = {
    "fc": OpRule(fc_forward, fc_backward),
    "embedding": OpRule(embedding_forward, embedding_backward),
    "concat": OpRule(concat_forward, concat_backward),
    "layernorm": OpRule(layernorm_forward, layernorm_backward),
}
# "input" and "target" compute nothing: the executor binds them to the batch's values.
NON_COMPUTING_OPS = ("input", "target")


# ---------------------------------------------------------------- losses (fused with the output activation)

def label_mask(labels: sp.csr_matrix, active: np.ndarray | None, dim: int) -> np.ndarray:
    """bool (B, k): is active[b, j] one of example b's labels (all columns when active is None)."""
    labels = sp.csr_matrix(labels)
    if active is None:
        m = np.zeros((labels.shape[0], dim), dtype=bool)
        rows = np.repeat(np.arange(labels.shape[0]), np.diff(labels.indptr))
        m[rows, labels.indices] = True
        return m
    rows = np.repeat(np.arange(labels.shape[0], dtype=np.int64), np.diff(labels.indptr))
    label_keys = rows * dim + labels.indices.astype(np.int64)
    act_keys = np.arange(active.shape[0], dtype=np.int64)[:, None] * dim + active.astype(np.int64)
    return np.isin(act_keys, label_keys)


def softmax_cross_entropy(z, active, labels, dim):
    """p = softmax(z) over the given columns; target t_j = 1/|labels_b| on the example's labels present
    in the columns (a label cut from the active set contributes nothing); loss = -sum_j t_j log p_j;
    dz = (sum_j t_j) p - t (exact also when some labels were cut). An example without labels: 0, 0."""
    mask = label_mask(labels, active, dim)
    n_labels = np.diff(sp.csr_matrix(labels).indptr).astype(z.dtype)
    t = mask * (np.where(n_labels > 0, 1.0 / np.maximum(n_labels, 1), 0).astype(z.dtype)[:, None])
    zs = z - z.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(zs).sum(axis=1, keepdims=True))
    logp = zs - logsum
    loss = -(t * logp).sum(axis=1)
    dz = t.sum(axis=1, keepdims=True) * np.exp(logp) - t
    return loss, dz


def sigmoid_binary_cross_entropy(z, active, labels, dim):
    """Per neuron in the given columns: s = sigmoid(z), y = 1 on the example's labels else 0;
    loss = sum_j -(y log s + (1-y) log(1-s)) (one term for a binary target); dz = s - y."""
    y = label_mask(labels, active, dim).astype(z.dtype)
    # log(1 + exp(-|z|)) form: stable for large |z|
    loss = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)
    return loss, _sigmoid(z) - y


LOSS_RULES = {
    "cross_entropy": softmax_cross_entropy,
    "binary_cross_entropy": sigmoid_binary_cross_entropy,
}
