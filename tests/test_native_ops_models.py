"""Whole DAG models natively vs the interpreter (the spec), fed the same active sets: models/hybrid.bolt
(embedding bag + fc over one sparse input, concat, layernorm, LSH-sparse softmax; SGD with momentum)
the README's every-construct model (four input kinds, a dense-input fc, Adam, a DWTA output) and a
chain with an LSH-sparse hidden layer (DWTA) under an SRP-sparse output.

Tolerance (float32): as tests/test_native.py, rtol 1e-5 / atol 1e-6, with one stated exception:
layernorm divides its input's rounding error by the row's standard deviation, which is ~0.01 at
initialisation (weights N(0, 0.01)), so its output and every value after it are compared with atol
scaled by max(1/std) of its input row (taken from the spec's values). Parameters: atol 1e-3 * lr after
Adam steps, 1e-6 * lr-scaled magnitudes after SGD (see assert_params_close). Runs with 1 and 2 threads
must be bit-identical (forward, LSH selection, training).
"""

import native_helpers as helpers
import numpy as np
import pytest
import scipy.sparse as sp

import boltc
from boltc.runtime.data.dataset import Batch, as_csr
from native_helpers import random_active, twin_executors

RTOL, ATOL = 1e-5, 1e-6
MODELS = __import__("pathlib").Path(__file__).resolve().parent.parent / "models"

EVERYTHING = """model everything {
  input  feats: sparse(500)
  input  price: dense(4)
  input  body:  text(dim=1024)
  input  shop:  categorical(dim=256)
  target topic: label(700)
  bag    = embedding(shop, 16, reduce=sum)
  wide   = fc(body, 24, relu)
  f2     = fc(feats, 12, tanh, bias=true)
  p2     = fc(price, 8, sigmoid)
  joined = concat(bag, wide, f2, p2)
  normed = layernorm(joined, eps=1e-5)
  scores = fc(normed, 700, softmax, sparsity=0.2, hash=auto)
  loss    cross_entropy(scores, topic)
  metrics precision@1
}"""


def sparse_batch(rng, B, dim, nnz, one_hot=False):
    rows = [np.sort(rng.choice(dim, size=1 if one_hot else int(rng.integers(1, nnz + 1)), replace=False))
            for _ in range(B)]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    vals = np.ones(indptr[-1], np.float32) if one_hot else (rng.random(indptr[-1]) + 0.1).astype(np.float32)
    return as_csr(sp.csr_matrix((vals, np.concatenate(rows).astype(np.int32), indptr), shape=(B, dim)))


def batch_for(plan, rng, B):
    inputs = {}
    for i in plan["inputs"]:
        if i["kind"] == "dense":
            inputs[i["name"]] = rng.standard_normal((B, i["dim"])).astype(np.float32)
        else:
            inputs[i["name"]] = sparse_batch(rng, B, i["dim"], 20, one_hot=i["kind"] == "categorical")
    classes = plan["target"]["classes"]
    return Batch(inputs=inputs, labels=sparse_batch(rng, B, classes, 3))


def pair(plan, threads=2):
    return helpers.pair(plan, threads, must_be_native=True)


def norm_factor(values, plan):
    """max over rows of 1/std of each layernorm's input (the spec's values)."""
    f = 1.0
    for l in plan["layers"]:
        if l["op"] == "layernorm":
            x = values[l["inputs"][0]]
            f = max(f, float((1 / np.sqrt(x.var(axis=1) + l["eps"])).max()))
    return f


def assert_values_close(fa, fb, plan):
    after_norm, factor = False, norm_factor(fb, plan)
    for l in plan["layers"]:
        after_norm = after_norm or l["op"] == "layernorm"
        a, b = fa[l["name"]], fb[l["name"]]
        if isinstance(b, tuple):
            np.testing.assert_array_equal(a[0], b[0])
            a, b = a[1], b[1]
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL * (factor if after_norm else 1), err_msg=l["name"])


def assert_params_close(a, b, lr):
    for layer in a.params:
        for t in a.params[layer]:
            ref = b.params[layer][t]
            atol = 1e-3 * lr * max(1.0, float(np.abs(ref).max(initial=0)))
            np.testing.assert_allclose(a.params[layer][t], ref, rtol=RTOL, atol=atol, err_msg=f"{layer}.{t}")


SPARSE_HIDDEN = """model deep {
  input  x: sparse(400)
  target y: multilabel(300)
  h1     = fc(x, 32, relu)
  h2     = fc(h1, 200, tanh, sparsity=0.1, hash=auto)
  scores = fc(h2, 300, softmax, sparsity=0.1, hash=srp())
  loss   cross_entropy(scores, y)
}"""


