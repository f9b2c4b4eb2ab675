"""Dataset.take's CSR row gather against scipy's own row indexing (the oracle)."""
import numpy as np
import scipy.sparse as sp

from boltc.runtime.data.dataset import Dataset, take_rows


def test_take_rows_equals_scipy_indexing():
    rng = np.random.default_rng(0)
    d = sp.random(200, 50, density=0.1, dtype=np.float32, random_state=2).toarray()
    d[5] = 0                                                  # an empty row
    m = sp.csr_matrix(d)
    m.indptr = m.indptr.astype(np.int64)                      # the runtime's CSR dtypes
    for rows in (rng.integers(0, 200, 64), np.array([5, 5, 0, 199]), np.zeros(0, np.int64)):
        got, want = take_rows(m, rows), m[rows]
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.toarray(), want.toarray())


def test_dataset_take_gathers_inputs_and_labels():
    X = sp.csr_matrix(np.arange(12, dtype=np.float32).reshape(4, 3))
    Y = sp.csr_matrix(np.eye(4, dtype=np.float32))
    b = Dataset(inputs={"x": X}, labels=Y).take(np.array([2, 0]))
    np.testing.assert_array_equal(b.inputs["x"].toarray(), X.toarray()[[2, 0]])
    np.testing.assert_array_equal(b.labels.toarray(), np.eye(4)[[2, 0]])
