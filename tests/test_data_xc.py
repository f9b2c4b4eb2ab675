"""XC / svmlight reading: exact values on hand-written files, error locations, chunking, real files."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from boltc.errors import DataError
from boltc.runtime.data import xcformat

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"

TEXT = """3 6 4
0,2 1:0.5 4:2
 0:1.25
3 5:-1e-2 2:3
"""


def write(tmp_path, text, name="d.txt", gz=False):
    p = tmp_path / (name + (".gz" if gz else ""))
    if gz:
        with gzip.open(p, "wt") as f:
            f.write(text)
    else:
        p.write_text(text)
    return p


@pytest.mark.parametrize("gz", [False, True])
def test_reads_exact_values(tmp_path, gz):
    X, Y = xcformat.read_xc(write(tmp_path, TEXT, gz=gz))
    want_x = np.zeros((3, 6), np.float32)
    want_x[0, 1], want_x[0, 4], want_x[1, 0], want_x[2, 5], want_x[2, 2] = 0.5, 2, 1.25, -1e-2, 3
    np.testing.assert_array_equal(X.toarray(), want_x)
    assert Y.shape == (3, 4)
    assert [list(Y[i].indices) for i in range(3)] == [[0, 2], [], [3]]
    assert X.indices.dtype == np.int32 and X.indptr.dtype == np.int64 and X.dtype == np.float32
    assert X.has_sorted_indices and all(np.all(np.diff(X[i].indices) > 0) for i in range(3))


def test_small_chunks_give_the_same_matrix(tmp_path):
    rng = np.random.default_rng(0)
    X0 = sp.random(200, 50, density=0.1, format="csr", random_state=1, dtype=np.float32)
    Y0 = sp.random(200, 30, density=0.05, format="csr", random_state=2, dtype=np.float32)
    Y0.data[:] = 1
    p = tmp_path / "r.txt"
    xcformat.write_xc(p, X0, Y0, value_format=".9g")
    X, Y = xcformat.read_xc(p, chunk_bytes=97)
    np.testing.assert_array_equal(X.toarray(), X0.toarray())
    np.testing.assert_array_equal(Y.toarray(), Y0.toarray())
    rows = sum(c.X.shape[0] for c in xcformat.iter_chunks(p, chunk_bytes=97))
    assert rows == 200 and rng is not None


@pytest.mark.parametrize("bad_line, what", [
    ("1 3:x", "cannot read"),
    ("1 3 : 2", "feature:value"),
    ("1 3:1 4", "unexpected token"),
    ("1 9:1", "feature id 9"),
    ("7 1:1", "label 7"),
    ("1 1:2:3", "two ':'"),
    ("1 2:inf", "finite"),
])
def test_malformed_row_names_file_and_line(tmp_path, bad_line, what):
    text = "4 6 4\n0 1:1\n1 2:1\n" + bad_line + "\n2 0:1\n"
    p = write(tmp_path, text)
    with pytest.raises(DataError) as e:
        xcformat.read_xc(p)
    assert e.value.location.file == str(p)
    assert e.value.location.line == 4
    assert what in e.value.message


def test_header_row_count_mismatch(tmp_path):
    with pytest.raises(DataError, match="header says 5 rows"):
        xcformat.read_xc(write(tmp_path, "5 6 4\n0 1:1\n"))


def test_svmlight_one_based_with_qid_and_comments(tmp_path):
    p = write(tmp_path, "1 qid:3 1:0.5 3:1 # a comment\n-1 2:2\n", name="s.svm")
    assert xcformat.sniff_format(p) == "svmlight"
    X, Y = xcformat.read_xc(p, n_features=3, n_labels=2)
    np.testing.assert_array_equal(X.toarray(), [[0.5, 0, 1], [0, 2, 0]])
    assert [list(Y[i].indices) for i in range(2)] == [[1], []]


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot open"):
        xcformat.read_xc(tmp_path / "nope.txt")


def test_real_bibtex_statistics():
    p = DATA / "bibtex" / "xc_split" / "train.txt.gz"
    if not p.exists():
        pytest.skip("shared data not present")
    X, Y = xcformat.read_xc(p)
    assert X.shape == (4880, 1836) and Y.shape == (4880, 159)
    # README: avg nnz 68.58, avg labels 2.394
    assert X.nnz / 4880 == pytest.approx(68.58, abs=0.01)
    assert Y.nnz / 4880 == pytest.approx(2.394, abs=0.001)
