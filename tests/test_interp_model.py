"""The NumpyExecutor end to end: chained gradients, learning, determinism, inference modes."""
import copy

import numpy as np
import pytest
import scipy.sparse as sp

from boltc.errors import BackendError, BoltValidationError
from boltc.runtime.data.dataset import Batch
from boltc.runtime.exec.executor import make_executor
from boltc.runtime.exec.numpy_rules import LOSS_RULES
from boltc.runtime.exec.state import ModelState

from test_interp_plans import dwta, fc, plan, separable


def _graph_plan():
    layers = [
        {"name": "e", "op": "embedding", "inputs": ["x"], "in_dim": 20, "dim": 4, "reduce": "mean",
         "input_sparse": True, "layout": "in_major"},
        fc("h", ["x"], 20, 5, "tanh", input_sparse=True),
        {"name": "c", "op": "concat", "inputs": ["e", "h"], "dim": 9},
        {"name": "n", "op": "layernorm", "inputs": ["c"], "dim": 9, "eps": 1e-5},
        fc("s", ["n"], 9, 7, "relu", active=4, hash=dwta(tables=2)),
        fc("out", ["s"], 7, 11, "softmax", active=5, hash=dwta(tables=2)),
    ]
    return plan(layers, 20, 11, optimizer="sgd")


def test_chained_gradient_matches_finite_differences():
    """train_step with SGD lr=1 moves each parameter by exactly its gradient of the batch-mean loss;
    compare with central differences of that loss through the whole graph (fixed active sets)."""
    p = _graph_plan()
    state = ModelState.init(p, seed=3)
    rng = np.random.default_rng(0)
    for name, tensors in state.params.items():
        for k in tensors:
            tensors[k] = (rng.standard_normal(tensors[k].shape) * 0.5).astype(np.float64)
    x = sp.random(3, 20, density=0.3, format="csr", random_state=np.random.RandomState(2), dtype=np.float64)
    labels = sp.csr_matrix((np.ones(4), ([0, 1, 1, 2], [2, 4, 9, 10])), shape=(3, 11))
    batch = Batch(inputs={"x": x}, labels=labels, weights=np.array([1.0, 2.0, 0.5]))
    active = {"s": np.array([[0, 1, 2, 3], [6, 5, 4, 3], [1, 3, 5, 0]]),
              "out": np.array([[2, 0, 1, 5, 7], [4, 9, 3, 1, 6], [10, 0, 2, 8, 6]])}
    ex = make_executor(p, state)

    def mean_loss():
        _, caches = ex._run(batch, "train", active, np.random.default_rng(0))
        c = caches["out"]
        loss, _ = LOSS_RULES["cross_entropy"](c["z"], c["active"], labels, 11)
        return float((loss * batch.weights).mean())

    before = copy.deepcopy(state.params)
    numeric = {}
    for name, tensors in state.params.items():
        for k, a in tensors.items():
            g = np.zeros_like(a)
            for i in np.ndindex(a.shape):
                old = a[i]
                a[i] = old + 1e-6; fp = mean_loss()
                a[i] = old - 1e-6; fm = mean_loss()
                a[i] = old
                g[i] = (fp - fm) / 2e-6
            numeric[(name, k)] = g
    ex.train_step(batch, lr=1.0, active=active)
    for (name, k), g in numeric.items():
        if k == "label_count":
            continue
        moved = before[name][k] - state.params[name][k]
        np.testing.assert_allclose(moved, g, rtol=1e-5, atol=1e-8, err_msg=f"{name}.{k}")


