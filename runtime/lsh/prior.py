"""Sparse inference: what fills an output's active set past the bucket candidates.

An inference lookup returns each row's candidates (the contents of its L probed buckets, most
collisions first) and BOLT fills the rest of the `active` slots with uniformly random neurons. This
module is the opt-in alternative, a plan hash entry `"frequent_fill": true`: the slots past the
candidates hold the most frequent training labels (the output's `label_count`, descending; ties by id)
that are not already candidates; the neurons scored per example stay exactly `active`. It is off by
default because it was measured both ways on validation data (docs/results.md, 'Sparse inference
fill'): +0.08 P@1 on a 20ng_nextword sample (12.11 vs 12.03), but -19.5 on the SYNTHETIC 100k-label
problem (21.24 vs 40.78), where frequent labels with large logits crowd out the candidates the hash
found. Deterministic, so both backends rank the same set.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.runtime.train.metrics import hits


def frequency_order(label_count: np.ndarray | None) -> np.ndarray | None:
    """Label ids by descending training count (ties by id); None before any label was counted."""
    if label_count is None or not np.any(label_count):
        return None
    return np.argsort(-np.asarray(label_count, dtype=np.float64), kind="stable").astype(np.int32)


def candidate_counts(tables: np.ndarray, buckets: np.ndarray, active: int) -> np.ndarray:
    """(B,) the number of distinct neurons in each row's probed buckets, at most `active`: how many of
    the selection's leading slots are bucket candidates (the rest were filled)."""
    B = buckets.shape[0]
    cand = tables[np.arange(tables.shape[0])[None, :], buckets].reshape(B, -1)
    s = np.sort(cand, axis=1)
    distinct = (s >= 0) & np.concatenate([np.ones((B, 1), bool), s[:, 1:] != s[:, :-1]], axis=1)
    return np.minimum(distinct.sum(axis=1), active)


def fill_with_frequent(ids: np.ndarray, n_cand: np.ndarray, order: np.ndarray) -> np.ndarray:
    """`ids` (B, K) with the slots past each row's first n_cand[b] replaced by the first labels of
    `order` that are not among those candidates (see the module docstring)."""
    B, K = ids.shape
    n = np.minimum(np.asarray(n_cand, dtype=np.int64), K)
    if B == 0 or bool(np.all(n >= K)):
        return ids
    first = order[:K]
    col = np.arange(K)[None, :]
    keep = col < n[:, None]
    rows = np.repeat(np.arange(B), n)
    cands = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, ids[keep].astype(np.int64))),
                          shape=(B, max(int(order.size), int(ids.max(initial=0)) + 1)))
    fresh = ~hits(np.broadcast_to(first, (B, K)), cands)
    take = fresh & (np.cumsum(fresh, axis=1) <= (K - n)[:, None])
    out = ids.copy()
    out[~keep] = np.broadcast_to(first, (B, K))[take]
    return out
