"""`blend ridge(weight, l2)` (runtime/train/blend.py): ranking scores = the network's output + weight x a
ridge regression of the target on the input. Oracles: numpy's solve of the normal equations, and the
ranking recomputed by hand from the interpreter's output probabilities; both backends, dense and sparse
inference, a saved and reloaded model, the language's errors and the tuner's handling of the values."""
import numpy as np
import pytest
import scipy.sparse as sp

import boltc
from boltc.errors import BoltError
from boltc.frontend import parse
from boltc.frontend.format import format_source
from boltc.runtime.train import blend
from boltc.tune import space
from tests.runtime_models import tiny_source


def _with_blend(src: str, setting: str) -> str:
    return src.replace("    batch     32", f"    batch     32\n    {setting}")


def _ridge_by_hand(x, y, l2):
    x = x.toarray().astype(np.float64)
    return np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ y.toarray())


def _problem(seed=0, n=200, d=60, classes=7):
    rng = np.random.default_rng(seed)
    x = sp.random(n, d, density=0.1, random_state=seed, format="csr", dtype=np.float64)
    y = sp.csr_matrix((rng.random((n, classes)) < 0.3).astype(np.float64))
    return x, y


def test_direct_solve_equals_the_normal_equations():
    x, y = _problem()
    np.testing.assert_allclose(blend.fit_ridge(x, y, 0.7), _ridge_by_hand(x, y, 0.7), rtol=1e-4, atol=1e-5)


def test_conjugate_gradients_equal_the_direct_solve(monkeypatch):
    x, y = _problem(seed=3, d=90)
    monkeypatch.setattr(blend, "DIRECT_MAX_DIM", 10)          # force the wide-input path
    want = _ridge_by_hand(x, y, 0.3)
    ranks = np.argsort(-(x @ want), axis=1)[:, :3]
    got = blend.fit_ridge(x, y, 0.3)                            # the shipped tolerance ranks the same
    assert (np.argsort(-(x @ got), axis=1)[:, :3] == ranks).mean() > 0.99
    monkeypatch.setattr(blend, "CG_TOL", 1e-7)                  # and converges to the exact solution
    np.testing.assert_allclose(blend.fit_ridge(x, y, 0.3), want, rtol=1e-3, atol=1e-4)


def test_the_dual_for_fewer_rows_than_inputs_equals_the_direct_solve(monkeypatch):
    x, y = _problem(seed=5, n=40, d=90)
    monkeypatch.setattr(blend, "DIRECT_MAX_DIM", 10)
    monkeypatch.setattr(blend, "CG_TOL", 1e-9)
    np.testing.assert_allclose(blend.fit_ridge(x, y, 0.3), _ridge_by_hand(x, y, 0.3), rtol=1e-3, atol=1e-4)


def test_too_many_weights_is_refused(monkeypatch):
    x, y = _problem()
    monkeypatch.setattr(blend, "MAX_ENTRIES", 100)
    with pytest.raises(BoltError, match="blend ridge"):
        blend.fit_ridge(x, y, 1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    m = boltc.compile(_with_blend(tiny_source(epochs=2), "blend ridge(weight=0.8, l2=0.5)"), backend="numpy")
    m.fit(progress=False)
    path = tmp_path_factory.mktemp("blend") / "tiny.boltc"
    m.save(path)
    return m, path, m.dataset(m.data_source("test"))


def test_ridge_is_fit_on_the_training_rows_only(trained):
    m, _, _ = trained
    full = m.dataset(m.data_source("train"))
    tr, _ = m.validation_split(full)                   # the 10% holdout stays out of the ridge
    np.testing.assert_allclose(m.state.blend["ridge"],
                               _ridge_by_hand(tr.inputs["features"], tr.labels, 0.5), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend,threads,sparse", [("numpy", 1, False), ("native", 1, False),
                                                     ("native", 2, False), ("numpy", 1, True)])
def test_ranking_is_network_plus_weighted_ridge(trained, backend, threads, sparse):
    m, path, test = trained
    loaded = boltc.load(path, backend=backend, threads=threads)
    np.testing.assert_array_equal(loaded.state.blend["ridge"], m.state.blend["ridge"])
    X = test.inputs["features"]
    ids, scores = loaded.predict(X, top_k=5, sparse=sparse)
    spec = boltc.load(path, backend="numpy")
    out = spec.executor.forward(test.take(np.arange(test.rows)), mode="sparse" if sparse else "dense")["scores"]
    total = 0.8 * (X @ m.state.blend["ridge"]).astype(np.float64)
    if isinstance(out, tuple):
        for r in range(X.shape[0]):
            ok = out[0][r] >= 0
            total[r, out[0][r][ok]] += out[1][r][ok]
    else:
        total += out
    counts = m.state.params["scores"]["label_count"]
    total[:, counts == 0] = -np.inf                     # never a training label: never ranked (as without blend)
    want = np.argsort(-total, axis=1, kind="stable")[:, :5]
    np.testing.assert_allclose(scores, np.take_along_axis(total, want, axis=1), rtol=1e-4, atol=1e-5)
    agree = (ids == want).mean()
    assert agree > 0.99                                 # ties between float32 and float64 sums aside
    ev = loaded.evaluate(test, metrics=["precision@1"], sparse=sparse)
    hit = [ids[r, 0] in set(test.labels[r].indices.tolist()) for r in range(X.shape[0])]
    assert ev["precision@1"] == pytest.approx(100 * np.mean(hit))


