"""Ranking metrics for (multi-label) classification, computed from top-k predictions.

Definitions (as on the Extreme Classification Repository, in percent):
- precision@k = mean over examples of |top_k ∩ labels| / k
- recall@k    = mean over examples with at least one label of |top_k ∩ labels| / |labels|
- accuracy    = fraction of examples whose top-1 prediction is one of its labels (= precision@1);
  for a binary target (classes == 1) it is the fraction where (score >= 0.5) equals the label.
- ndcg@k      = mean over examples with at least one label of DCG@k / ideal DCG@k, where
  DCG@k = sum_{r=1..k} [top_r is a label] / log2(r + 1) and the ideal DCG puts min(k, |labels|) labels
  first (the XC repository's nDCG@k).
- macro_f1    = the mean over classes of F1 = 2 TP / (2 TP + FP + FN) of the top-1 prediction (for a
  binary target, of score >= 0.5), over the classes that occur as a label or as a prediction (as
  scikit-learn's f1_score(average="macro") does); single-label and binary targets only.
Examples without labels count as zero hits in precision (as the XC tools do) and are left out of recall
and nDCG (their ideal DCG is 0).
"""
from __future__ import annotations

import re

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltError

_NAME = re.compile(r"^(precision|recall|ndcg|p|r)@(\d+)$")
METRIC_WORDS = "precision@k, recall@k, ndcg@k, accuracy or macro_f1"


def parse_metric(name: str) -> tuple[str, int]:
    """'precision@5' -> ('precision', 5); 'accuracy' -> ('accuracy', 1); 'macro_f1' -> ('macro_f1', 1)."""
    name = str(name).strip().lower()
    if name in ("accuracy", "acc"):
        return "accuracy", 1
    if name == "macro_f1":
        return "macro_f1", 1
    m = _NAME.match(name)
    if not m or int(m.group(2)) < 1:
        raise BoltError(f"unknown metric {name!r} (use {METRIC_WORDS})")
    kind = {"p": "precision", "r": "recall"}.get(m.group(1), m.group(1))
    return kind, int(m.group(2))


def hits(top_ids: np.ndarray, labels: sp.csr_matrix) -> np.ndarray:
    """(B, k) bool: whether each predicted id is one of the row's labels (vectorised: one search per id)."""
    labels = sp.csr_matrix(labels)
    top_ids = np.asarray(top_ids, dtype=np.int64)
    B, k = top_ids.shape
    if B == 0 or k == 0:
        return np.zeros((B, k), dtype=bool)
    # encode (row, label) pairs as one int64 key and look the predicted pairs up in the sorted key set
    C = max(labels.shape[1], int(top_ids.max(initial=0)) + 1)
    rows = np.repeat(np.arange(B, dtype=np.int64), np.diff(labels.indptr))
    keys = np.sort(rows * C + labels.indices.astype(np.int64))
    q = np.arange(B, dtype=np.int64)[:, None] * C + top_ids
    pos = np.searchsorted(keys, q)
    found = np.zeros(q.shape, dtype=bool)
    inside = pos < keys.size
    found[inside] = keys[pos[inside]] == q[inside]
    return found & (top_ids >= 0)


def precision_at_k(top_ids: np.ndarray, labels: sp.csr_matrix, k: int) -> float:
    h = hits(np.asarray(top_ids)[:, :k], labels)
    return float(h.sum(axis=1).mean() / k) if h.shape[0] else 0.0


def recall_at_k(top_ids: np.ndarray, labels: sp.csr_matrix, k: int) -> float:
    labels = sp.csr_matrix(labels)
    h = hits(np.asarray(top_ids)[:, :k], labels)
    n_lab = np.diff(labels.indptr)
    has = n_lab > 0
    if not has.any():
        return 0.0
    return float((h.sum(axis=1)[has] / n_lab[has]).mean())


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg_sums(h: np.ndarray, n_lab: np.ndarray, k: int) -> tuple[float, int]:
    """(sum of nDCG@k over rows with labels, number of such rows) from a (B, >=k) hit matrix."""
    disc = _discounts(k)
    dcg = h[:, :k].astype(np.float64) @ disc[:h[:, :k].shape[1]]
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(n_lab, k)]
    has = n_lab > 0
    return float((dcg[has] / ideal[has]).sum()), int(has.sum())


def ndcg_at_k(top_ids: np.ndarray, labels: sp.csr_matrix, k: int) -> float:
    labels = sp.csr_matrix(labels)
    s, n = ndcg_sums(hits(np.asarray(top_ids)[:, :k], labels), np.diff(labels.indptr), k)
    return s / n if n else 0.0


def predicted_class(top_ids: np.ndarray, scores: np.ndarray | None, binary: bool) -> np.ndarray:
    """The one predicted class per row: top-1 id, or for a binary target 1 if score >= 0.5 else 0."""
    if binary:
        return (np.asarray(scores)[:, 0] >= 0.5).astype(np.int64)
    return np.asarray(top_ids)[:, 0].astype(np.int64)


def true_class(labels: sp.csr_matrix, binary: bool) -> np.ndarray:
    """The one true class per row (single-label targets): its label id, -1 for a row without one; for
    a binary target 1 if the row is positive else 0."""
    labels = sp.csr_matrix(labels)
    n_lab = np.diff(labels.indptr)
    if binary:
        return (n_lab > 0).astype(np.int64)
    out = np.full(labels.shape[0], -1, dtype=np.int64)
    out[n_lab > 0] = labels.indices[labels.indptr[:-1][n_lab > 0]]
    return out


