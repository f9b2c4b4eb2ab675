"""Seen-label exclusion (`exclude_seen`): a label whose id is one of the row's own feature ids is never
ranked. Oracle: the full ranking of every label (top_k = all classes) with those ids struck out by hand;
the native backend (1 and 2 threads) must rank as the interpreter does."""
import numpy as np
import pytest

import boltc
from boltc.cli import main
from boltc.errors import BoltError
from boltc.runtime.train import ranking
from tests.runtime_models import text_source, tiny_source


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    m = boltc.compile(tiny_source(epochs=2), backend="numpy")
    m.fit(progress=False)
    path = tmp_path_factory.mktemp("seen") / "tiny.boltc"
    m.save(path)
    return path, m.dataset(m.data_source("test"))


def _struck(full_ids, X, k):
    out = []
    for r, row in enumerate(full_ids.tolist()):
        seen = set(X[r].indices.tolist())
        kept = [i for i in row if i >= 0 and i not in seen][:k]
        out.append(kept + [-1] * (k - len(kept)))
    return np.array(out)


@pytest.mark.parametrize("backend,threads,sparse", [("numpy", 1, False), ("native", 1, False),
                                                     ("native", 2, False), ("numpy", 1, True),
                                                     ("native", 2, True)])
def test_seen_ids_are_left_out_of_the_full_ranking(trained, backend, threads, sparse):
    path, test = trained
    m = boltc.load(path, backend=backend, threads=threads)
    X = test.inputs["features"]
    assert any((X[r].indices < 40).any() for r in range(X.shape[0]))     # the case is exercised
    full_ids, _ = m.predict(X, top_k=40, sparse=sparse)
    ids, scores = m.predict(X, top_k=5, sparse=sparse, exclude_seen=True)
    np.testing.assert_array_equal(ids, _struck(full_ids, X, 5))
    assert np.all(np.diff(np.where(ids >= 0, scores, -np.inf), axis=1) <= 0)
    # evaluation with the option counts hits of exactly that ranking
    ev = m.evaluate(test, metrics=["precision@1"], sparse=sparse, exclude_seen=True)
    hit = [ids[r, 0] in set(test.labels[r].indices.tolist()) for r in range(X.shape[0])]
    assert ev["precision@1"] == pytest.approx(100 * np.mean(hit))


def test_interpreter_and_native_rank_the_same(trained):
    path, test = trained
    X = test.inputs["features"]
    got = [boltc.load(path, backend=b, threads=t).predict(X, top_k=5, exclude_seen=True)
           for b, t in (("numpy", 1), ("native", 1), ("native", 2))]
    for ids, scores in got[1:]:
        np.testing.assert_array_equal(ids, got[0][0])
        np.testing.assert_allclose(scores, got[0][1], rtol=1e-4, atol=1e-6)


def test_drop_seen_by_hand():
    import scipy.sparse as sp
    ids = np.array([[3, 1, 4, 0], [2, 5, -1, -1]])
    scores = np.array([[.5, .3, .1, .05], [.6, .2, -np.inf, -np.inf]], np.float32)
    seen = sp.csr_matrix(np.array([[0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], np.float32))
    got_ids, got_sc = ranking.drop_seen(ids, scores, seen, 3)
    np.testing.assert_array_equal(got_ids, [[4, 0, -1], [2, 5, -1]])
    np.testing.assert_allclose(got_sc, [[.1, .05, -np.inf], [.6, .2, -np.inf]])


def test_a_model_without_item_ids_is_refused(tmp_path):
    m = boltc.compile(text_source('column="text"', classes=3), backend="numpy")
    with pytest.raises(BoltError, match="exclude_seen .*sparse"):
        m.predict(["a b c"], exclude_seen=True)


def test_cli_predict_and_eval(trained, capsys, monkeypatch):
    import io
    path, test = trained
    row = " ".join(f"{i}:1" for i in range(0, 40, 2))          # every even label id is in the row
    monkeypatch.setattr("sys.stdin", io.StringIO(row + "\n"))
    assert main(["predict", str(path), "--top-k", "5", "--exclude-seen", "--backend", "numpy"]) == 0
    got = [int(p.split(":")[0]) for p in capsys.readouterr().out.split()]
    assert len(got) == 5 and all(i % 2 == 1 for i in got)
    assert main(["eval", str(path), "--exclude-seen", "--metrics", "precision@1,ndcg@3", "--json",
                 "--backend", "numpy"]) == 0
    import json
    res = json.loads(capsys.readouterr().out)
    ref = boltc.load(path, backend="numpy").evaluate(test, metrics=["precision@1", "ndcg@3"], exclude_seen=True)
    assert res["dense"]["ndcg@3"] == pytest.approx(ref["ndcg@3"])
    assert main(["eval", str(path), "--metrics", "precision@0"]) == 1
    assert "--metrics" in capsys.readouterr().err


def test_cli_flags_on_a_model_they_do_not_fit_name_the_flag(trained, capsys):
    path, _ = trained
    # tiny's target is multilabel: no confusion matrix; a binary text model has no ids to exclude
    assert main(["eval", str(path), "--confusion", "--backend", "numpy"]) == 1
    assert "--confusion" in capsys.readouterr().err
    assert main(["eval", str(path), "--metrics", "macro_f1", "--backend", "numpy"]) == 1
    assert "macro_f1" in capsys.readouterr().err