def active_sets(plan, rng, labels, B):
    """Random active sets for every sparse layer (the output's hold the labels first)."""
    out = {}
    for l in plan["layers"]:
        if l["op"] == "fc" and l["active"] < l["dim"]:
            if l["name"] == plan["output"]:
                out[l["name"]] = random_active(rng, labels, B, l["dim"], l["active"])
            else:
                out[l["name"]] = np.stack([rng.permutation(l["dim"])[:l["active"]] for _ in range(B)]).astype(np.int32)
    return out


def hybrid_plan():
    return boltc.compile(str(MODELS / "hybrid.bolt")).plan


def everything_plan():
    return boltc.compile(EVERYTHING).plan


def sparse_hidden_plan():
    plan = boltc.compile(SPARSE_HIDDEN).plan
    # a sparse tanh layer between two others makes gradients of ~eps (1e-7), where Adam's first step
    # lr * g / (|g| + eps) turns rounding into ~1e-3 lr: eps 1e-4 keeps the test about the kernels
    # (as tests/test_native.py does for its extra hidden layer)
    plan["train"]["eps"] = 1e-4
    return plan


PLANS = pytest.mark.parametrize("make", [hybrid_plan, everything_plan, sparse_hidden_plan],
                                ids=["hybrid", "everything", "sparse_hidden"])


@PLANS
def test_training_steps_match_interpreter(make):
    plan = make()
    out = next(l for l in plan["layers"] if l["name"] == plan["output"])
    assert out["active"] < out["dim"]
    nx, ix = pair(plan)
    rng = np.random.default_rng(0)
    lr = plan["train"]["lr"]
    for step in range(4):
        B = 40 if step % 2 else 9                  # neuron-order (B >= 32) and gather paths
        batch = batch_for(plan, rng, B)
        batch.weights = (rng.random(B) + 0.5).astype(np.float32) if step == 2 else None
        active = active_sets(plan, rng, batch.labels, B)
        assert_values_close(nx.forward(batch, "train", active), ix.forward(batch, "train", active), plan)
        np.testing.assert_allclose(nx.train_step(batch, lr, active=active), ix.train_step(batch, lr, active=active),
                                   rtol=RTOL, atol=ATOL * 10)
        assert nx.state.step == ix.state.step
        assert_params_close(nx.state, ix.state, lr)
    dense = batch_for(plan, rng, 33)
    assert_values_close(nx.forward(dense, "dense"), ix.forward(dense, "dense"), plan)
    ia, _ = nx.predict(dense, 3)
    ib, _ = ix.predict(dense, 3)
    np.testing.assert_array_equal(ia, ib)


@PLANS
def test_forward_and_training_identical_for_one_and_two_threads(make):
    plan = make()
    s1, s2, one, two = twin_executors(plan)
    rng = np.random.default_rng(1)
    for _ in range(3):
        batch = batch_for(plan, rng, 37)
        for mode in ("dense", "sparse", "train"):
            a, b = one.forward(batch, mode), two.forward(batch, mode)
            for name in [l["name"] for l in plan["layers"]]:
                x, y = (a[name], b[name]) if not isinstance(a[name], tuple) else (a[name][1], b[name][1])
                np.testing.assert_array_equal(x, y, err_msg=f"{mode} {name}")
        np.testing.assert_array_equal(one.train_step(batch, 1e-2), two.train_step(batch, 1e-2))
    for layer in s1.params:
        for t in s1.params[layer]:
            np.testing.assert_array_equal(s1.params[layer][t], s2.params[layer][t], err_msg=f"{layer}.{t}")
            np.testing.assert_array_equal(s1.m[layer][t], s2.m[layer][t])


def test_small_kernels_kept_on_one_thread_give_the_same_bits(monkeypatch):
    """Below MIN_WORK_PER_THREAD a kernel runs unsplit (the default outside the tests): same results."""
    from boltc.runtime.exec import native_ops
    plan = hybrid_plan()
    s1, s2, split, whole = twin_executors(plan, threads=(2, 2))
    rng = np.random.default_rng(3)
    for _ in range(3):
        batch = batch_for(plan, rng, 40)
        monkeypatch.setattr(native_ops, "MIN_WORK_PER_THREAD", 0)
        la = split.train_step(batch, 1e-2)
        monkeypatch.setattr(native_ops, "MIN_WORK_PER_THREAD", 1 << 18)
        lb = whole.train_step(batch, 1e-2)
        np.testing.assert_array_equal(la, lb)
    for layer in s1.params:
        for t in s1.params[layer]:
            np.testing.assert_array_equal(s1.params[layer][t], s2.params[layer][t], err_msg=f"{layer}.{t}")