def test_weight_zero_ranks_as_the_network_alone():
    src = _with_blend(tiny_source(epochs=1), "blend ridge(weight=0, l2=1)")
    m = boltc.compile(src, backend="numpy")
    m.fit(progress=False)
    assert "ridge" not in m.state.blend
    plain = boltc.compile(tiny_source(epochs=1), backend="numpy")
    plain.fit(progress=False)
    X = m.dataset(m.data_source("test")).inputs["features"]
    np.testing.assert_array_equal(m.predict(X)[0], plain.predict(X)[0])


def test_language_round_trip_and_tunables():
    g = parse(_with_blend(tiny_source(), "blend ridge(weight=auto, l2=auto)"), "<m>")
    kinds = {t.kind: t.where for t in g.graph["tunable"]}
    assert kinds["blend_weight"] == ("train", "blend", "weight") and kinds["blend_l2"] == ("train", "blend", "l2")
    assert g.graph["train"]["blend"] == {"kind": "ridge", "weight": 0.0, "l2": 1.0}     # untuned: off
    assert parse(_with_blend(tiny_source(), "blend ridge"), "<m>").graph["train"]["blend"] == \
        {"kind": "ridge", "weight": 0.5, "l2": 1.0}
    tuned = space.with_values(g, {("train", "blend", "weight"): 2.0, ("train", "blend", "l2"): 0.1})
    assert tuned.graph["train"]["blend"] == {"kind": "ridge", "weight": 2.0, "l2": 0.1}
    again = parse(format_source(tuned), "<m>")
    assert again.graph["train"]["blend"] == {"kind": "ridge", "weight": 2.0, "l2": 0.1}
    assert parse(_with_blend(tiny_source(), "blend none"), "<m>").graph["train"].get("blend") is None


@pytest.mark.parametrize("setting,message", [
    ("blend ridge(weight=-1)", "blend"),
    ("blend ridge(l2=0)", "l2"),
    ("blend lasso", "unknown blend 'lasso'"),
    ("blend ridge(weigth=1)", "unknown option 'weigth'"),
])
def test_bad_settings_are_located(setting, message):
    from boltc.errors import BoltError as E
    src = _with_blend(tiny_source(), setting)
    with pytest.raises(E) as e:
        parse(src, "m.bolt")
    text = str(e.value)
    assert message in text and "m.bolt:" in text
    line = src.splitlines().index(f"    {setting}") + 1
    assert f"m.bolt:{line}:" in text


def test_two_inputs_or_a_binary_target_are_refused():
    two = """
model two {
  input a: sparse(10)
  input b: sparse(10)
  target y: label(3)
  h = fc(a, 4, relu)
  k = fc(b, 4, relu)
  c = concat(h, k)
  s = fc(c, 3, softmax)
  loss cross_entropy(s, y)
  train {
    blend ridge(weight=1)
  }
}
"""
    with pytest.raises(BoltError, match=r"m.bolt:12:\d+: .*blend ridge\(\.\.\.\) needs a model with one input"):
        parse(two, "m.bolt")
    binary = two.replace("  input b: sparse(10)\n", "").replace("target y: label(3)", "target y: binary") \
        .replace("  k = fc(b, 4, relu)\n  c = concat(h, k)\n", "").replace("fc(c, 3, softmax)", "fc(h, 1, sigmoid)") \
        .replace("cross_entropy", "binary_cross_entropy")
    with pytest.raises(BoltError, match="needs a label"):
        parse(binary, "m.bolt")


def test_sparse_normalize_auto_is_tunable_and_none_untuned():
    src = tiny_source().replace("sparse(300)", "sparse(300, normalize=auto)")
    g = parse(src, "<m>")
    (t,) = [t for t in g.graph["tunable"] if t.kind == "normalize"]
    assert t.where == ("input", "features", "normalize") and t.default == "none"
    m = boltc.compile(src, backend="numpy")
    assert m.plan["inputs"][0].get("normalize", "none") == "none"
    tuned = space.with_values(g, {t.where: "none"})
    assert "normalize" not in format_source(tuned).split("input")[1].split("\n")[0]
    assert parse(format_source(space.with_values(g, {t.where: "l2"})), "<m>").nodes["features"]["node"] \
        .attrs["normalize"] == "l2"
