"""Every op's gradient (NUMPY_RULES backward) against central finite differences, in float64.

Objective: f = sum(R * value) for a fixed random R (pairs: over the active positions); the backward rule
fed dvalue = R must give df/dparam and df/dinput; the loss rules are checked the same way on z.
"""
import numpy as np
import pytest
import scipy.sparse as sp

from boltc.runtime.exec.numpy_rules import LOSS_RULES, NUMPY_RULES, activate

EPS = 1e-6


def _num_grad(f, a):
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + EPS; fp = f()
        a[i] = old - EPS; fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * EPS)
    return g


def _value_array(v):
    return v[1] if isinstance(v, tuple) else v


def _check(layer, params, inputs, active=None, as_pairs=False, seed=0):
    rng = np.random.default_rng(seed)
    rule = NUMPY_RULES[layer["op"]]
    v, cache = rule.forward(layer, params, inputs, active, as_pairs)
    R = rng.standard_normal(_value_array(v).shape)
    if not as_pairs and active is not None:
        R = R * (_value_array(v) != 0 if layer["activation"] == "relu" else 1)

    def f():
        out = _value_array(rule.forward(layer, params, inputs, active, as_pairs)[0])
        return float((R * out).sum())

    in_grads, pgrads = rule.backward(layer, params, cache, R)
    for name, p in params.items():
        num = _num_grad(f, p)
        got = pgrads[name].dense(p.shape)
        np.testing.assert_allclose(got, num, rtol=1e-5, atol=1e-7, err_msg=f"{layer['op']} d{name}")
    for i, x in enumerate(inputs):
        if sp.issparse(x):
            assert in_grads[i] is None
            continue
        np.testing.assert_allclose(in_grads[i], _num_grad(f, x), rtol=1e-5, atol=1e-7,
                                   err_msg=f"{layer['op']} dinput{i}")


def _fc(in_dim, dim, act, layout="out_major", bias=True):
    return {"name": "l", "op": "fc", "inputs": ["x"], "in_dim": in_dim, "dim": dim, "activation": act,
            "bias": bias, "layout": layout}


def _params(rng, shape_w, dim, bias=True):
    p = {"W": rng.standard_normal(shape_w)}
    if bias:
        p["b"] = rng.standard_normal(dim) * 0.1
    return p


def _sparse_x(rng, B, d):
    x = sp.random(B, d, density=0.3, format="csr", random_state=np.random.RandomState(1), dtype=np.float64)
    x.data = rng.standard_normal(x.nnz)
    return x


def _active(rng, B, dim, k):
    return np.stack([rng.choice(dim, k, replace=False) for _ in range(B)]).astype(np.int32)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "linear", "softmax"])
def test_fc_dense(act):
    rng = np.random.default_rng(0)
    _check(_fc(5, 4, act), _params(rng, (4, 5), 4), [rng.standard_normal((3, 5))])


def test_fc_dense_in_major_no_bias():
    rng = np.random.default_rng(1)
    _check(_fc(5, 4, "tanh", "in_major", bias=False), _params(rng, (5, 4), 4, bias=False),
           [rng.standard_normal((3, 5))])


@pytest.mark.parametrize("act", ["relu", "sigmoid"])
def test_fc_sparse_input(act):
    rng = np.random.default_rng(2)
    _check(_fc(12, 4, act, "in_major"), _params(rng, (12, 4), 4), [_sparse_x(rng, 4, 12)])


@pytest.mark.parametrize("act", ["softmax", "linear", "sigmoid"])
def test_fc_sparse_output_pairs(act):
    rng = np.random.default_rng(3)
    _check(_fc(5, 9, act), _params(rng, (9, 5), 9), [rng.standard_normal((3, 5))],
           active=_active(rng, 3, 9, 4), as_pairs=True)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_fc_sparse_output_hidden_dense_value(act):
    rng = np.random.default_rng(4)
    layer = _fc(5, 9, act)
    params = _params(rng, (9, 5), 9)
    active = _active(rng, 3, 9, 4)
    v, _ = NUMPY_RULES["fc"].forward(layer, params, [rng.standard_normal((3, 5))], active, False)
    inactive = np.ones_like(v, dtype=bool)
    np.put_along_axis(inactive, active.astype(np.int64), False, axis=1)
    assert (v[inactive] == 0).all()          # inactive neurons output exactly 0
    _check(layer, params, [rng.standard_normal((3, 5))], active=active)


def test_fc_sparse_input_sparse_output():
    rng = np.random.default_rng(5)
    _check(_fc(12, 9, "softmax", "in_major"), _params(rng, (12, 9), 9), [_sparse_x(rng, 4, 12)],
           active=_active(rng, 4, 9, 3), as_pairs=True)


