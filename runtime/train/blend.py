"""`blend ridge(weight=W, l2=L)`: a model's ranking scores are its network's output plus W times a ridge
regression from the model's input to its target.

Why: on small multi-label data a closed-form ridge regression (one-vs-rest least squares on unit-length
rows) is as accurate as a network many times its cost (bibtex: 65.45 P@1 against about 63), and the two
err differently: on 3 folds of bibtex's training rows the sum of the network's softmax output and the
ridge scores ranked 1.8 points of P@1 above the network and 0.8 above the ridge alone. On delicious the
same sum ranked below the network at every weight, so the weight is a value `boltc tune` chooses on
validation, 0 (off) included.

What: W_r = argmin |X W_r - Y|^2 + l2 |W_r|^2 over the training rows (not the validation share), X the
model's one input as its first layer sees it (normalised, TF-IDF weighted), Y the 0/1 target matrix.
Solved in float64: by the normal equations when the input is at most DIRECT_MAX_DIM wide, else by
conjugate gradients (every target column at once), on X^T X + l2 I or, with fewer rows than input
width, on the dual X X^T + l2 I; neither forms a d x d matrix (hashed text inputs are 2^16..2^20 wide). The scores are the network's output activation
(softmax probabilities; under sparse inference its active neurons, the others count 0) plus
W * x W_r; top-k is taken over all classes. Labels never seen in training keep -inf, as without blend.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltError
from boltc.runtime.exec.topk import add_output, mask_never_seen, top_k_of

DIRECT_MAX_DIM = 4096
MAX_ENTRIES = 1 << 26           # input width x classes: 256 MB of float32 weights
CG_TOL = 1e-3                   # relative residual of every column: enough to rank by (a tighter one
                                # tripled the solve on 20newsgroups' hashed bigrams)
CG_MAX_ITER = 500


def settings(plan: dict) -> dict | None:
    """The train block's blend, or None when absent or of weight 0."""
    b = (plan.get("train") or {}).get("blend")
    return b if b and float(b.get("weight", 0.0)) > 0.0 else None


def input_name(plan: dict) -> str:
    inputs = plan.get("inputs") or []
    if len(inputs) != 1:
        raise BoltError(f"blend ridge(...) needs a model with one input; this one has {len(inputs)}")
    return inputs[0]["name"]


def fit_ridge(x, y, l2: float) -> np.ndarray:
    """(d, classes) float32 ridge weights of rows `x` (CSR or array) on 0/1 targets `y` (CSR)."""
    n, d = x.shape
    classes = y.shape[1]
    if d * classes > MAX_ENTRIES:
        raise BoltError(f"blend ridge(...) would hold {d} x {classes} weights (more than {MAX_ENTRIES:,}): "
                        "use a narrower input or leave blend out")
    xs = sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else np.asarray(x, np.float64)
    yd = sp.csr_matrix(y, dtype=np.float64).toarray()
    if d <= DIRECT_MAX_DIM or n >= d:
        b = np.asarray(xs.T @ yd)
    if d <= DIRECT_MAX_DIM:
        g = xs.T @ xs
        g = g.toarray() if sp.issparse(g) else np.asarray(g)
        g[np.diag_indices(d)] += l2
        return np.linalg.solve(g, b).astype(np.float32)
    if n < d:
        # the dual: W_r = X^T A with (X X^T + l2 I) A = Y, whose iterates are n x classes, not d x classes
        # (hashed text: 11,314 posts against 2^20 buckets)
        a = _cg(lambda p: xs @ (xs.T @ p) + l2 * p, yd)
        return np.asarray(xs.T @ a).astype(np.float32)
    return _cg(lambda p: xs.T @ (xs @ p) + l2 * p, b).astype(np.float32)


def _cg(apply, b: np.ndarray) -> np.ndarray:
    """Conjugate gradients on apply(W) = B (a symmetric positive definite operator), every column at once
    (each with its own step sizes)."""
    w = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rs = (r * r).sum(0)
    stop = (CG_TOL ** 2) * np.maximum(rs, 1e-300)
    for _ in range(CG_MAX_ITER):
        ap = apply(p)
        alpha = rs / np.maximum((p * ap).sum(0), 1e-300)
        w += alpha * p
        r -= alpha * ap
        rs_new = (r * r).sum(0)
        if np.all(rs_new <= stop):
            break
        p = r + (rs_new / np.maximum(rs, 1e-300)) * p
        rs = rs_new
    return w


def linear_scores(x, w: np.ndarray) -> np.ndarray:
    """(B, classes) float32: x W_r."""
    out = x @ w if sp.issparse(x) else np.asarray(x, np.float32) @ w
    return np.asarray(out, np.float32)


def scores(executor, batch, sparse: bool, blend: dict, w: np.ndarray) -> np.ndarray:
    """(B, classes) float32: the network's output + weight * ridge scores, labels never seen -inf."""
    plan = executor.plan
    out = executor.forward(batch, mode="sparse" if sparse else "dense")[plan["output"]]
    total = add_output(float(blend["weight"]) * linear_scores(batch.inputs[input_name(plan)], w), out)
    return mask_never_seen(total, executor.state.params.get(plan["output"], {}).get("label_count"))


def predict(executor, batch, top_k: int, sparse: bool, blend: dict, w: np.ndarray):
    """(ids, scores) as executor.predict, ranked by `scores`."""
    return top_k_of(scores(executor, batch, sparse, blend, w), top_k)
