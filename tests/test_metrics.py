"""Metrics against values computed by hand."""
import numpy as np
import pytest
import scipy.sparse as sp

from boltc.errors import BoltError
from boltc.runtime.train import metrics


def labels(rows, classes=10):
    r = [i for i, ls in enumerate(rows) for _ in ls]
    c = [l for ls in rows for l in ls]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), classes))


Y = labels([[1, 2], [3], [0, 4, 5], []])
TOP = np.array([[2, 7, 1, 9, 8],     # hits at 1 and 3
                [0, 3, 4, 5, 6],     # hit at 2
                [5, 4, 0, 1, 2],     # hits at 1, 2, 3
                [1, 2, 3, 4, 5]])    # no labels: zero hits


def test_precision_by_hand():
    assert metrics.precision_at_k(TOP, Y, 1) == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert metrics.precision_at_k(TOP, Y, 3) == pytest.approx((2 / 3 + 1 / 3 + 3 / 3 + 0) / 4)
    assert metrics.precision_at_k(TOP, Y, 5) == pytest.approx((2 / 5 + 1 / 5 + 3 / 5 + 0) / 4)


def test_recall_by_hand_skips_rows_without_labels():
    assert metrics.recall_at_k(TOP, Y, 1) == pytest.approx((1 / 2 + 0 + 1 / 3) / 3)
    assert metrics.recall_at_k(TOP, Y, 5) == pytest.approx((2 / 2 + 1 / 1 + 3 / 3) / 3)


def test_compute_in_percent_and_accumulator_agrees():
    names = ["precision@1", "precision@3", "recall@5", "accuracy"]
    full = metrics.compute(names, TOP, Y)
    assert full["precision@1"] == pytest.approx(50.0)
    assert full["accuracy"] == pytest.approx(50.0)
    acc = metrics.MetricAccumulator(names)
    acc.add(TOP[:3], Y[:3])
    acc.add(TOP[3:], Y[3:])
    for k, v in acc.result().items():
        assert v == pytest.approx(full[k])


def test_binary_accuracy():
    y = labels([[0], [], [0], []], classes=1)
    scores = np.array([[0.9], [0.2], [0.4], [0.7]], np.float32)
    assert metrics.accuracy(None, y, scores, binary=True) == pytest.approx(0.5)


def test_unknown_metric_is_a_bolt_error():
    with pytest.raises(BoltError):
        metrics.parse_metric("precision@")
    assert metrics.parse_metric("P@5") == ("precision", 5)
