"""The split training kernels of data-parallel workers (boltc/lower/split.py, NativeExecutor.gradients /
apply_gradients) against two oracles:
- the fused path: gradients() then apply_gradients() of the same batch must leave weights and moments
  bit-identical to train_step (same sums in the same order, the same `_update` arithmetic), on every
  op the native backend lowers (models of tests/test_native_ops_models.py), Adam f32 / bf16 moments,
  AdamW decay and SGD with momentum, 1 and 2 threads;
- the interpreter (the spec): its gradients() on the same active sets, within the native tests'
  float32 tolerance (rtol 1e-5, atol 1e-6 on the gradient values; the same rows).
Applying to a row range (a worker's share, ZeRO-1) through views must equal applying to the whole.
"""
import copy

import numpy as np
import pytest

from boltc.runtime.exec.gradients import RowGrad
from boltc.runtime.exec.native import NativeExecutor
from boltc.runtime.exec.state import ModelState
from native_helpers import make_batch, make_plan, random_active
from test_native_ops_models import active_sets, batch_for, everything_plan, hybrid_plan, sparse_hidden_plan


def _arrays(state):
    out = {}
    for which in ("params", "m", "v"):
        for layer, ts in getattr(state, which).items():
            for t, a in ts.items():
                out[(which, layer, t)] = a
    return out


def assert_identical(a, b):
    xa, xb = _arrays(a), _arrays(b)
    assert xa.keys() == xb.keys()
    for k in xa:
        assert xa[k].tobytes() == xb[k].tobytes(), k


def _xc_plan(**kw):
    return make_plan(in_dim=300, hidden=24, out_dim=500, active=40, **kw)


PLANS = {
    "xc_adam": lambda: _xc_plan(),
    "xc_adamw_bf16": lambda: _with(_xc_plan(), weight_decay=0.01, moments="bf16"),
    "xc_sgd_momentum": lambda: _xc_plan(optimizer="sgd", momentum=0.9, lr=0.05),
    "dense_tanh_chain": lambda: make_plan(in_dim=40, hidden=16, out_dim=30, extra_hidden=1, sparse_input=False),
    # batches of 130 and 131 (below) put this chain's dense layers on BLAS (native_ops.dense_blas)
    "dense_blas": lambda: make_plan(in_dim=64, hidden=64, out_dim=64, extra_hidden=1, sparse_input=False),
    "hybrid": hybrid_plan,
    "everything": everything_plan,
    "sparse_hidden": sparse_hidden_plan,
}


def _with(plan, **train):
    plan = copy.deepcopy(plan)
    plan["train"].update(train)
    return plan


def _batch(plan, rng, B):
    if plan["model"] == "t":
        out = next(l for l in plan["layers"] if l["name"] == plan["output"])
        return make_batch(rng, B, plan["inputs"][0]["dim"], out["dim"],
                          sparse_input=plan["inputs"][0]["kind"] == "sparse")
    return batch_for(plan, rng, B)


def _active(plan, rng, batch, B):
    if plan["model"] == "t":
        out = next(l for l in plan["layers"] if l["name"] == plan["output"])
        return {"scores": random_active(rng, batch.labels, B, out["dim"], out["active"])} if out["active"] < out["dim"] else None
    return active_sets(plan, rng, batch.labels, B) or None


def _fresh(plan, threads):
    try:
        state = ModelState.init(plan)
    except Exception:
        raise
    return state, NativeExecutor(plan, state, threads=threads)


