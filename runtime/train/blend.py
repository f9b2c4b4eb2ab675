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
conjugate gradients on X^T X + l2 I (one run per target column, vectorised), which never forms a
d x d matrix (hashed text inputs are 2^16..2^20 wide). The scores are the network's output activation
(softmax probabilities; under sparse inference its active neurons, the others count 0) plus
W * x W_r; top-k is taken over all classes. Labels never seen in training keep -inf, as without blend.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltError

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
    b = np.asarray((xs.T @ sp.csr_matrix(y, dtype=np.float64)).todense()) if sp.issparse(xs) \
        else xs.T @ sp.csr_matrix(y, dtype=np.float64).toarray()
    if d <= DIRECT_MAX_DIM:
        g = xs.T @ xs
        g = g.toarray() if sp.issparse(g) else np.asarray(g)
        g[np.diag_indices(d)] += l2
        return np.linalg.solve(g, b).astype(np.float32)
    return _cg(xs, b, l2).astype(np.float32)


def _cg(xs, b: np.ndarray, l2: float) -> np.ndarray:
    """Conjugate gradients on (X^T X + l2 I) W = B, every column at once (each its own step sizes)."""
    w = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rs = (r * r).sum(0)
    stop = (CG_TOL ** 2) * np.maximum(rs, 1e-300)
    for _ in range(CG_MAX_ITER):
        ap = xs.T @ (xs @ p) + l2 * p
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


def predict(executor, batch, top_k: int, sparse: bool, blend: dict, w: np.ndarray):
    """(ids, scores) as executor.predict, ranked by the network's output + weight * ridge scores."""
    plan = executor.plan
    out = executor.forward(batch, mode="sparse" if sparse else "dense")[plan["output"]]
    total = float(blend["weight"]) * linear_scores(batch.inputs[input_name(plan)], w)
    if isinstance(out, tuple):                 # sparse inference: (ids, values) of the active neurons
        ids, vals = out
        rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1]).reshape(ids.shape)
        ok = ids >= 0
        total[rows[ok], ids[ok]] += np.asarray(vals, np.float32)[ok]
    else:
        total += np.asarray(out, np.float32)
    counts = executor.state.params.get(plan["output"], {}).get("label_count")
    if counts is not None and counts.any():
        total[:, counts == 0] = -np.inf
    return top_k_of(total, top_k)


def top_k_of(scores: np.ndarray, top_k: int):
    """(ids (B, k) int32, scores (B, k) float32), best first; -1 / -inf pad past the classes."""
    b, n = scores.shape
    k = min(int(top_k), n)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (b, 1))
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    top = np.take_along_axis(top, order, axis=1)
    if k < top_k:
        ids = np.pad(ids, ((0, 0), (0, top_k - k)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, top_k - k)), constant_values=-np.inf)
    return ids.astype(np.int32), top.astype(np.float32)