def _train(p, ds, epochs, batch=32):
    state = ModelState.init(p)
    ex = make_executor(p, state)
    n = ds.rows
    nb = -(-n // batch)
    for ep in range(epochs):
        perm = np.random.default_rng(ep).permutation(n)
        for bi in range(nb):
            ex.train_step(ds.take(perm[bi * batch:(bi + 1) * batch]), p["train"]["lr"])
            ex.after_step(ep, bi, nb)
    return ex


def _p_at_1(ex, ds, sparse):
    ids, scores = ex.predict(ds.take(np.arange(ds.rows)), 1, sparse=sparse)
    return ds.labels.toarray()[np.arange(ds.rows), ids[:, 0]].mean()


@pytest.mark.parametrize("sparse_out", [False, True])
def test_tiny_model_learns_separable_task(sparse_out):
    train, test = separable(2000, 150, 60, seed=1), None
    layers = [fc("h", ["x"], 150, 32, "relu", input_sparse=True),
              fc("out", ["h"], 32, 60, "softmax", active=15 if sparse_out else None,
                 hash=dwta(tables=6) if sparse_out else None)]
    p = plan(layers, 150, 60, lr=1e-2)
    ex = _train(p, train, epochs=4)
    dense = _p_at_1(ex, train, sparse=False)
    assert dense >= 0.97
    if sparse_out:
        assert _p_at_1(ex, train, sparse=True) >= 0.97


def test_dense_and_sparse_inference_agree_on_wide_output():
    """Many labels never appear in training (as in BOLT's 100k problem): dense inference must not be
    taken over by their untrained rows, and must agree with sparse inference."""
    rng = np.random.default_rng(0)
    ds = separable(1500, 200, 60, seed=2)                      # a learnable task over 60 classes ...
    seen = rng.choice(400, 60, replace=False)                   # ... placed on 60 of 400 output neurons
    y = seen[ds.labels.indices[ds.labels.indptr[:-1]]]
    ds.labels = sp.csr_matrix((np.ones(ds.rows, np.float32), (np.arange(ds.rows), y)), shape=(ds.rows, 400))
    layers = [fc("h", ["x"], 200, 32, "relu", input_sparse=True),
              fc("out", ["h"], 32, 400, "softmax", active=40, hash=dwta(tables=8, hashes=3))]
    p = plan(layers, 200, 400, lr=1e-2)
    ex = _train(p, ds, epochs=4)
    d, s = _p_at_1(ex, ds, False), _p_at_1(ex, ds, True)
    assert d >= 0.95 and s >= 0.95 and abs(d - s) <= 0.02
    ids, _ = ex.predict(ds.take(np.arange(200)), 5)
    assert np.isin(ids, seen).all()                             # never an unseen label


def test_training_is_deterministic_and_resumable():
    ds = separable(256, 60, 30, seed=3)
    layers = [fc("h", ["x"], 60, 16, "relu", input_sparse=True),
              fc("out", ["h"], 16, 30, "softmax", active=10, hash=dwta(tables=4))]
    p = plan(layers, 60, 30, lr=1e-2)
    a = _train(p, ds, epochs=2)
    b = _train(p, ds, epochs=2)
    for name in a.state.params:
        for k in a.state.params[name]:
            np.testing.assert_array_equal(a.state.params[name][k], b.state.params[name][k])
    # stop after epoch 0, copy the state (as a checkpoint would), continue in a new executor
    state = ModelState.init(p)
    ex = make_executor(p, state)
    for bi in range(8):
        ex.train_step(ds.take(np.random.default_rng(0).permutation(256)[bi * 32:(bi + 1) * 32]), 1e-2)
        ex.after_step(0, bi, 8)
    resumed = make_executor(p, copy.deepcopy(state))
    for bi in range(8):
        resumed.train_step(ds.take(np.random.default_rng(1).permutation(256)[bi * 32:(bi + 1) * 32]), 1e-2)
        resumed.after_step(1, bi, 8)
    for name in a.state.params:
        for k in a.state.params[name]:
            np.testing.assert_array_equal(a.state.params[name][k], resumed.state.params[name][k])


def test_example_weights_scale_the_gradient():
    ds = separable(16, 30, 5, seed=4)
    p = plan([fc("out", ["x"], 30, 5, "softmax", input_sparse=True)], 30, 5, optimizer="sgd", lr=0.1)
    s1, s2 = ModelState.init(p), ModelState.init(p)
    b1 = ds.take(np.arange(16))
    b2 = ds.take(np.arange(16)); b2.weights = np.full(16, 2.0, np.float32)
    make_executor(p, s1).train_step(b1, 0.2)
    make_executor(p, s2).train_step(b2, 0.1)
    np.testing.assert_allclose(s1.params["out"]["W"], s2.params["out"]["W"], rtol=1e-5, atol=1e-7)


def test_binary_target_learns():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    y = (x @ np.array([1, -2, 0.5, 0, 1, 0]) > 0)
    labels = sp.csr_matrix((np.ones(y.sum(), np.float32), (np.flatnonzero(y), np.zeros(y.sum(), int))), shape=(400, 1))
    p = plan([fc("h", ["x"], 6, 8, "tanh"), fc("out", ["h"], 8, 1, "sigmoid")], 6, 1,
             loss="binary_cross_entropy", input_kind="dense", target_kind="binary", lr=0.05)
    state = ModelState.init(p)
    ex = make_executor(p, state)
    for ep in range(30):
        for i in range(0, 400, 40):
            ex.train_step(Batch(inputs={"x": x[i:i + 40]}, labels=labels[i:i + 40]), 0.05)
    prob = ex.forward(Batch(inputs={"x": x}, labels=None), "dense")["out"][:, 0]
    assert ((prob > 0.5) == y).mean() >= 0.95


def test_predict_is_sorted_topk():
    ds = separable(10, 30, 8, seed=6)
    p = plan([fc("out", ["x"], 30, 8, "softmax", input_sparse=True)], 30, 8)
    ex = make_executor(p, ModelState.init(p))
    ids, scores = ex.predict(ds.take(np.arange(10)), 3)
    full = ex.forward(ds.take(np.arange(10)), "dense")["out"]
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(scores, -np.sort(-full, axis=1)[:, :3], rtol=1e-6)
    ids, scores = ex.predict(ds.take(np.arange(2)), 10)          # more than the classes: padded
    assert (ids[:, 8:] == -1).all() and np.isneginf(scores[:, 8:]).all()


def test_native_backend_missing_is_a_backend_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "boltc.runtime.exec.native", None)
    p = plan([fc("out", ["x"], 30, 8, "softmax", input_sparse=True)], 30, 8)
    with pytest.raises(BackendError):
        make_executor(p, ModelState.init(p), backend="native")
    with pytest.raises(BackendError):
        make_executor(p, ModelState.init(p), backend="gpu")


