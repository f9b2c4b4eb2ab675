"""The Python API: compile -> fit -> evaluate -> predict -> save -> load, every input kind, errors."""
import numpy as np
import pytest
import scipy.sparse as sp

import boltc
from boltc.errors import BackendError, BoltError, DataError, ModelFileError
from runtime_models import tiny_source, write_test_set

MODEL = tiny_source(epochs=3)


@pytest.fixture(scope="module")
def trained():
    m = boltc.compile(MODEL, backend="numpy")
    m.fit(progress=False)
    return m


def test_fit_uses_the_data_block_and_learns(trained):
    eps = trained.history["epochs"]
    assert len(eps) == 3 and eps[-1]["loss"] < eps[0]["loss"]
    res = trained.evaluate()
    assert set(res) >= {"precision@1", "precision@3"}
    assert res["precision@1"] > 50.0          # 40 well-separated classes; chance is 2.5


def _assert_same_predictions(a, b, data, sparse):
    """Two models answer `data` with the same top-5 ids and bit-identical scores."""
    i1, s1 = a.predict(data, top_k=5, sparse=sparse)
    i2, s2 = b.predict(data, top_k=5, sparse=sparse)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


@pytest.mark.parametrize("sparse", [False, True])
def test_save_load_identical_predictions(tmp_path, trained, sparse):
    p = tmp_path / "m.boltc"
    trained.save(p)
    m2 = boltc.load(p, backend="numpy")
    test = trained.plan["data"]["test"]
    _assert_same_predictions(trained, m2, test, sparse)
    assert m2.history["epochs"] == trained.history["epochs"]
    assert m2.evaluate(test, sparse=sparse)["precision@1"] == trained.evaluate(test, sparse=sparse)["precision@1"]


def test_inputs_as_file_csr_array_agree(tmp_path, trained):
    path = tmp_path / "t.txt"
    ds = write_test_set(trained, path)
    X, Y = ds.inputs["features"], ds.labels
    ids_csr, _ = trained.predict(X, top_k=3)
    ids_arr, _ = trained.predict(X.toarray(), top_k=3)
    ids_file, _ = trained.predict(str(path), top_k=3)
    np.testing.assert_array_equal(ids_csr, ids_arr)
    np.testing.assert_array_equal(ids_csr, ids_file)
    a = trained.evaluate((X, Y))
    b = trained.evaluate(str(path))
    c = trained.evaluate(X, labels=Y)
    assert a["precision@1"] == b["precision@1"] == c["precision@1"]


def test_predict_shapes_and_order(trained):
    X = sp.random(7, 300, density=0.05, format="csr", random_state=0, dtype=np.float32)
    ids, scores = trained.predict(X, top_k=4)
    assert ids.shape == (7, 4) and scores.shape == (7, 4) and ids.dtype == np.int32
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert all(len(set(r)) == 4 for r in ids.tolist())


def test_fit_on_arrays_with_label_lists():
    m = boltc.compile(MODEL, backend="numpy", epochs=1)
    X = np.zeros((20, 300), np.float32)
    X[np.arange(20), np.arange(20)] = 1
    hist = m.fit(X, labels=[[i % 40] for i in range(20)], progress=False)
    assert len(hist["epochs"]) == 1 and m.state.step == 1


def test_overrides_and_errors(tmp_path):
    m = boltc.compile(MODEL, backend="numpy", lr=0.5, epochs=7)
    assert m.plan["train"]["lr"] == 0.5 and m.plan["train"]["epochs"] == 7
    with pytest.raises(BoltError, match="unknown train setting"):
        boltc.compile(MODEL, colour=3)
    with pytest.raises(BackendError):
        boltc.compile(MODEL, backend="gpu").executor
    with pytest.raises(DataError):
        m.predict(np.zeros((2, 999), np.float32))
    with pytest.raises(ModelFileError):
        boltc.load(tmp_path / "missing.boltc")
    with pytest.raises(BoltError):
        boltc.compile(str(tmp_path / "missing.bolt"))


def _native_available():
    try:
        import boltc.runtime.exec.native  # noqa: F401
        return True
    except Exception:
        return False


@pytest.mark.parametrize("backend", ["numpy", pytest.param("native", marks=pytest.mark.skipif(
    not _native_available(), reason="native backend not importable"))])
def test_resume_through_the_api(tmp_path, backend):
    ck = tmp_path / "ck.boltc"
    ref = boltc.compile(MODEL, backend=backend)
    ref.fit(progress=False)

    class Stop(Exception):
        pass

    def stop(trainer, record):
        if record["epoch"] == 2:
            raise Stop()
    m = boltc.compile(MODEL, backend=backend)
    with pytest.raises(Stop):
        m.fit(checkpoint=ck, progress=False, callbacks=[stop])
    m2 = boltc.compile(MODEL, backend=backend)
    m2.fit(checkpoint=ck, resume=True, progress=False)
    assert [e["loss"] for e in m2.history["epochs"]] == [e["loss"] for e in ref.history["epochs"]]
    for layer, tensors in ref.state.params.items():
        for k, a in tensors.items():
            np.testing.assert_array_equal(m2.state.params[layer][k], a)


@pytest.mark.skipif(not _native_available(), reason="native backend not importable")
def test_native_save_load_identical_predictions(tmp_path):
    m = boltc.compile(MODEL, backend="native", epochs=1)
    m.fit(progress=False)
    m.save(tmp_path / "n.boltc")
    m2 = boltc.load(tmp_path / "n.boltc", backend="native")
    for sparse in (False, True):
        _assert_same_predictions(m, m2, m.plan["data"]["test"], sparse)
