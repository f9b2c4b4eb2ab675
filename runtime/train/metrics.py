"""Ranking metrics for (multi-label) classification, computed from top-k predictions.

Definitions (as on the Extreme Classification Repository, in percent):
- precision@k = mean over examples of |top_k ∩ labels| / k
- recall@k    = mean over examples with at least one label of |top_k ∩ labels| / |labels|
- accuracy    = fraction of examples whose top-1 prediction is one of its labels (= precision@1);
  for a binary target (classes == 1) it is the fraction where (score >= 0.5) equals the label.
Examples without labels count as zero hits in precision (as the XC tools do) and are left out of recall.
"""
from __future__ import annotations

import re

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltError

_NAME = re.compile(r"^(precision|recall|p|r)@(\d+)$")


def parse_metric(name: str) -> tuple[str, int]:
    """'precision@5' -> ('precision', 5); 'accuracy' -> ('accuracy', 1)."""
    name = str(name).strip().lower()
    if name in ("accuracy", "acc"):
        return "accuracy", 1
    m = _NAME.match(name)
    if not m:
        raise BoltError(f"unknown metric {name!r} (use precision@k, recall@k or accuracy)")
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
        elif kind == "precision":
            v = precision_at_k(top_ids, labels, k)
        else:
            v = recall_at_k(top_ids, labels, k)
        out[str(name) if kind != "accuracy" else "accuracy"] = 100.0 * v
    return out


class MetricAccumulator:
    """Metrics over a stream of batches: keeps per-example hit counts, not predictions."""

    def __init__(self, names, binary: bool = False):
        self.names = [str(n) for n in names]
        self.parsed = [parse_metric(n) for n in self.names]
        self.binary = binary
        self.kmax = max([k for _, k in self.parsed] + [1])
        self.n = 0
        self.sums = {n: 0.0 for n in self.names}
        self.recall_n = 0

    def add(self, top_ids: np.ndarray, labels: sp.csr_matrix, scores: np.ndarray | None = None) -> None:
        labels = sp.csr_matrix(labels)
        B = labels.shape[0]
        h = hits(np.asarray(top_ids)[:, :self.kmax], labels) if not self.binary else None
        n_lab = np.diff(labels.indptr)
        for name, (kind, k) in zip(self.names, self.parsed):
            if kind == "accuracy":
                self.sums[name] += accuracy(top_ids, labels, scores, self.binary) * B
            elif kind == "precision":
                self.sums[name] += float(h[:, :k].sum()) / k
            else:
                has = n_lab > 0
                self.sums[name] += float((h[:, :k].sum(axis=1)[has] / n_lab[has]).sum())
        self.recall_n += int((n_lab > 0).sum())
        self.n += B

    def result(self) -> dict[str, float]:
        out = {}
        for name, (kind, _) in zip(self.names, self.parsed):
            denom = self.recall_n if kind == "recall" else self.n
            out["accuracy" if kind == "accuracy" else name] = 100.0 * self.sums[name] / denom if denom else 0.0
        return out
