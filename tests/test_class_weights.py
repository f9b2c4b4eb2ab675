"""Class weights (`class_weights balanced | w0, w1, ...`): the weights against hand-computed values,
and a training step with them identical to one with the same per-example weights given by hand, in the
interpreter and the native backend (1 and 2 threads)."""
import copy

import numpy as np
import pytest
import scipy.sparse as sp

import boltc
from boltc.errors import BoltError
from boltc.runtime.train import class_weights as cw
from boltc.runtime.data.dataset import Batch, as_csr
from tests.native_helpers import make_plan, twin_executors


def labels(rows, classes):
    r = [i for i, ls in enumerate(rows) for _ in ls]
    c = [l for ls in rows for l in ls]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), classes))


def test_balanced_single_label_by_hand():
    # counts 3, 1, 0, 2 over 6 examples, 3 classes present: w_c = 6 / (3 * n_c)
    y = labels([[0], [0], [0], [1], [3], [3]], 4)
    w = cw.resolve("balanced", y, {"kind": "single", "classes": 4})
    np.testing.assert_allclose(w, [6 / 9, 6 / 3, 1.0, 6 / 6], rtol=1e-6)
    np.testing.assert_allclose(cw.example_weights(w, y, {"kind": "single"}), [6 / 9] * 3 + [2.0, 1.0, 1.0],
                               rtol=1e-6)


def test_balanced_binary_and_multilabel_by_hand():
    yb = labels([[0], [], [], []], 1)                         # 1 positive, 3 negatives
    w = cw.resolve("balanced", yb, {"kind": "binary", "classes": 1})
    np.testing.assert_allclose(w, [4 / (2 * 3), 4 / (2 * 1)], rtol=1e-6)
    np.testing.assert_allclose(cw.example_weights(w, yb, {"kind": "binary"}), [2.0, 2 / 3, 2 / 3, 2 / 3], rtol=1e-6)
    ym = labels([[0, 1], [1], [], [1, 2]], 3)                 # occurrences 1, 3, 1 (5 in all, 3 classes)
    w = cw.resolve("balanced", ym, {"kind": "multi", "classes": 3})
    np.testing.assert_allclose(w, [5 / 3, 5 / 9, 5 / 3], rtol=1e-6)
    # an example's weight: the mean of its labels' weights; no label: 1
    np.testing.assert_allclose(cw.example_weights(w, ym, {"kind": "multi"}),
                               [(5 / 3 + 5 / 9) / 2, 5 / 9, 1.0, (5 / 9 + 5 / 3) / 2], rtol=1e-6)


def test_given_weights_must_match_the_classes():
    with pytest.raises(BoltError, match="needs 2 numbers"):
        cw.resolve([1.0, 2.0, 3.0], labels([[0]], 1), {"kind": "binary", "classes": 1})


def _batch(rng, B, in_dim, out_dim):
    cols = [rng.choice(in_dim, size=5, replace=False) for _ in range(B)]
    x = as_csr(sp.csr_matrix((np.ones(5 * B, np.float32), np.concatenate(cols), np.arange(0, 5 * B + 1, 5)),
                             shape=(B, in_dim)))
    return Batch(inputs={"features": x}, labels=labels([[int(rng.integers(out_dim))] for _ in range(B)], out_dim))


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_weighted_step_equals_the_step_with_those_example_weights(backend):
    """The trainer's class weights are exactly per-example weights: the batches it trains on carry the
    hand-computed weights, and replaying them on a twin state gives the same weights bit for bit."""
    from boltc.runtime.data.dataset import Dataset
    from boltc.runtime.exec.executor import make_executor
    from boltc.runtime.exec.state import ModelState
    from boltc.runtime.train.trainer import Trainer
    given = [1.0, 3.0, 0.5] + [1.0] * 9
    plan = make_plan(60, 8, 12, None)
    plan["target"]["kind"] = "single"
    plan["train"].update(batch=8, epochs=1, class_weights=given)
    b = _batch(np.random.default_rng(7), 16, 60, 12)
    s1 = ModelState.init(plan)
    s2, s3 = copy.deepcopy(s1), copy.deepcopy(s1)
    ex1, ex2, ex3 = (make_executor(plan, s, backend, 1) for s in (s1, s2, s3))
    seen, step = [], ex1.train_step

    def spy(batch, lr, active=None):
        seen.append((copy.deepcopy(batch), lr))
        return step(batch, lr, active)
    ex1.train_step = spy
    Trainer(plan, s1, ex1, progress=False).fit(Dataset(inputs=b.inputs, labels=b.labels))
    assert len(seen) == 2
    for batch, lr in seen:
        np.testing.assert_array_equal(batch.weights, np.array(given, np.float32)[batch.labels.indices])
        ex2.train_step(batch, lr)
        batch.weights = None
        ex3.train_step(batch, lr)
    for layer in s1.params:
        for t in s1.params[layer]:
            np.testing.assert_array_equal(s1.params[layer][t], s2.params[layer][t])
    assert not np.array_equal(s3.params["scores"]["W"], s1.params["scores"]["W"])     # they changed the step


def test_native_one_and_two_threads_and_interpreter_agree_with_class_weights(tmp_path):
    src = """
model cw {
  input  x: sparse(60)
  target y: label(6)
  h = fc(x, 8, relu)
  s = fc(h, 6, softmax)
  loss cross_entropy(s, y)
  metrics accuracy, macro_f1
  train { optimizer adam(lr=0.01)  batch 16  epochs 2  class_weights balanced }
  data { train synthetic(rows=200, seed=1, nnz=6, max_labels=1)  test synthetic(rows=50, seed=2, nnz=6, max_labels=1) }
}
"""
    out = {}
    for backend, threads in (("numpy", 1), ("native", 1), ("native", 2)):
        m = boltc.compile(src, backend=backend, threads=threads)
        m.fit(progress=False)
        res = m.evaluate()
        res.pop("examples_per_s")
        out[(backend, threads)] = (m.state.params["s"]["W"].copy(), res)
    np.testing.assert_array_equal(out[("native", 1)][0], out[("native", 2)][0])
    np.testing.assert_allclose(out[("native", 1)][0], out[("numpy", 1)][0], rtol=1e-3, atol=1e-5)
    assert out[("native", 1)][1] == pytest.approx(out[("numpy", 1)][1], abs=1e-6)
    assert boltc.compile(src).plan["train"]["class_weights"] == "balanced"
