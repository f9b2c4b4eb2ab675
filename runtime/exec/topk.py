"""The top k of a score matrix, best first: the interpreter's predict and the blended ranking (the native
backend has a kernel of its own for it), and the mask of labels never seen in training they share."""
from __future__ import annotations

import numpy as np


def mask_never_seen(scores: np.ndarray, counts: np.ndarray | None, ids: np.ndarray | None = None) -> np.ndarray:
    """`scores` with -inf for neurons never seen as a training label (`label_count` 0; `ids`: the columns'
    neuron ids under sparse inference, else every neuron in order). No counts, or all zero: unchanged."""
    if counts is None or not counts.any():
        return scores
    unseen = (counts == 0) if ids is None else (counts[ids] == 0)
    return np.where(unseen, -np.inf, scores).astype(scores.dtype)


def add_output(total: np.ndarray, out) -> np.ndarray:
    """`total` (B, classes) plus a layer's output: a (B, classes) activation, or under sparse inference
    (ids, values) of its active neurons, the others counting 0 (the blend's and the ensemble's mean's
    convention). In place; returns `total`."""
    if isinstance(out, tuple):
        ids, vals = out
        rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1]).reshape(ids.shape)
        ok = ids >= 0
        total[rows[ok], ids[ok]] += np.asarray(vals, np.float32)[ok]
    else:
        total += np.asarray(out, np.float32)
    return total


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
