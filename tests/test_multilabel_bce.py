"""binary_cross_entropy on a multilabel(n) target (one-vs-rest: a sigmoid per label): the loss against a
hand-computed value, its gradient against finite differences, the check that accepts it, and training
from .bolt text identical between the interpreter and the native kernels (dense and LSH-sparse outputs)
and between 1 and 2 threads."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

import boltc
from boltc.commands.check import check_source
from boltc.errors import BoltError
from boltc.pipeline import load_model_source
from boltc.runtime.exec.interp import NumpyExecutor
from boltc.runtime.exec.native import NativeExecutor
from boltc.runtime.exec.numpy_rules import LOSS_RULES
from boltc.runtime.exec.state import ModelState
from boltc.runtime.train.trainer import true_losses
from native_helpers import make_batch, random_active


def source(sparsity: float = 1.0, epochs: int = 2, extra: str = "") -> str:
    return f"""
model ovr {{
  input  features: sparse(300)
  target labels:   multilabel(40)
  hidden = fc(features, 32, relu)
  scores = fc(hidden, 40, sigmoid, sparsity={sparsity})
  loss    binary_cross_entropy(scores, labels)
  metrics precision@1, precision@3
  train {{
    optimizer adam(lr=1e-2)
    batch     32
    epochs    {epochs}
    {extra}
  }}
  data {{
    train synthetic(rows=400, seed=1, nnz=20, proto_nnz=24, max_labels=3, noise=0.0)
    test  synthetic(rows=100, seed=2, nnz=20, proto_nnz=24, max_labels=3, noise=0.0)
  }}
}}
"""


def test_loss_of_a_row_with_several_labels_by_hand():
    z = np.array([[0.0, 2.0, -1.0, 3.0]])
    labels = sp.csr_matrix(np.array([[1, 0, 1, 0]], np.float32))
    loss, dz = LOSS_RULES["binary_cross_entropy"](z, None, labels, 4)
    s = [1 / (1 + math.exp(-v)) for v in z[0]]
    want = -(math.log(s[0]) + math.log(1 - s[1]) + math.log(s[2]) + math.log(1 - s[3]))
    assert loss[0] == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(dz[0], [s[0] - 1, s[1], s[2] - 1, s[3]], rtol=1e-12)
    # over an active set the columns not in it contribute nothing: ids 2 and 3 only
    loss, dz = LOSS_RULES["binary_cross_entropy"](z[:, 2:], np.array([[2, 3]]), labels, 4)
    assert loss[0] == pytest.approx(-(math.log(s[2]) + math.log(1 - s[3])), rel=1e-12)


def test_gradient_against_finite_differences():
    rng = np.random.default_rng(3)
    labels = sp.csr_matrix(np.array([[1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 0]], np.float64))
    z = rng.standard_normal((3, 6)) * 2
    _, dz = LOSS_RULES["binary_cross_entropy"](z, None, labels, 6)
    num = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        up, dn = z.copy(), z.copy()
        up[i] += 1e-6
        dn[i] -= 1e-6
        num[i] = (LOSS_RULES["binary_cross_entropy"](up, None, labels, 6)[0].sum()
                  - LOSS_RULES["binary_cross_entropy"](dn, None, labels, 6)[0].sum()) / 2e-6
    np.testing.assert_allclose(dz, num, rtol=1e-6, atol=1e-8)


def test_the_check_accepts_it_for_multilabel_and_names_the_fits_otherwise():
    check_source(source(), "m.bolt")
    single = source().replace("multilabel(40)", "label(40)")
    with pytest.raises(BoltError) as info:
        check_source(single, "m.bolt")
    errors = getattr(info.value, "errors", [info.value])
    assert [e.message for e in errors] == ["binary_cross_entropy does not fit a single target; use cross_entropy"]
    assert (errors[0].location.line, errors[0].location.column) == (7, 11)          # the loss call
    softmax_out = source().replace("40, sigmoid", "40, softmax")
    with pytest.raises(BoltError, match="binary_cross_entropy needs a sigmoid output; 'scores' uses softmax"):
        check_source(softmax_out, "m.bolt")


def _train(plan, make, steps=5, seed=5, active_k=None):
    state = ModelState.init(plan)
    ex = make(plan, state)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        batch = make_batch(rng, 32, 300, 40, max_labels=3)
        active = {"scores": random_active(rng, batch.labels, 32, 40, active_k)} if active_k else None
        losses.append(ex.train_step(batch, 1e-2, active=active))
    return state, ex, np.concatenate(losses)


@pytest.mark.parametrize("sparsity", [1.0, 0.25])
def test_native_training_matches_the_interpreter(sparsity):
    """Dense output, and an LSH-sparse one over the same active sets (labels first, as selection puts
    them: the loss covers the active set with the labels forced in)."""
    _, plan = load_model_source(source(sparsity))
    out = next(l for l in plan["layers"] if l["name"] == "scores")
    k = out["active"] if sparsity < 1 else None
    assert (k is not None) == (sparsity < 1)
    a, nx, la = _train(plan, lambda p, s: NativeExecutor(p, s, threads=2), active_k=k)
    b, ix, lb = _train(plan, NumpyExecutor, active_k=k)
    np.testing.assert_allclose(la, lb, rtol=2e-4, atol=2e-6)
    for layer, tensors in b.params.items():
        for t, arr in tensors.items():
            np.testing.assert_allclose(a.params[layer][t], arr, rtol=1e-3, atol=1e-5, err_msg=f"{layer}.{t}")
    batch = make_batch(np.random.default_rng(9), 16, 300, 40)
    np.testing.assert_array_equal(nx.predict(batch, 3)[0], ix.predict(batch, 3)[0])


@pytest.mark.parametrize("sparsity", [1.0, 0.25])
def test_one_and_two_threads_are_bit_identical(sparsity):
    _, plan = load_model_source(source(sparsity))
    a, _, la = _train(plan, lambda p, s: NativeExecutor(p, s, threads=1))
    b, _, lb = _train(plan, lambda p, s: NativeExecutor(p, s, threads=2))
    np.testing.assert_array_equal(la, lb)
    for layer, tensors in a.params.items():
        for t, arr in tensors.items():
            np.testing.assert_array_equal(b.params[layer][t], arr, err_msg=f"{layer}.{t}")


def test_fit_learns_and_ranks_by_the_sigmoid_scores():
    """End to end from the .bolt text: training lowers the loss and the test P@1 is far above chance
    (1 / 40 labels); predicted scores are per-label probabilities (each in (0, 1), not summing to 1;
    labels never seen in training at -inf as with softmax)."""
    m = boltc.compile(source(sparsity=0.25, epochs=4), backend="native", threads=1)
    hist = m.fit(progress=False)
    losses = [e["loss"] for e in hist["epochs"]]
    assert losses[-1] < losses[0]
    assert m.evaluate(m.data_source("test"))["precision@1"] > 50.0
    _, scores = m.predict(m.data_source("test"), top_k=40)
    seen = np.isfinite(scores)                      # labels never seen in training rank last, at -inf
    assert seen[:, 0].all() and ((scores[seen] > 0) & (scores[seen] < 1)).all()
    assert not np.allclose(np.where(seen, scores, 0).sum(axis=1), 1.0)


def test_true_losses_are_the_binary_cross_entropy():
    """The adaptive sampler's check of its predicted losses measures the loss that is trained."""
    _, plan = load_model_source(source())
    state = ModelState.init(plan)
    ix = NumpyExecutor(plan, state)
    batch = make_batch(np.random.default_rng(2), 8, 300, 40)
    z = ix.forward(batch, mode="dense")["scores"]
    p = np.asarray(z, np.float64)
    y = batch.labels.toarray() > 0
    want = -(np.log(np.where(y, p, 1 - p))).sum(axis=1)
    np.testing.assert_allclose(true_losses(ix, plan, batch), want, rtol=1e-4)
