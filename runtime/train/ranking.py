"""Top-k prediction with the input row's own ids left out of the ranking (`exclude_seen`).

For recommendation data the features and the labels are the same items (a user's history in, the next
items out): an item the row already holds is a trivially "correct" but useless prediction. With
`exclude_seen`, a label whose id is one of the row's feature ids is never ranked.

How (decision): the executor is asked for the top k + m, where m is the largest number of the batch's
feature ids that are valid label ids; dropping a row's own ids from that list leaves at least k, and
they are exactly the top k of the remaining labels (no label outside the top k + m can beat one inside).
So both backends, and dense and sparse inference, rank exactly as without the option apart from the
removed ids, with no change to the kernels.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltError
from boltc.runtime.train import blend
from boltc.runtime.train.metrics import hits


def seen_input(plan: dict) -> str:
    """The input whose feature ids are compared with label ids; an error when the model has none."""
    inputs = plan.get("inputs") or []
    target = plan.get("target") or {}
    if target.get("kind") == "binary":
        raise BoltError("exclude_seen (--exclude-seen) ranks labels; a binary target has none to leave out")
    sparse = [i for i in inputs if i.get("kind") == "sparse"]
    if len(inputs) != 1 or len(sparse) != 1:
        raise BoltError("exclude_seen (--exclude-seen) needs a model with exactly one sparse(...) input whose feature ids "
                        "are label ids (hashed text or categorical features are not items)")
    return sparse[0]["name"]


def seen_ids(batch, plan: dict) -> sp.csr_matrix:
    """(B, classes) 0/1 CSR: the row's feature ids that are also label ids."""
    classes = int(plan["target"]["classes"])
    x = sp.csr_matrix(batch.inputs[seen_input(plan)])
    x = x[:, :min(classes, x.shape[1])]
    x.eliminate_zeros()
    out = sp.csr_matrix((np.ones(x.nnz, np.float32), x.indices, x.indptr), shape=(x.shape[0], classes))
    out.sort_indices()
    return out


def drop_seen(ids: np.ndarray, scores: np.ndarray, seen: sp.csr_matrix, top_k: int):
    """The first `top_k` of each row's ranking after removing its seen ids (order kept; -1/-inf pad)."""
    ids, scores = np.asarray(ids), np.asarray(scores)
    if ids.shape[1] < top_k:                        # fewer labels than asked for: pad first
        pad = ((0, 0), (0, top_k - ids.shape[1]))
        ids, scores = np.pad(ids, pad, constant_values=-1), np.pad(scores, pad, constant_values=-np.inf)
    drop = hits(ids, seen) | (ids < 0)
    order = np.argsort(drop, axis=1, kind="stable")[:, :top_k]
    kept_ids = np.take_along_axis(ids, order, axis=1)
    kept_sc = np.take_along_axis(scores, order, axis=1)
    pad = np.take_along_axis(drop, order, axis=1)
    return (np.where(pad, -1, kept_ids).astype(np.int32),
            np.where(pad, -np.inf, kept_sc).astype(np.float32))


def _ranked(executor, batch, top_k: int, sparse: bool, blended: bool = True):
    """executor.predict, or the blended ranking when the model blends in its ridge scores (blend.py) and
    `blended` (False: the network's own ranking, what early stopping watches)."""
    settings = blend.settings(executor.plan) if blended else None
    w = getattr(executor.state, "blend", {}).get("ridge") if settings else None
    if w is None:
        return executor.predict(batch, top_k, sparse=sparse)
    return blend.predict(executor, batch, top_k, sparse, settings, w)


def predict(executor, batch, top_k: int, sparse: bool = False, exclude_seen: bool = False, plan=None,
            blended: bool = True):
    """executor.predict (blended where the model says so, unless `blended=False`), optionally with each
    row's own ids left out of the ranking."""
    if not exclude_seen:
        return _ranked(executor, batch, top_k, sparse, blended)
    plan = plan if plan is not None else executor.plan
    seen = seen_ids(batch, plan)
    extra = int(np.diff(seen.indptr).max(initial=0))
    k = min(int(top_k) + extra, int(plan["target"]["classes"]))
    ids, scores = _ranked(executor, batch, max(k, 1), sparse, blended)
    return drop_seen(ids, scores, seen, int(top_k))