@pytest.mark.parametrize("name", list(PLANS))
@pytest.mark.parametrize("threads", [1, 2])
def test_gradient_then_apply_equals_the_fused_step_bit_for_bit(name, threads):
    plan = PLANS[name]()
    fused_state, fused = _fresh(plan, threads)
    split_state = copy.deepcopy(fused_state)
    split = NativeExecutor(plan, split_state, threads=threads)
    assert fused.native, fused.fallback_reason
    rng = np.random.default_rng(5)
    lr = float(plan["train"]["lr"])
    for step in range(3):
        B = 40 if step != 1 else 7                    # both active-set forwards (neuron order and gather)
        if name == "dense_blas":
            B += 90
        batch = _batch(plan, rng, B)
        active = _active(plan, rng, batch, B)
        loss_fused = fused.train_step(batch, lr, active=active)
        loss_split, grads = split.gradients(batch, active=active)
        split.apply_gradients(grads, lr)
        counts = split_state.params[plan["output"]].get("label_count")
        if counts is not None:                        # train_step counts labels; workers add the global batch's
            counts += np.bincount(batch.labels.indices, minlength=counts.size).astype(np.float32)
        assert loss_fused.tobytes() == loss_split.tobytes()
        assert_identical(fused_state, split_state)
        assert fused_state.step == split_state.step == step + 1


@pytest.mark.parametrize("name", ["xc_adam", "dense_tanh_chain", "hybrid", "sparse_hidden"])
def test_native_gradients_match_the_interpreter(name):
    from boltc.runtime.exec.interp import NumpyExecutor
    plan = PLANS[name]()
    state, native = _fresh(plan, 2)
    spec = NumpyExecutor(plan, copy.deepcopy(state))
    rng = np.random.default_rng(11)
    batch = _batch(plan, rng, 33)
    active = _active(plan, rng, batch, 33)
    loss_n, gn = native.gradients(batch, active=active)
    loss_s, gs = spec.gradients(batch, active=active)
    np.testing.assert_allclose(loss_n, loss_s, rtol=1e-5, atol=1e-6)
    assert gn.keys() == gs.keys()
    for key in gn:
        a, b = gn[key], gs[key]
        shape = state.params[key[0]][key[1]].shape
        assert (a.rows is None) == (b.rows is None), key
        if a.rows is not None:
            np.testing.assert_array_equal(a.rows, b.rows, err_msg=str(key))
        np.testing.assert_allclose(a.to_dense(shape), b.to_dense(shape), rtol=1e-5, atol=1e-6, err_msg=str(key))
    # the state did not move
    assert state.step == 0


def test_apply_to_a_row_range_through_views_equals_apply_to_the_whole():
    """A worker owning rows [lo, hi) applies with W[lo:hi] views, its moment shard and row ids - lo."""
    from types import SimpleNamespace
    plan = _xc_plan()
    whole_state, whole = _fresh(plan, 2)
    part_state = copy.deepcopy(whole_state)
    part = NativeExecutor(plan, part_state, threads=2)
    rng = np.random.default_rng(2)
    batch = _batch(plan, rng, 40)
    active = _active(plan, rng, batch, 40)
    _, grads = whole.gradients(batch, active=active)
    whole.apply_gradients(grads, 1e-3)
    shards = []
    for r in range(2):                              # each "worker" applies its half of every tensor's rows
        view = SimpleNamespace(params={}, m={}, v={})
        mine = {}
        for (layer, t), g in grads.items():
            W = part_state.params[layer][t]
            lo, hi = W.shape[0] * r // 2, W.shape[0] * (r + 1) // 2
            for which in ("params", "m", "v"):
                getattr(view, which).setdefault(layer, {})[t] = getattr(part_state, which)[layer][t][lo:hi]
            if g.rows is None:
                mine[(layer, t)] = RowGrad(None, g.values[lo:hi])
            else:
                sel = (g.rows >= lo) & (g.rows < hi)
                mine[(layer, t)] = RowGrad(g.rows[sel] - lo, g.values[sel])
        shards.append((mine, view))
    for r, (mine, view) in enumerate(shards):
        part.apply_gradients(mine, 1e-3, target=view)
        if r == 0:
            part_state.step -= 1                    # one optimizer step: both halves use the same t
    assert_identical(whole_state, part_state)
