"""dropout(x, rate): its mask against a plain-Python hash, train-only semantics, the native backend
bit for bit against the interpreter, 1 vs 2 threads, and a killed + resumed run against an
uninterrupted one."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from boltc.frontend import format_source, parse
from boltc.lower.rules import native_support
from boltc.ops import OPS
from boltc.ops.base import RunContext
from boltc.ops.dropout import keep_mask, scale
from boltc.pipeline import load_model_source
from boltc.runtime.exec.interp import NumpyExecutor
from boltc.runtime.exec.native import NativeExecutor
from boltc.runtime.exec.native_ops import NATIVE_OPS, Step
from boltc.runtime.exec.numpy_rules import NUMPY_RULES
from boltc.runtime.exec.state import ModelState
from native_helpers import make_batch
from runtime_models import kill_and_resume

M64 = (1 << 64) - 1


def source(epochs: int = 3, rows: int = 400, rate: float = 0.3, sparsity: float = 0.25) -> str:
    return f"""
model drop {{
  input  features: sparse(300)
  target labels:   multilabel(40)
  hidden  = fc(features, 32, relu)
  dropped = dropout(hidden, {rate})
  scores  = fc(dropped, 40, softmax, sparsity={sparsity})
  loss    cross_entropy(scores, labels)
  metrics precision@1
  train {{
    optimizer adam(lr=1e-2)
    batch     32
    epochs    {epochs}
  }}
  data {{
    train synthetic(rows={rows}, seed=1, nnz=20, proto_nnz=24, max_labels=1, noise=0.0)
    test  synthetic(rows=100, seed=2, nnz=20, proto_nnz=24, max_labels=1, noise=0.0)
  }}
}}
"""


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def test_mask_is_the_documented_hash():
    key, rows, dim, rate = (1 << 62) + 12345, 3, 7, 0.4
    got = keep_mask(key, rows, dim, rate)
    want = np.array([[(splitmix64((key + b * dim + j) & M64) >> 32) >= int(rate * 2**32) for j in range(dim)]
                     for b in range(rows)])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_share_dropped_is_the_rate(rate):
    kept = keep_mask(987654321, 400, 500, rate).mean()
    assert abs((1 - kept) - rate) < 0.005          # 200k draws: 5 standard deviations at most ~0.0056


def test_training_only_scaled_and_its_gradient():
    op, layer = OPS["dropout"], {"name": "d", "op": "dropout", "inputs": ["h"], "dim": 50, "rate": 0.25}
    x = np.random.default_rng(0).standard_normal((20, 50))
    for mode in ("dense", "sparse"):
        y, cache = op.forward(layer, {}, [x], ctx=RunContext(mode, 99, 3))
        assert y is x
        assert op.backward(layer, {}, cache, x)[0][0] is x
    ctx = RunContext("train", 99, 3)
    y, cache = op.forward(layer, {}, [x], ctx=ctx)
    keep = keep_mask(ctx.layer_seed("d"), 20, 50, 0.25)
    np.testing.assert_array_equal(y, np.where(keep, x * (1 / 0.75), 0.0))
    g = np.random.default_rng(1).standard_normal(x.shape)
    (dx,), pgrads = op.backward(layer, {}, cache, g, ctx=ctx)
    np.testing.assert_array_equal(dx, np.where(keep, g * (1 / 0.75), 0.0))
    assert pgrads == {}
    # another step's seed, or another layer name, drops other values
    assert not np.array_equal(keep, keep_mask(RunContext("train", 98, 3).layer_seed("d"), 20, 50, 0.25))
    assert not np.array_equal(keep, keep_mask(ctx.layer_seed("e"), 20, 50, 0.25))


@pytest.fixture(scope="module")
def plan():
    _, p = load_model_source(source())
    assert native_support(p) is None, "dropout must lower natively"
    return p


def test_native_kernels_equal_the_interpreter_bit_for_bit(plan):
    layer = next(l for l in plan["layers"] if l["op"] == "dropout")
    state = ModelState.init(plan)
    nx = NativeExecutor(plan, state, threads=2)
    x = np.ascontiguousarray(np.random.default_rng(2).standard_normal((64, layer["dim"])), dtype=np.float32)
    g = np.ascontiguousarray(np.random.default_rng(3).standard_normal(x.shape), dtype=np.float32)
    for step_no in (0, 7):
        seed = nx._seed("train")
        step = Step("train", None, x.shape[0], seed=seed, step=step_no)
        y_native, cache_native = NATIVE_OPS["dropout"][0](nx, layer, [x], step)
        ctx = RunContext("train", seed, step_no)
        y_spec, cache_spec = NUMPY_RULES["dropout"].forward(layer, {}, [x], None, False, ctx)
        assert y_native.dtype == y_spec.dtype == np.float32
        np.testing.assert_array_equal(y_native, y_spec)
        (dx_native,) = NATIVE_OPS["dropout"][1](nx, layer, cache_native, g, step)
        (dx_spec,), _ = NUMPY_RULES["dropout"].backward(layer, {}, cache_spec, g, False, ctx)
        np.testing.assert_array_equal(dx_native, dx_spec)
        state.step += 1
    # and both executors choose the same seed for a step
    ix = NumpyExecutor(plan, state)
    assert ix.context("train").seed == nx._seed("train")


def _train(plan, ex_cls, steps, threads=None):
    state = ModelState.init(plan)
    ex = ex_cls(plan, state) if threads is None else ex_cls(plan, state, threads=threads)
    rng = np.random.default_rng(5)
    for _ in range(steps):
        batch = make_batch(rng, 32, 300, 40, max_labels=1)
        ex.train_step(batch, 1e-2)
    return state


def test_training_matches_the_interpreter():
    """Same masks in both backends: the trained weights agree to float32 rounding (different masks
    would move different weights by whole learning-rate steps). A dense output, so that the LSH
    active sets (drawn by each backend's own generator) do not differ."""
    _, dense = load_model_source(source(sparsity=1.0))
    a = _train(dense, NativeExecutor, 6, threads=2)
    b = _train(dense, NumpyExecutor, 6)
    for layer, tensors in b.params.items():
        for t, arr in tensors.items():
            np.testing.assert_allclose(a.params[layer][t], arr, rtol=1e-4, atol=2e-6, err_msg=f"{layer}.{t}")


def test_one_and_two_threads_are_bit_identical(plan):
    a = _train(plan, NativeExecutor, 6, threads=1)
    b = _train(plan, NativeExecutor, 6, threads=2)
    for layer, tensors in a.params.items():
        for t, arr in tensors.items():
            np.testing.assert_array_equal(b.params[layer][t], arr, err_msg=f"{layer}.{t}")


def test_rate_auto_is_a_tunable_value():
    g = parse(source().replace("dropout(hidden, 0.3)", "dropout(hidden, auto)"), "d.bolt")
    (t,) = [t for t in g.graph["tunable"] if t.kind == "dropout"]
    assert t.where == ("layer", "dropped", "rate") and t.default == 0.0
    assert next(n for n in g.nodes.values() if n["node"].name == "dropped")["node"].attrs["rate"] == 0.0


def test_format_round_trip_and_checks():
    g = parse(source(rate=0.5), "d.bolt")
    assert "dropped = dropout(hidden, 0.5)" in format_source(g)
    from boltc.commands.check import check_source
    from boltc.errors import BoltError
    with pytest.raises(BoltError, match="dropout rate must be below 1"):
        check_source(source(rate=1.0), "d.bolt")
    with pytest.raises(BoltError, match="dropout needs dense values; 'features' is a sparse input"):
        check_source(source().replace("dropout(hidden,", "dropout(features,"), "d.bolt")


def test_killed_then_resumed_equals_uninterrupted(tmp_path):
    """A real training process (native backend) killed with SIGKILL after its first checkpoint and
    resumed with --resume ends with the weights of a run that was never interrupted."""
    bolt = tmp_path / "drop.bolt"
    bolt.write_text(source(epochs=4, rows=800))
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "boltc.cli", "train", str(bolt), "--backend", "native", "--threads", "2",
           "--no-progress"]
    a, b, done = kill_and_resume(cmd, tmp_path, env)
    assert 1 <= done <= 4
    assert a.plan["layers"][1]["op"] == "dropout"
    for layer, tensors in a.params.items():
        for k, arr in tensors.items():
            np.testing.assert_array_equal(b.params[layer][k], arr, err_msg=f"{layer}.{k}")
    assert [e["loss"] for e in a.history["epochs"]] == [e["loss"] for e in b.history["epochs"]]
