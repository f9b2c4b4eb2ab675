"""Lazy Adam / SGD on touched blocks against dense references, and the learning-rate schedules."""
import math

import numpy as np
import pytest

from boltc.runtime.exec.numpy_rules import ParamGrad
from boltc.runtime.exec.optim import SGD, Adam, lr_at, make_optimizer
from boltc.runtime.exec.state import ModelState


def _state(W):
    return ModelState(params={"l": {"W": W.copy()}}, m={"l": {"W": np.zeros_like(W)}},
                      v={"l": {"W": np.zeros_like(W)}})


def _dense_adam(W, grads, lr, b1=0.9, b2=0.999, eps=1e-7):
    """Textbook dense Adam: every entry moves every step."""
    W, m, v = W.copy(), np.zeros_like(W), np.zeros_like(W)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        W -= lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return W


def test_lazy_adam_equals_dense_adam_on_rows_touched_every_step():
    rng = np.random.default_rng(0)
    W0 = rng.standard_normal((12, 5))
    rows = np.array([1, 4, 7, 8])
    grads = [rng.standard_normal((4, 5)) for _ in range(6)]
    st, opt = _state(W0), Adam()
    for g in grads:
        st.step += 1
        opt.apply(st, {"l": {"W": ParamGrad(rows, None, g)}}, 0.01)
    full = []
    for g in grads:
        d = np.zeros_like(W0); d[rows] = g; full.append(d)
    np.testing.assert_allclose(st.params["l"]["W"][rows], _dense_adam(W0, full, 0.01)[rows], rtol=1e-12)
    untouched = np.setdiff1d(np.arange(12), rows)
    np.testing.assert_array_equal(st.params["l"]["W"][untouched], W0[untouched])


def test_lazy_adam_with_changing_rows_and_column_blocks_matches_per_entry_reference():
    """Per-entry reference: an entry's moments decay only on steps that touch it; bias correction uses
    the global step (BOLT / LazyAdam)."""
    rng = np.random.default_rng(1)
    W0 = rng.standard_normal((9, 6))
    st, opt = _state(W0), Adam(0.8, 0.99, 1e-7)
    W, m, v = W0.copy(), np.zeros_like(W0), np.zeros_like(W0)
    for t in range(1, 8):
        r = np.sort(rng.choice(9, 3, replace=False))
        c = np.sort(rng.choice(6, 2, replace=False)) if t % 2 else None
        g = rng.standard_normal((3, 2 if c is not None else 6))
        st.step = t
        opt.apply(st, {"l": {"W": ParamGrad(r, c, g)}}, 0.05)
        cols = c if c is not None else np.arange(6)
        for i, ri in enumerate(r):
            for j, cj in enumerate(cols):
                m[ri, cj] = 0.8 * m[ri, cj] + 0.2 * g[i, j]
                v[ri, cj] = 0.99 * v[ri, cj] + 0.01 * g[i, j] ** 2
                W[ri, cj] -= 0.05 * (m[ri, cj] / (1 - 0.8 ** t)) / (math.sqrt(v[ri, cj] / (1 - 0.99 ** t)) + 1e-7)
    np.testing.assert_allclose(st.params["l"]["W"], W, rtol=1e-12)
    np.testing.assert_allclose(st.m["l"]["W"], m, rtol=1e-12)


def test_sgd_momentum_hand_computed():
    W0 = np.array([[1.0, 2.0], [3.0, 4.0]])
    st = _state(W0)
    opt = SGD(momentum=0.5)
    g = np.array([[1.0, -1.0]])
    opt.apply(st, {"l": {"W": ParamGrad(np.array([1]), None, g)}}, 0.1)   # m = g
    opt.apply(st, {"l": {"W": ParamGrad(np.array([1]), None, g)}}, 0.1)   # m = 1.5 g
    np.testing.assert_allclose(st.params["l"]["W"], [[1.0, 2.0], [3.0 - 0.25, 4.0 + 0.25]])
    plain = _state(W0)
    SGD().apply(plain, {"l": {"W": ParamGrad(None, np.array([0]), np.array([[2.0], [4.0]]))}}, 0.5)
    np.testing.assert_allclose(plain.params["l"]["W"], [[0.0, 2.0], [1.0, 4.0]])


