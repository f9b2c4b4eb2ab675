"""Dense fc layers on both native paths (BLAS sgemm + the generated optimizer kernels, and the generated
dot-product kernels) against the NumPy interpreter (the spec), on random shapes including the edges:
one row, widths of 1 and widths that are not a multiple of the vector width; and the same bits for one
and two threads. Tolerances as in tests/test_native.py (float32 reassociation only), except that
parameters get atol 1e-5 after three Adam steps (tests/test_native.py explains why a weight whose
gradient is ~0 moves by up to lr * its rounding; behind a tanh layer that reached 4e-6 at lr 1e-3, on
the generated kernels as on BLAS)."""
import numpy as np
import pytest

from boltc.ops import fc as native_ops  # the dense fc runner and its BLAS thresholds live with the op
from native_helpers import make_batch, make_plan, pair, twin_executors
from test_native import ATOL, RTOL, assert_params_close

PATHS = {"blas": 0, "kernels": 1 << 62}

# (batch, input width, hidden width, output width, extra dense hidden layers)
EDGES = [(1, 40, 16, 30, 0), (1, 1, 1, 3, 0), (3, 7, 5, 3, 1), (17, 33, 19, 257, 1), (64, 130, 65, 9, 0)]


def _random_shapes(n=4, seed=11):
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(1, 70)), int(rng.integers(1, 150)), int(rng.integers(1, 80)),
             int(rng.integers(3, 300)), int(rng.integers(0, 2))) for _ in range(n)]


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("B,in_dim,hidden,out_dim,extra", EDGES + _random_shapes())
def test_dense_training_matches_the_interpreter(monkeypatch, path, B, in_dim, hidden, out_dim, extra):
    monkeypatch.setattr(native_ops, "DENSE_BLAS_MIN_MACS", PATHS[path])
    monkeypatch.setattr(native_ops, "DENSE_BLAS_MIN_BATCH_BACKWARD", 1)
    plan = make_plan(in_dim, hidden, out_dim, None, sparse_input=False, extra_hidden=extra)
    nx, ix = pair(plan, must_be_native=True)
    used = [native_ops.dense_blas(nx, l, B, backward=True) for l in plan["layers"]]
    assert all(used) if path == "blas" else not any(used)
    rng = np.random.default_rng(B * 1000 + in_dim)
    for _ in range(3):
        batch = make_batch(rng, B, in_dim, out_dim, sparse_input=False)
        np.testing.assert_allclose(nx.train_step(batch, 1e-3), ix.train_step(batch, 1e-3), rtol=RTOL, atol=ATOL)
    assert_params_close(nx.state, ix.state, lr=1e-2)
    batch = make_batch(rng, B, in_dim, out_dim, sparse_input=False)
    a, b = nx.forward(batch, "dense"), ix.forward(batch, "dense")
    for layer in plan["layers"]:
        np.testing.assert_allclose(a[layer["name"]], b[layer["name"]], rtol=RTOL, atol=ATOL, err_msg=layer["name"])


@pytest.mark.parametrize("moments", ["f32", "bf16"])
def test_blas_path_with_each_moment_storage_and_weight_decay_matches_the_interpreter(monkeypatch, moments):
    monkeypatch.setattr(native_ops, "DENSE_BLAS_MIN_MACS", 0)
    monkeypatch.setattr(native_ops, "DENSE_BLAS_MIN_BATCH_BACKWARD", 1)
    plan = make_plan(37, 21, 45, None, sparse_input=False, extra_hidden=1)
    plan["train"]["weight_decay"] = 0.01
    plan["train"]["moment_dtypes"] = {l["name"]: {"W": moments, "b": "f32"} for l in plan["layers"]}
    nx, ix = pair(plan, must_be_native=True)
    rng = np.random.default_rng(5)
    for _ in range(3):
        batch = make_batch(rng, 13, 37, 45, sparse_input=False)
        np.testing.assert_allclose(nx.train_step(batch, 1e-3), ix.train_step(batch, 1e-3), rtol=RTOL, atol=ATOL)
    if moments == "f32":
        assert_params_close(nx.state, ix.state, lr=1e-2)
    else:          # bf16 moments round the same way in both (tests/test_optim_bf16.py); weights compared
        for layer in nx.state.params:
            for t, w in nx.state.params[layer].items():
                np.testing.assert_allclose(w, ix.state.params[layer][t], rtol=1e-4, atol=1e-5)


def test_blas_path_is_identical_for_one_and_two_threads(monkeypatch):
    monkeypatch.setattr(native_ops, "DENSE_BLAS_MIN_MACS", 0)
    monkeypatch.setattr(native_ops, "DENSE_BLAS_MIN_BATCH_BACKWARD", 1)
    plan = make_plan(50, 24, 61, None, sparse_input=False, extra_hidden=1)
    s1, s2, one, two = twin_executors(plan)
    rng = np.random.default_rng(8)
    for _ in range(3):
        batch = make_batch(rng, 9, 50, 61, sparse_input=False)
        np.testing.assert_array_equal(one.train_step(batch, 1e-3), two.train_step(batch, 1e-3))
    for layer in s1.params:
        for t in s1.params[layer]:
            np.testing.assert_array_equal(s1.params[layer][t], s2.params[layer][t])
            np.testing.assert_array_equal(s1.m[layer][t], s2.m[layer][t])
