"""load_dataset / as_dataset: each source kind, checks against the plan, located errors."""
import gzip

import numpy as np
import pytest
import scipy.sparse as sp

from boltc.errors import BoltError, DataError
from boltc.runtime.data import load as data
from boltc.runtime.data.dataset import Dataset

PLAN = {"inputs": [{"name": "x", "kind": "sparse", "dim": 6}],
        "target": {"name": "y", "kind": "multi", "classes": 4}}


def test_file_sources_plain_and_gz(tmp_path):
    text = "2 5 3\n0,2 1:0.5 4:2\n1 0:1\n"
    (tmp_path / "a.txt").write_text(text)
    with gzip.open(tmp_path / "a.txt.gz", "wt") as f:
        f.write(text)
    for p in ("a.txt", "a.txt.gz"):
        d = data.load_dataset(str(tmp_path / p), PLAN)
        assert d.inputs["x"].shape == (2, 6)              # widened to the model's input dim
        assert d.labels.shape == (2, 4)
        assert d.inputs["x"][0, 4] == 2.0 and list(d.labels[0].indices) == [0, 2]


def test_too_many_features_or_labels(tmp_path):
    (tmp_path / "a.txt").write_text("1 9 3\n0 8:1\n")
    with pytest.raises(DataError, match="9 features"):
        data.load_dataset({"kind": "file", "path": str(tmp_path / "a.txt")}, PLAN)
    (tmp_path / "b.txt").write_text("1 5 9\n7 1:1\n")
    with pytest.raises(DataError, match="label 7"):
        data.load_dataset(str(tmp_path / "b.txt"), PLAN)
    with pytest.raises(DataError, match="not found"):
        data.load_dataset(str(tmp_path / "none.txt"), PLAN)


def test_synthetic_takes_dims_from_the_plan():
    d = data.load_dataset({"kind": "synthetic", "rows": 50, "seed": 2}, PLAN)
    assert d.inputs["x"].shape == (50, 6) and d.labels.shape == (50, 4)
    assert d.meta["synthetic"]["seed"] == 2


def test_python_objects():
    X = np.zeros((3, 6), np.float32)
    X[0, 1] = 1
    d = data.as_dataset((X, [[0], [1, 3], []]), PLAN)
    assert isinstance(d, Dataset) and d.rows == 3
    assert [list(d.labels[i].indices) for i in range(3)] == [[0], [1, 3], []]
    d2 = data.as_dataset(sp.csr_matrix(X), PLAN, labels=np.array([0, 1, 2]))
    assert d2.inputs["x"][0, 1] == 1 and list(d2.labels[2].indices) == [2]
    with pytest.raises(BoltError, match="label ids"):
        data.as_dataset(X, PLAN, labels=np.array([0, 1, 9]))
    with pytest.raises(BoltError, match="rows of labels"):
        data.as_dataset(X, PLAN, labels=np.array([0, 1]))


def test_dense_input_becomes_an_array():
    plan = {"inputs": [{"name": "x", "kind": "dense", "dim": 3}], "target": {"name": "y", "kind": "single", "classes": 2}}
    d = data.as_dataset(np.eye(3), plan, labels=[0, 1, 1])
    assert isinstance(d.inputs["x"], np.ndarray) and d.inputs["x"].dtype == np.float32


def test_binary_target_from_plus_minus_one(tmp_path):
    plan = {"inputs": [{"name": "x", "kind": "sparse", "dim": 4}], "target": {"name": "y", "kind": "binary", "classes": 1}}
    (tmp_path / "s.svm").write_text("+1 1:1\n-1 2:1\n1 4:1\n")
    d = data.load_dataset(str(tmp_path / "s.svm"), plan)
    assert d.labels.shape == (3, 1) and list(np.diff(d.labels.indptr)) == [1, 0, 1]


def test_stdin_rows():
    d = data.read_rows_text("1:0.5 3:1\n\n2,3 0:1\n", PLAN)
    np.testing.assert_array_equal(d.inputs["x"].toarray(), [[0, 0.5, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0]])
    with pytest.raises(DataError) as e:
        data.read_rows_text("1:1\n2:x\n", PLAN)
    assert e.value.location.file == "<stdin>" and e.value.location.line == 2


def test_csv_with_text_column(tmp_path):
    plan = {"inputs": [{"name": "doc", "kind": "text", "dim": 64, "column": "text"}],
            "target": {"name": "y", "kind": "single", "classes": 2, "column": "label"}}
    (tmp_path / "t.csv").write_text('label,text\n1,"good movie"\n0,"bad, bad movie"\n')
    d = data.load_dataset(str(tmp_path / "t.csv"), plan)
    assert d.rows == 2 and d.inputs["doc"].shape == (2, 64)
    assert [list(d.labels[i].indices) for i in range(2)] == [[1], [0]]
    (tmp_path / "u.csv").write_text('label,text\n1,"good"\n7,"bad"\n')
    with pytest.raises(DataError) as e:
        data.load_dataset(str(tmp_path / "u.csv"), plan)
    assert e.value.location.line == 3


def test_l2_normalize_option(tmp_path):
    (tmp_path / "a.txt").write_text("3 6 4\n0 1:3 4:4\n1 \n2 0:2\n")
    d = data.load_dataset({"kind": "file", "path": str(tmp_path / "a.txt"), "normalize": "l2"}, PLAN)
    np.testing.assert_allclose(d.inputs["x"].toarray()[[0, 2]], [[0, 0.6, 0, 0, 0.8, 0], [1, 0, 0, 0, 0, 0]])
    assert d.inputs["x"][1].nnz == 0
    with pytest.raises(DataError, match="normalize"):
        data.load_dataset({"kind": "file", "path": str(tmp_path / "a.txt"), "normalize": "l3"}, PLAN)
