"""Label smoothing (`train { label_smoothing e }`): the smoothed cross entropy against a hand-computed
value, and training steps identical between the interpreter and the native kernels (1 and 2 threads)."""
import math

import numpy as np
import pytest
import scipy.sparse as sp

import boltc
from boltc.errors import BoltError
from boltc.runtime.exec.numpy_rules import softmax_cross_entropy
from tests.native_helpers import make_batch, make_plan, pair, random_active, twin_executors

RTOL, ATOL = 2e-4, 2e-6


def test_smoothed_cross_entropy_by_hand():
    z = np.array([[1.0, 2.0, 0.0], [0.5, 0.5, 0.5]], np.float32)
    labels = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 0]], np.float32))
    loss, dz = softmax_cross_entropy(z, None, labels, 3, smoothing=0.3)
    p = np.exp(z[0]) / np.exp(z[0]).sum()
    t = np.array([0.1, 0.7 + 0.1, 0.1])                               # (1 - 0.3) y + 0.3 / 3
    assert loss[0] == pytest.approx(-(t * np.log(p)).sum(), rel=1e-6)
    np.testing.assert_allclose(dz[0], p * t.sum() - t, rtol=1e-5, atol=1e-7)
    assert loss[1] == 0 and not dz[1].any()                           # no label: no target at all
    plain, _ = softmax_cross_entropy(z, None, labels, 3)
    assert plain[0] == pytest.approx(-math.log(p[1]), rel=1e-6)


def _plan():
    plan = make_plan(200, 20, 300, 30, lr=1e-2)
    plan["train"]["label_smoothing"] = 0.1
    return plan


def test_native_training_steps_match_the_interpreter_with_smoothing():
    nx, ix = pair(_plan(), must_be_native=True)
    rng = np.random.default_rng(5)
    for _ in range(3):
        batch = make_batch(rng, 12, 200, 300)
        active = {"scores": random_active(rng, batch.labels, 12, 300, 30)}
        np.testing.assert_allclose(nx.train_step(batch, 1e-2, active=active),
                                   ix.train_step(batch, 1e-2, active=active), rtol=RTOL, atol=ATOL)
    for layer in ix.state.params:
        for t in ix.state.params[layer]:
            np.testing.assert_allclose(nx.state.params[layer][t], ix.state.params[layer][t], rtol=1e-3, atol=1e-5)


def test_one_and_two_threads_identical_and_smoothing_changes_the_step():
    s1, s2, one, two = twin_executors(_plan())
    rng = np.random.default_rng(6)
    batch = make_batch(rng, 33, 200, 300)
    np.testing.assert_array_equal(one.train_step(batch, 1e-2), two.train_step(batch, 1e-2))
    np.testing.assert_array_equal(s1.params["scores"]["W"], s2.params["scores"]["W"])
    plain = make_plan(200, 20, 300, 30, lr=1e-2)
    p1, _, ex, _ = twin_executors(plain)
    ex.train_step(batch, 1e-2)
    assert not np.array_equal(p1.params["scores"]["W"], s1.params["scores"]["W"])


def test_the_setting_reaches_the_plan_and_overrides_are_checked():
    src = '''model m {
  input x: sparse(20)
  target y: label(4)
  s = fc(x, 4, softmax)
  loss cross_entropy(s, y)
  train { label_smoothing 0.1 }
}'''
    assert boltc.compile(src).plan["train"]["label_smoothing"] == 0.1
    with pytest.raises(BoltError, match="label_smoothing must be a share"):
        boltc.compile(src, label_smoothing=1.0)


def test_a_binary_loss_is_refused_at_the_setting():
    from boltc.commands.check import check_source
    src = '''model m {
  input x: sparse(20)
  target y: binary
  s = fc(x, 1, sigmoid)
  loss binary_cross_entropy(s, y)
  train { label_smoothing 0.1 }
}'''
    with pytest.raises(BoltError) as info:
        check_source(src, "m.bolt")
    errors = getattr(info.value, "errors", [info.value])
    assert [(e.location.line, e.location.column) for e in errors] == [(6, 27)]
    assert "label_smoothing needs a cross_entropy loss" in errors[0].message
