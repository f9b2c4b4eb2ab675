"""Input weighting: TF-IDF values of text inputs (`idf=true`) and L2-normalised sparse rows
(`sparse(dim, normalize=l2)`), each against values computed by hand, kept in the saved model, and
identical between the interpreter and the native backend (1 and 2 threads)."""
import math

import numpy as np
import pytest
import scipy.sparse as sp

import boltc
from boltc.runtime.data.text import feature_id
from tests.runtime_models import text_source, write_lines

DOCS = [("apple apple pie", "a"), ("pie crust", "b"), ("apple tart", "a"), ("crust crust crust", "b")]


def _tsv(tmp_path, rows, name="train.tsv"):
    return write_lines(tmp_path / name, ["text\tlabel"] + [f"{t}\t{l}" for t, l in rows])


def test_tfidf_values_by_hand(tmp_path):
    dim = 1 << 12
    m = boltc.compile(text_source(f'column="text", dim={dim}, idf=true', classes=2, epochs=1), backend="numpy", holdout=0.0)
    m.fit(_tsv(tmp_path, DOCS), progress=False)
    entry = m.plan["inputs"][0]
    assert entry["idf_rows"] == 4
    # df: apple 2, pie 2, crust 2, tart 1 (of 4 rows); idf = ln(5 / (1 + df)) + 1
    idf = {w: math.log(5 / (1 + df)) + 1 for w, df in (("apple", 2), ("pie", 2), ("crust", 2), ("tart", 1))}
    ids = {w: feature_id(w, dim) for w in idf}
    assert len(set(ids.values())) == 4                              # no collision in this tiny case
    X = m.dataset(["apple apple pie tart zebra"]).inputs["doc"]
    raw = {"apple": 2 * idf["apple"], "pie": idf["pie"], "tart": idf["tart"],
           "zebra": math.log(5 / 1) + 1}                           # unseen in training: df 0
    ids["zebra"] = feature_id("zebra", dim)
    norm = math.sqrt(sum(v * v for v in raw.values()))
    got = {w: X[0, ids[w]] for w in raw}
    assert got == pytest.approx({w: v / norm for w, v in raw.items()}, rel=1e-5)
    # the training rows were weighted too: row 3 is crust alone -> 1.0 after normalisation, row 0 by hand
    saved = tmp_path / "m.boltc"
    m.save(saved)
    again = boltc.load(saved, backend="numpy")
    X2 = again.dataset(["apple apple pie tart zebra"]).inputs["doc"]
    np.testing.assert_array_equal(X2.toarray(), X.toarray())        # the counts travel with the model
    assert "counts" in str(again.summary()["inputs"][0]["idf_df"])


def test_tfidf_training_rows_are_weighted(tmp_path):
    dim = 1 << 12
    m = boltc.compile(text_source(f'column="text", dim={dim}, idf=true, normalize=none', classes=2, epochs=1),
                      backend="numpy")
    train = m.dataset(_tsv(tmp_path, DOCS))
    m._fit_idf(train)
    X = train.inputs["doc"]
    # normalize=none: tf * idf exactly; row 0 "apple apple pie"
    assert X[0, feature_id("apple", dim)] == pytest.approx(2 * (math.log(5 / 3) + 1), rel=1e-6)
    assert X[2, feature_id("tart", dim)] == pytest.approx(math.log(5 / 2) + 1, rel=1e-6)


@pytest.mark.parametrize("backend,threads", [("numpy", 1), ("native", 1), ("native", 2)])
def test_tfidf_model_predicts_alike_on_every_backend(tmp_path, backend, threads):
    rows = [(f"{w} {w} word{i % 7}", "a" if w in ("apple", "pie") else "b")
            for i, w in enumerate(["apple", "pie", "crust", "tart"] * 10)]
    src = text_source('column="text", dim=4096, idf=true', classes=2, epochs=2)
    m = boltc.compile(src, backend=backend, threads=threads)
    m.fit(_tsv(tmp_path, rows), progress=False)
    ids, scores = m.predict(["apple word3", "crust crust"], top_k=2)
    ref = boltc.compile(src, backend="numpy")
    ref.fit(_tsv(tmp_path, rows, "t2.tsv"), progress=False)
    rids, rscores = ref.predict(["apple word3", "crust crust"], top_k=2)
    np.testing.assert_array_equal(ids, rids)
    np.testing.assert_allclose(scores, rscores, rtol=1e-4, atol=1e-6)


SPARSE = """
model s {
  input  x: sparse(50, normalize=l2)
  target y: multilabel(5)
  h = fc(x, 8, relu)
  s = fc(h, 5, softmax)
  loss cross_entropy(s, y)
}
"""


def test_l2_normalised_sparse_rows_by_hand(tmp_path):
    m = boltc.compile(SPARSE, backend="numpy")
    assert m.plan["inputs"][0]["normalize"] == "l2"
    X = sp.csr_matrix(np.array([[3.0, 0, 4.0] + [0] * 47, [0] * 50, [0, 2.0] + [0] * 48], np.float32))
    got = m.dataset(X).inputs["x"].toarray()
    np.testing.assert_allclose(got[0, :3], [0.6, 0.0, 0.8], rtol=1e-6)
    assert not got[1].any()                                          # an empty row stays empty
    np.testing.assert_allclose(got[2, :2], [0.0, 1.0])
    f = write_lines(tmp_path / "rows.txt", ["2 50 5", "1 0:3 2:4", "0 1:2"])
    np.testing.assert_allclose(m.dataset(f).inputs["x"].toarray()[0, :3], [0.6, 0.0, 0.8], rtol=1e-6)
    from boltc.frontend import format_source, graphs_equal, parse
    g = parse(SPARSE)
    assert "sparse(50, normalize=l2)" in format_source(g) and graphs_equal(parse(format_source(g)), g)
    plain = boltc.compile(SPARSE.replace(", normalize=l2", ""), backend="numpy")
    np.testing.assert_allclose(plain.dataset(X).inputs["x"].toarray()[0, :3], [3.0, 0.0, 4.0])
