"""`sparse(dim, keep=range(a, b))`: only feature ids a..b-1 reach the model. Checked against hand-computed
rows, against the same model trained on a file with the other features removed by hand (the oracle:
identical weights and predictions, native backend), through a saved model, and for its errors."""
import numpy as np
import pytest
import scipy.sparse as sp

import boltc
from boltc.commands.check import check_source
from boltc.errors import BoltError, BoltErrorGroup
from boltc.frontend import parse
from boltc.frontend.format import format_source
from boltc.runtime.data.dataset import keep_features


def _model(keep: str = "", normalize: str = "", dim: int = 40) -> str:
    opts = "".join(f", {o}" for o in (keep, normalize) if o)
    return f"""model k {{
  input  x: sparse({dim}{opts})
  target y: label(4)
  h = fc(x, 16, relu)
  s = fc(h, 4, softmax)
  loss cross_entropy(s, y)
  metrics precision@1
  train {{
    optimizer adam(lr=0.01)
    batch 8
    epochs 3
    holdout 0.0
  }}
}}
"""


def _data(rows=64, dim=40, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(rows, dim, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    X.data[:] = rng.uniform(0.5, 2.0, X.nnz).astype(np.float32)
    y = rng.integers(0, 4, rows)
    return X, y


def test_keep_features_by_hand():
    X = sp.csr_matrix(np.array([[1, 0, 2, 3, 0, 4], [0, 0, 0, 0, 0, 0], [0, 5, 0, 0, 6, 7]], np.float32))
    got = keep_features(X, 2, 5).toarray()
    np.testing.assert_array_equal(got, [[0, 0, 2, 3, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 6, 0]])
    assert (keep_features(X, 0, 6) != X).nnz == 0
    assert keep_features(X, 5, 6).nnz == 2


def test_keep_then_normalize_makes_the_kept_features_unit_length():
    m = boltc.compile(_model("keep=range(0, 3)", "normalize=l2", dim=6), backend="numpy")
    X = sp.csr_matrix(np.array([[3, 0, 4, 9, 9, 9]], np.float32))
    np.testing.assert_allclose(m.dataset(X, labels=np.array([0])).inputs["x"].toarray(),
                               [[0.6, 0, 0.8, 0, 0, 0]], rtol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_training_with_keep_equals_training_on_the_filtered_rows(tmp_path, threads):
    X, y = _data()
    kept = keep_features(X, 10, 30)
    a = boltc.compile(_model("keep=range(10, 30)"), backend="native", threads=threads)
    a.fit((X, y), progress=False)
    b = boltc.compile(_model(), backend="native", threads=threads)
    b.fit((kept, y), progress=False)
    for layer, arrays in b.state.params.items():
        for name, w in arrays.items():
            np.testing.assert_array_equal(a.state.params[layer][name], w, err_msg=f"{layer}.{name}")
    ids_a, sc_a = a.predict(X, top_k=2)
    ids_b, sc_b = b.predict(kept, top_k=2)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(sc_a, sc_b)
    a.save(tmp_path / "k.boltc")                   # the saved model drops the same features at predict
    again = boltc.load(tmp_path / "k.boltc")
    np.testing.assert_array_equal(again.predict(X, top_k=2)[0], ids_a)


def test_keep_round_trips_through_the_formatted_source():
    g = parse(_model("keep=range(10, 30)"), "<m>")
    text = format_source(g)
    assert "sparse(40, keep=range(10, 30))" in text
    assert parse(text, "<m>").nodes["x"]["node"].attrs["keep"] == (10, 30)


@pytest.mark.parametrize("keep,message,column", [
    ("keep=range(0, 41)", "keep=range(0, 41) ends past the input's 40 features", 29),
    ("keep=range(5)", "expected range(start, stop) of feature ids", 29),
    ("keep=range(7, 7)", "expected an end feature id (one past the last kept) >= 8", 38),
    ("keep=7", "expected range(start, stop) of feature ids, found", 29),
])
def test_bad_keep_is_located(keep, message, column):
    with pytest.raises(BoltError) as info:
        check_source(_model(keep), "m.bolt")
    errors = info.value.errors if isinstance(info.value, BoltErrorGroup) else [info.value]
    assert len(errors) == 1 and message in errors[0].message, [e.message for e in errors]
    assert (errors[0].location.file, errors[0].location.line, errors[0].location.column) == ("m.bolt", 2, column)
