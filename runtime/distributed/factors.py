"""Factored gradient exchange (`exchange="factors"`): send what a gradient is made of, not the gradient.

An fc layer's weight gradient over a batch is a sum of outer products, dW = dZ^T X (out_major) or
X^T dZ (in_major), where X is the layer's input and dZ the loss gradient w.r.t. its pre-activation on
the active neurons. A worker with b examples therefore sends X (b x in_dim dense, or the sparse input
rows) and dZ with its active ids (b x k), and every replica rebuilds the exact dW of the global batch
from all workers' factors (the "sufficient factor" idea of Xie et al., 2016, applied to LSH-sparse
layers). On the 100k-label model that is about 0.9 MB per worker per update instead of the ~70 MB of
touched rows (the union of 128 x 500 active ids covers half of the 100k rows) -- see docs/distributed.md.

Cost moved from the network to the CPU: every replica rebuilds the global batch's dW (B x k x in_dim
multiply-adds for the output layer: the same work one process does for the whole batch), and the
driver's broadcast grows with the number of workers (it concatenates factors; it cannot sum them).

The forward and backward passes use the NumPy rules (runtime/exec/numpy_rules.py, the executable spec) and
handle plans made of fc layers only; `supports(plan)` says whether a plan qualifies.
Results equal the row exchange up to float32 summation order (tests/test_distributed.py).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.runtime.distributed.exchange import Key, RowGrad
from boltc.runtime.exec.numpy_rules import LOSS_RULES, NUMPY_RULES, activation_backward, loss_options


def supports(plan: dict) -> bool:
    return all(l["op"] == "fc" for l in plan["layers"])


def _active_csr(active: np.ndarray, dz: np.ndarray, dim: int) -> sp.csr_matrix:
    """(b, dim) CSR holding dz at each example's active ids (ids unique within a row)."""
    b, k = active.shape
    return sp.csr_matrix((dz.ravel(), active.ravel().astype(np.int32), np.arange(0, b * k + 1, k, dtype=np.int64)),
                         shape=(b, dim))


def local_factors(plan: dict, state, batch, active: dict, global_batch: int):
    """Forward + backward of one local batch with the NumPy rules; returns (per-example loss, factors).

    factors[layer] = {"x": input (CSR or dense), "dz": (b, k) or (b, dim), "active": (b, k) or None},
    with dz already divided by the global batch size, so rebuilding is a plain sum over workers.
    """
    values, caches = dict(batch.inputs), {}
    out_name = plan["output"]
    layers = plan["layers"]
    for layer in layers:
        name = layer["name"]
        ins = [values[n] for n in layer["inputs"]]
        values[name], caches[name] = NUMPY_RULES["fc"].forward(layer, state.params[name], ins, active.get(name),
                                                               name == out_name)
    out_layer = next(l for l in layers if l["name"] == out_name)
    oc = caches[out_name]
    loss, dz = LOSS_RULES[plan.get("loss", "cross_entropy")](oc["z"], oc.get("active"), batch.labels, out_layer["dim"],
                                                             **loss_options(plan))
    w = np.ones(dz.shape[0], dz.dtype) if batch.weights is None else np.asarray(batch.weights, dz.dtype)
    grads_in = {out_name: dz * (w / global_batch)[:, None]}
    factors = {}
    for layer in reversed(layers):
        name = layer["name"]
        g = grads_in.pop(name, None)
        if g is None:
            continue
        c = caches[name]
        act_ids = c["active"]
        if name == out_name:
            dzl = g                                            # the loss rule's gradient is w.r.t. z already
        else:
            if act_ids is not None:
                g = np.take_along_axis(g, act_ids.astype(np.int64), axis=1)
            dzl = activation_backward(layer["activation"], c["z"], c["act"], g)
        factors[name] = {"x": c["x"], "dz": np.ascontiguousarray(dzl, np.float32), "active": act_ids}
        src = layer["inputs"][0]
        if src in caches and not sp.issparse(c["x"]):         # propagate to an fc input (sparse inputs are leaves)
            W = state.params[name]["W"]
            if act_ids is None:
                dx = dzl @ (W.T if layer.get("layout") == "in_major" else W)
            else:
                rows = W.T if layer.get("layout") == "in_major" else W          # (dim, in) view
                dx = np.asarray(_active_csr(act_ids, dzl, layer["dim"]) @ rows)
            grads_in[src] = dx if src not in grads_in else grads_in[src] + dx
    return loss.astype(np.float32), factors


