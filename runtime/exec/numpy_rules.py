"""NUMPY_RULES: the forward and backward rule of every op, keyed by op (the executable spec), built from
the op declarations (boltc/ops/<op>.py `forward`, `backward`); and the loss rules.

Each rule is `OpRule(forward, backward)`:
    forward(layer, params, inputs, active, as_pairs, ctx) -> (value, cache)
    backward(layer, params, cache, grad, wrt_pre=False, ctx) -> (input_grads, param_grads)

- `ctx` is the call's RunContext (boltc/ops/base.py): mode (train / dense / sparse), the step's seed
  (the only source of randomness a rule may use) and the step number.

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

from boltc.ops import OPS
from boltc.ops.numeric import ParamGrad, activate, activation_backward, sigmoid, softmax  # noqa: F401  (the spec's helpers, here too)
from boltc.ops.numeric import loss_options, smoothing_constants  # noqa: F401  (loss_options: for the executors)


@dataclass(frozen=True)
class OpRule:
    forward: Callable
    backward: Callable


NUMPY_RULES: dict[str, OpRule] = {name: OpRule(op.forward, op.backward) for name, op in OPS.items()}

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


def softmax_cross_entropy(z, active, labels, dim, smoothing: float = 0.0):
    """p = softmax(z) over the given columns; target t_j = 1/|labels_b| on the example's labels present
    in the columns (a label cut from the active set contributes nothing); loss = -sum_j t_j log p_j;
    dz = (sum_j t_j) p - t (exact also when some labels were cut). An example without labels: 0, 0.
    Label smoothing e (train block `label_smoothing`): t_j <- t_j (1 - e) + e / K on an example with
    labels, K the number of columns (its active set, or every neuron), each product and sum rounded to
    float32 in that order, as the native kernel (lower/fc.py softmax_ce) computes it."""
    mask = label_mask(labels, active, dim)
    n_labels = np.diff(sp.csr_matrix(labels).indptr).astype(z.dtype)
    t = mask * (np.where(n_labels > 0, 1.0 / np.maximum(n_labels, 1), 0).astype(z.dtype)[:, None])
    if smoothing:
        keep, spread = smoothing_constants(smoothing, z.shape[1])
        t = (t * keep + np.where(n_labels > 0, spread, np.float32(0))[:, None]).astype(z.dtype)
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
    return loss, sigmoid(z) - y


LOSS_RULES = {
    "cross_entropy": softmax_cross_entropy,
    "binary_cross_entropy": sigmoid_binary_cross_entropy,
}