class Confusion:
    """Counts of (true class, predicted class) pairs, kept sparse (a 37k-class target has few pairs)."""

    def __init__(self):
        self.pairs: dict[tuple[int, int], int] = {}

    def add(self, truth: np.ndarray, pred: np.ndarray) -> None:
        keep = truth >= 0
        pairs, counts = np.unique(np.stack([truth[keep], pred[keep]], axis=1), axis=0, return_counts=True)
        for (t, p), c in zip(pairs.tolist(), counts.tolist()):
            self.pairs[(t, p)] = self.pairs.get((t, p), 0) + c

    def macro_f1(self) -> float:
        tp, fp, fn = {}, {}, {}
        for (t, p), c in self.pairs.items():
            if t == p:
                tp[t] = tp.get(t, 0) + c
            else:
                fn[t] = fn.get(t, 0) + c
                if p >= 0:
                    fp[p] = fp.get(p, 0) + c
        classes = set(tp) | set(fp) | set(fn)
        if not classes:
            return 0.0
        f1 = [2 * tp.get(c, 0) / (2 * tp.get(c, 0) + fp.get(c, 0) + fn.get(c, 0)) for c in classes]
        return float(np.mean(f1))

    def rows(self) -> list[dict]:
        """[{"true": t, "predicted": p, "count": n}], most frequent first (ties by ids)."""
        return [{"true": t, "predicted": p, "count": c}
                for (t, p), c in sorted(self.pairs.items(), key=lambda kv: (-kv[1], kv[0]))]


def macro_f1(top_ids: np.ndarray, labels: sp.csr_matrix, scores: np.ndarray | None = None,
             binary: bool = False) -> float:
    conf = Confusion()
    conf.add(true_class(labels, binary), predicted_class(top_ids, scores, binary))
    return conf.macro_f1()


def accuracy(top_ids: np.ndarray, labels: sp.csr_matrix, scores: np.ndarray | None = None,
             binary: bool = False) -> float:
    labels = sp.csr_matrix(labels)
    if binary:
        truth = np.diff(labels.indptr) > 0
        pred = np.asarray(scores)[:, 0] >= 0.5
        return float((truth == pred).mean()) if truth.size else 0.0
    return precision_at_k(top_ids, labels, 1)


def compute(names, top_ids: np.ndarray, labels: sp.csr_matrix, scores: np.ndarray | None = None,
            binary: bool = False) -> dict[str, float]:
    """{metric name: value in percent} for each requested metric."""
    out = {}
    for name in names:
        kind, k = parse_metric(name)
        if kind == "accuracy":
            v = accuracy(top_ids, labels, scores, binary)
        elif kind == "macro_f1":
            v = macro_f1(top_ids, labels, scores, binary)
        elif kind == "precision":
            v = precision_at_k(top_ids, labels, k)
        elif kind == "ndcg":
            v = ndcg_at_k(top_ids, labels, k)
        else:
            v = recall_at_k(top_ids, labels, k)
        out["accuracy" if kind == "accuracy" else str(name)] = 100.0 * v
    return out


class MetricAccumulator:
    """Metrics over a stream of batches: keeps per-example hit counts, not predictions."""

    def __init__(self, names, binary: bool = False, confusion: bool = False):
        self.names = [str(n) for n in names]
        self.parsed = [parse_metric(n) for n in self.names]
        self.binary = binary
        self.kmax = max([k for _, k in self.parsed] + [1])
        self.n = 0
        self.sums = {n: 0.0 for n in self.names}
        self.recall_n = 0
        # the (true, predicted) counts behind macro_f1 and `boltc eval --confusion`
        self.confusion = Confusion() if confusion or any(k == "macro_f1" for k, _ in self.parsed) else None

    def add(self, top_ids: np.ndarray, labels: sp.csr_matrix, scores: np.ndarray | None = None) -> None:
        labels = sp.csr_matrix(labels)
        B = labels.shape[0]
        h = hits(np.asarray(top_ids)[:, :self.kmax], labels) if not self.binary else None
        n_lab = np.diff(labels.indptr)
        for name, (kind, k) in zip(self.names, self.parsed):
            if kind == "accuracy":
                self.sums[name] += accuracy(top_ids, labels, scores, self.binary) * B
            elif kind == "macro_f1":
                pass                                  # from the confusion counts, at the end
            elif kind == "precision":
                self.sums[name] += float(h[:, :k].sum()) / k
            elif kind == "ndcg":
                self.sums[name] += ndcg_sums(h, n_lab, k)[0]
            else:
                has = n_lab > 0
                self.sums[name] += float((h[:, :k].sum(axis=1)[has] / n_lab[has]).sum())
        if self.confusion is not None:
            self.confusion.add(true_class(labels, self.binary), predicted_class(top_ids, scores, self.binary))
        self.recall_n += int((n_lab > 0).sum())
        self.n += B

    def result(self) -> dict[str, float]:
        out = {}
        for name, (kind, _) in zip(self.names, self.parsed):
            if kind == "macro_f1":
                out[name] = 100.0 * self.confusion.macro_f1()
                continue
            denom = self.recall_n if kind in ("recall", "ndcg") else self.n
            out["accuracy" if kind == "accuracy" else name] = 100.0 * self.sums[name] / denom if denom else 0.0
        return out