def factors_nbytes(factors: dict) -> int:
    n = 0
    for f in factors.values():
        x = f["x"]
        n += (x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) if sp.issparse(x) else x.nbytes
        n += f["dz"].nbytes + (0 if f["active"] is None else f["active"].nbytes)
    return int(n)


def rebuild(plan: dict, parts: list[dict]) -> dict[Key, RowGrad]:
    """Every worker's factors -> the global batch's row-sparse gradients (the same on every replica)."""
    out: dict[Key, RowGrad] = {}
    for layer in plan["layers"]:
        name = layer["name"]
        fs = [p[name] for p in parts if name in p]
        if not fs:
            continue
        dim, in_major = layer["dim"], layer.get("layout") == "in_major"
        if fs[0]["active"] is None:
            dZ = np.concatenate([f["dz"] for f in fs])                         # (B, dim)
            cols = None
        else:
            acts = np.concatenate([f["active"] for f in fs])
            cols, inv = np.unique(acts, return_inverse=True)
            S = _active_csr(inv.reshape(acts.shape), np.concatenate([f["dz"] for f in fs]), cols.size)
            dZ = S                                                              # (B, |cols|) sparse
        xs = [f["x"] for f in fs]
        X = sp.vstack(xs, format="csr") if sp.issparse(xs[0]) else np.concatenate(xs)
        bias = np.asarray(dZ.sum(axis=0)).ravel().astype(np.float32)
        if sp.issparse(X):
            feats, inv_f = np.unique(X.indices, return_inverse=True)
            Xc = sp.csr_matrix((X.data, inv_f.astype(np.int32), X.indptr), shape=(X.shape[0], feats.size))
            block = Xc.T @ dZ                                                   # (|feats|, |cols| or dim)
            block = block.toarray() if sp.issparse(block) else np.asarray(block)
            if in_major:
                out[(name, "W")] = RowGrad(feats.astype(np.int32), _widen(block, cols, dim))
            else:                                                               # out_major over a sparse input
                full = np.zeros((block.shape[1], layer["in_dim"]), np.float32)
                full[:, feats] = block.T
                out[(name, "W")] = RowGrad(None if cols is None else cols.astype(np.int32),
                                           full if cols is not None else full)
        else:
            block = (dZ.T @ X) if not sp.issparse(dZ) else np.asarray(dZ.T @ X)   # (|cols| or dim, in)
            block = np.asarray(block, np.float32)
            if in_major:
                out[(name, "W")] = RowGrad(None, _widen(block.T, cols, dim))
            else:
                out[(name, "W")] = RowGrad(None if cols is None else cols.astype(np.int32), np.ascontiguousarray(block))
        if "b" in _param_names(layer):
            out[(name, "b")] = RowGrad(None if cols is None else cols.astype(np.int32), bias) if cols is not None \
                else RowGrad(None, bias)
    return out


def _widen(block: np.ndarray, cols, dim: int) -> np.ndarray:
    """Columns `cols` of a (rows, |cols|) block placed into full rows of width dim."""
    block = np.asarray(block, np.float32)
    if cols is None:
        return np.ascontiguousarray(block)
    full = np.zeros((block.shape[0], dim), np.float32)
    full[:, cols] = block
    return full


def _param_names(layer: dict) -> tuple[str, ...]:
    return ("W", "b") if layer.get("bias", True) else ("W",)
