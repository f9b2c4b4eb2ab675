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


def test_ndcg_by_hand_skips_rows_without_labels():
    # row 0: hits at ranks 1 and 3, two labels -> (1 + 1/log2 4) / (1 + 1/log2 3)
    # row 1: hit at rank 2, one label -> (1/log2 3) / 1; row 2: hits at 1, 2, 3, three labels -> 1
    r0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    r1 = 1 / np.log2(3)
    assert metrics.ndcg_at_k(TOP, Y, 5) == pytest.approx((r0 + r1 + 1.0) / 3)
    # at k=1 the ideal DCG is 1 for every labelled row: nDCG@1 = hits at rank 1 / labelled rows
    assert metrics.ndcg_at_k(TOP, Y, 1) == pytest.approx(2 / 3)


def test_macro_f1_by_hand():
    # truth 0,0,1,2 ; top-1 0,1,1,1 -> class 0: tp1 fn1 -> 2/3; class 1: tp1 fp2 -> 2/4; class 2: fn1 -> 0
    y = labels([[0], [0], [1], [2]], classes=4)
    top = np.array([[0], [1], [1], [1]])
    assert metrics.macro_f1(top, y) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    names = ["macro_f1", "ndcg@1"]
    acc = metrics.MetricAccumulator(names, confusion=True)
    acc.add(top[:1], y[:1])
    acc.add(top[1:], y[1:])
    res = acc.result()
    assert res["macro_f1"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 3)
    assert res == pytest.approx(metrics.compute(names, top, y))
    assert sorted((r["true"], r["predicted"], r["count"]) for r in acc.confusion.rows()) == \
        [(0, 0, 1), (0, 1, 1), (1, 1, 1), (2, 1, 1)]


def test_binary_macro_f1_by_hand():
    # truth 1,0,1,0 ; predicted (>= 0.5) 1,0,0,1 -> class 1: tp1 fp1 fn1 -> 1/2; class 0: tp1 fp1 fn1 -> 1/2
    y = labels([[0], [], [0], []], classes=1)
    scores = np.array([[0.9], [0.2], [0.4], [0.7]], np.float32)
    assert metrics.macro_f1(None, y, scores, binary=True) == pytest.approx(0.5)