def test_make_optimizer():
    assert isinstance(make_optimizer({"optimizer": "adam"}), Adam)
    assert make_optimizer({"optimizer": "sgd", "momentum": 0.9}).mu == 0.9
    with pytest.raises(ValueError):
        make_optimizer({"optimizer": "rmsprop"})


def test_lr_schedules_hand_values():
    assert lr_at(1.0, {"kind": "constant"}, 50, 100) == 1.0
    assert lr_at(1.0, {"kind": "linear", "end": 0.0}, 50, 100) == pytest.approx(0.5)
    assert lr_at(1.0, {"kind": "linear", "end": 0.2}, 100, 100) == pytest.approx(0.2)
    assert lr_at(1.0, {"kind": "cosine"}, 50, 100) == pytest.approx(0.5)
    assert lr_at(1.0, {"kind": "cosine"}, 0, 100) == pytest.approx(1.0)
    assert lr_at(1.0, {"kind": "step", "every": 2, "gamma": 0.1}, 25, 100, steps_per_epoch=10) == pytest.approx(0.1)
    assert lr_at(1.0, {"kind": "step", "every": 2, "gamma": 0.1}, 45, 100, steps_per_epoch=10) == pytest.approx(0.01)
    # warmup: linear ramp over the first W steps, then the schedule over the rest
    assert lr_at(2.0, {"kind": "linear", "end": 0.0, "warmup": 4}, 0, 104) == pytest.approx(0.5)
    assert lr_at(2.0, {"kind": "linear", "end": 0.0, "warmup": 4}, 3, 104) == pytest.approx(2.0)
    assert lr_at(2.0, {"kind": "linear", "end": 0.0, "warmup": 4}, 54, 104) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lr_at(1.0, {"kind": "exp"}, 0, 10)


def test_lazy_adam_row_chunks_match_one_block(monkeypatch):
    rng = np.random.default_rng(3)
    W0 = rng.standard_normal((50, 4))
    rows = np.sort(rng.choice(50, 30, replace=False))
    cols = np.array([0, 2])
    grads = [rng.standard_normal((30, 2)) for _ in range(3)]
    out = []
    for chunk in (1000, 7):
        monkeypatch.setattr("boltc.runtime.exec.optim.ROW_CHUNK", chunk)
        st, opt = _state(W0), Adam()
        for g in grads:
            st.step += 1
            opt.apply(st, {"l": {"W": ParamGrad(rows, cols, g)}}, 0.01)
        out.append(st.params["l"]["W"])
    np.testing.assert_array_equal(out[0], out[1])
    assert not np.array_equal(out[0], W0)


def test_adamw_decay_only_on_touched_weight_rows():
    W0 = np.array([[1.0, -2.0], [3.0, 4.0]])
    st = _state(W0)
    st.params["l"]["b"] = np.array([1.0, 1.0]); st.m["l"]["b"] = np.zeros(2); st.v["l"]["b"] = np.zeros(2)
    st.step = 1
    g = np.array([[0.5, -0.5]])
    Adam(weight_decay=0.1).apply(st, {"l": {"W": ParamGrad(np.array([0]), None, g),
                                            "b": ParamGrad(np.array([0]), None, np.array([0.5]))}}, 0.01)
    # first step: m/(1-b1) = g, v/(1-b2) = g^2, so the Adam step is lr * sign(g) (up to eps)
    expect0 = W0[0] - 0.01 * np.sign(g[0]) * (0.5 / (0.5 + 1e-7)) - 0.01 * 0.1 * W0[0]
    np.testing.assert_allclose(st.params["l"]["W"][0], expect0, rtol=1e-12)
    np.testing.assert_array_equal(st.params["l"]["W"][1], W0[1])          # untouched: no decay
    np.testing.assert_allclose(st.params["l"]["b"], [1.0 - 0.01 * (0.5 / (0.5 + 1e-7)), 1.0])  # no decay
