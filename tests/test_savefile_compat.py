"""Saved models of the current file format keep loading and predicting the same.

tests/data/tiny_format2.boltc was written by boltc at commit ca1dc18 (model format version 2, native
format 2; tests/runtime_models.tiny_source trained 2 epochs), and tiny_format2_expected.npz holds
what that code predicted for 32 fixed rows on each backend: the oracle is the older code's own output."""
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import boltc

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def expected():
    e = np.load(DATA / "tiny_format2_expected.npz")
    X = sp.csr_matrix((e["X_data"], e["X_indices"], e["X_indptr"]), shape=(e["X_indptr"].size - 1, 300))
    return X, e


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_a_model_saved_by_the_older_code_predicts_the_same(expected, backend, mode):
    X, e = expected
    m = boltc.load(DATA / "tiny_format2.boltc", backend=backend)
    ids, scores = m.predict(X, top_k=3, sparse=(mode == "sparse"))
    np.testing.assert_array_equal(np.asarray(ids), e[f"ids_{backend}_{mode}"])
    np.testing.assert_allclose(np.asarray(scores), e[f"scores_{backend}_{mode}"], rtol=1e-5, atol=1e-6)