def test_unknown_op_is_a_validation_error():
    p = plan([{"name": "q", "op": "conv", "inputs": ["x"], "dim": 3}], 30, 3)
    with pytest.raises(BoltValidationError):
        make_executor(p, ModelState(params={}, m={}, v={}))


def test_neurons_never_seen_as_labels_are_excluded_from_inference():
    """A neuron that was never a training label cannot win, in dense or sparse inference, even when its
    (untrained) weights would give it the top score; before any training nothing is masked."""
    ds = separable(200, 60, 20, seed=7)
    layers = [fc("h", ["x"], 60, 16, "relu", input_sparse=True),
              fc("out", ["h"], 16, 20, "softmax", active=10, hash=dwta(tables=4))]
    p = plan(layers, 60, 20, lr=1e-2)
    state = ModelState.init(p)
    ex = make_executor(p, state)
    batch = ds.take(np.arange(50))
    state.params["out"]["b"][7] = 100.0                         # neuron 7 would win everywhere
    assert (ex.predict(batch, 1)[0][:, 0] == 7).all()          # untrained model: nothing masked
    keep = np.asarray(ds.labels.argmax(1)).ravel() != 7
    train = ds.take(np.flatnonzero(keep))
    ex.train_step(train, 1e-2)
    state.params["out"]["b"][7] = 100.0
    assert state.params["out"]["label_count"][7] == 0 and state.params["out"]["label_count"].sum() == keep.sum()
    for sparse in (False, True):
        ids, scores = ex.predict(batch, 3, sparse=sparse)
        assert not (ids == 7).any()


def test_batch_without_an_input_is_a_validation_error():
    p = plan([fc("out", ["x"], 30, 8, "softmax", input_sparse=True)], 30, 8)
    ex = make_executor(p, ModelState.init(p))
    with pytest.raises(BoltValidationError, match="x"):
        ex.predict(Batch(inputs={"other": np.zeros((2, 30), np.float32)}, labels=None), 1)