def test_fc_sparse_output_values_match_dense():
    """z over an active set equals the dense z read at those ids (the union-GEMM path is exact)."""
    rng = np.random.default_rng(6)
    layer, params = _fc(5, 9, "linear"), _params(rng, (9, 5), 9)
    x = rng.standard_normal((3, 5))
    active = _active(rng, 3, 9, 4)
    dense, _ = NUMPY_RULES["fc"].forward(layer, params, [x], None)
    (ids, z), _ = NUMPY_RULES["fc"].forward(layer, params, [x], active, True)
    np.testing.assert_allclose(z, np.take_along_axis(dense, ids.astype(np.int64), 1))
    np.testing.assert_allclose(dense, x @ params["W"].T + params["b"])


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_embedding(reduce):
    rng = np.random.default_rng(7)
    layer = {"name": "e", "op": "embedding", "inputs": ["x"], "in_dim": 12, "dim": 3, "reduce": reduce}
    x = _sparse_x(rng, 4, 12)
    params = {"W": rng.standard_normal((12, 3))}
    out, _ = NUMPY_RULES["embedding"].forward(layer, params, [x])
    dense = x.toarray() @ params["W"]
    if reduce == "mean":
        dense = dense / np.maximum(np.diff(x.indptr), 1)[:, None]
    np.testing.assert_allclose(out, dense)
    _check(layer, params, [x])


def test_concat():
    rng = np.random.default_rng(8)
    layer = {"name": "c", "op": "concat", "inputs": ["a", "b"], "dim": 7}
    _check(layer, {}, [rng.standard_normal((3, 3)), rng.standard_normal((3, 4))])


def test_layernorm():
    rng = np.random.default_rng(9)
    layer = {"name": "n", "op": "layernorm", "inputs": ["a"], "dim": 6, "eps": 1e-5}
    params = {"gamma": rng.standard_normal(6), "beta": rng.standard_normal(6)}
    x = rng.standard_normal((4, 6))
    out, _ = NUMPY_RULES["layernorm"].forward(layer, params, [x])
    ref = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5) * params["gamma"] + params["beta"]
    np.testing.assert_allclose(out, ref)
    _check(layer, params, [x])


def _labels(rows, classes):
    r = [i for i, ls in enumerate(rows) for _ in ls]
    c = [l for ls in rows for l in ls]
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), classes))


@pytest.mark.parametrize("kind", ["cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("sparse", [False, True])
def test_loss_gradients(kind, sparse):
    rng = np.random.default_rng(10)
    dim = 8
    labels = _labels([[1], [2, 5], [], [0, 3, 7]], dim)
    active = np.array([[1, 0, 4], [5, 2, 6], [3, 1, 0], [3, 0, 2]], dtype=np.int32) if sparse else None
    z = rng.standard_normal((4, 3 if sparse else dim)) * 3
    loss, dz = LOSS_RULES[kind](z, active, labels, dim)

    def f():
        return float(LOSS_RULES[kind](z, active, labels, dim)[0].sum())
    np.testing.assert_allclose(dz, _num_grad(f, z), rtol=1e-5, atol=1e-8)


def test_cross_entropy_hand_values():
    z = np.log(np.array([[1.0, 2.0, 1.0]]))            # p = 1/4, 1/2, 1/4
    loss, dz = LOSS_RULES["cross_entropy"](z, np.array([[4, 7, 9]]), _labels([[7, 9]], 10), 10)
    np.testing.assert_allclose(loss, [-(0.5 * np.log(0.5) + 0.5 * np.log(0.25))])
    np.testing.assert_allclose(dz, [[0.25, 0.0, -0.25]])
    # a label cut from the active set contributes nothing; dz = (sum t) p - t
    loss, dz = LOSS_RULES["cross_entropy"](z, np.array([[4, 7, 5]]), _labels([[7, 9]], 10), 10)
    np.testing.assert_allclose(loss, [-0.5 * np.log(0.5)])
    np.testing.assert_allclose(dz, [[0.125, 0.25 - 0.5, 0.125]])


def test_binary_cross_entropy_hand_values():
    loss, dz = LOSS_RULES["binary_cross_entropy"](np.array([[0.0], [2.0]]), None, _labels([[0], []], 1), 1)
    np.testing.assert_allclose(loss, [np.log(2), np.log(1 + np.exp(2.0))])
    np.testing.assert_allclose(dz, [[-0.5], [1 / (1 + np.exp(-2.0))]])


def test_softmax_is_over_given_columns():
    z = np.array([[0.0, np.log(3.0)]])
    np.testing.assert_allclose(activate("softmax", z), [[0.25, 0.75]])


@pytest.mark.parametrize("act", ["softmax", "relu"])
def test_fc_wide_sparse_output_gather_path(act, monkeypatch):
    """The per-example gather path of wide layers (union >> k) has the same values and gradients."""
    monkeypatch.setattr("boltc.ops.fc.UNION_RATIO", 0)
    rng = np.random.default_rng(11)
    layer, params = _fc(5, 40, act), _params(rng, (40, 5), 40)
    x = rng.standard_normal((4, 5))
    active = _active(rng, 4, 40, 3)
    _, cache = NUMPY_RULES["fc"].forward(layer, params, [x], active, act == "softmax")
    assert cache["gather"]
    dense, _ = NUMPY_RULES["fc"].forward({**layer, "activation": "linear"}, params, [x], None)
    np.testing.assert_allclose(cache["z"], np.take_along_axis(dense, active.astype(np.int64), 1))
    _check(layer, params, [x], active=active, as_pairs=act == "softmax")
