"""Sparse inference fill (runtime/lsh/prior.py): with the plan's opt-in `frequent_fill`, the slots past
the bucket candidates hold the most frequent training labels, by hand on a small case, and the
interpreter and the native backend (1 and 2 threads) rank the same; without it, BOLT's random fill."""
import numpy as np
import pytest

import boltc
from boltc.runtime.lsh.prior import candidate_counts, fill_with_frequent, frequency_order
from tests.runtime_models import tiny_source


def test_fill_by_hand():
    order = frequency_order(np.array([0, 5, 9, 5, 1, 0], np.float32))
    assert order.tolist()[:4] == [2, 1, 3, 4]                         # descending count, ties by id
    ids = np.array([[3, 0, 7, 8], [5, 9, 9, 9], [2, 1, 3, 4]], np.int32)
    got = fill_with_frequent(ids, np.array([2, 0, 4]), order)
    # row 0 keeps candidates 3, 0 and takes 2, 1 (3 is already there); row 1 takes the first four
    np.testing.assert_array_equal(got, [[3, 0, 2, 1], [2, 1, 3, 4], [2, 1, 3, 4]])


def test_candidate_counts_by_hand():
    tables = np.array([[[1, 2, -1], [4, -1, -1]], [[2, 3, -1], [5, 5, 6]]], np.int32)   # L=2, 2 buckets
    buckets = np.array([[0, 0], [1, 1], [1, 0]])
    np.testing.assert_array_equal(candidate_counts(tables.reshape(2, 2, 3), buckets, 10), [3, 3, 3])
    np.testing.assert_array_equal(candidate_counts(tables, buckets, 2), [2, 2, 2])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    m = boltc.compile(tiny_source(epochs=2), backend="numpy")
    m.fit(progress=False)
    path = tmp_path_factory.mktemp("fill") / "tiny.boltc"
    m.save(path)
    return path, m.dataset(m.data_source("test"))


def test_sparse_inference_scores_the_frequent_labels_and_backends_agree(saved):
    path, test = saved
    X = test.inputs["features"]
    got = {}
    for backend, threads in (("numpy", 1), ("native", 1), ("native", 2)):
        m = boltc.load(path, backend=backend, threads=threads)
        m.plan["layers"][-1]["hash"]["frequent_fill"] = True
        out = m.executor.forward(test.take(np.arange(X.shape[0])), mode="sparse")["scores"]
        got[(backend, threads)] = (out[0], m.predict(X, top_k=3, sparse=True))
    ids_np = got[("numpy", 1)][0]
    for key in (("native", 1), ("native", 2)):
        np.testing.assert_array_equal(got[key][0], ids_np)
        np.testing.assert_array_equal(got[key][1][0], got[("numpy", 1)][1][0])
    # the oracle: BOLT's selection (the spec with the fill switched off), then the fill by hand
    plain = boltc.load(path, backend="numpy")
    plain.plan["layers"][-1]["hash"]["frequent_fill"] = False
    b = test.take(np.arange(X.shape[0]))
    ids_plain = plain.executor.forward(b, mode="sparse")["scores"][0]
    index = plain.state.lsh["scores"]
    n = candidate_counts(index.tables, index.hash(plain.executor.forward(b, mode="dense")["hidden"]),
                         ids_plain.shape[1])
    assert (n < ids_plain.shape[1]).any()                              # some slots were filled
    order = frequency_order(plain.state.params["scores"]["label_count"])
    np.testing.assert_array_equal(ids_np, fill_with_frequent(ids_plain, n, order))


def test_the_random_fill_is_the_default(saved):
    """A saved model's plan without the flag ranks exactly as with `frequent_fill: false`."""
    path, test = saved
    b = test.take(np.arange(test.inputs["features"].shape[0]))
    default = boltc.load(path, backend="numpy")
    off = boltc.load(path, backend="numpy")
    off.plan["layers"][-1]["hash"]["frequent_fill"] = False
    on = boltc.load(path, backend="numpy")
    on.plan["layers"][-1]["hash"]["frequent_fill"] = True
    ids = {k: m.executor.forward(b, mode="sparse")["scores"][0] for k, m in
           (("default", default), ("off", off), ("on", on))}
    np.testing.assert_array_equal(ids["default"], ids["off"])
    assert not np.array_equal(ids["default"], ids["on"])
