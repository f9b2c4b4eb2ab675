"""Row owners' inversion of their own ids and their share of the wide output's input gradient
(runtime/distributed/owner_dx.py, boltc/lower/backward.py invert_range).

Oracles:
- invert_range against NumPy's stable sort of the in-range ids (uniq, segments, positions in order) and
  against the slice of the full `invert` of the same ids: identical arrays.
- owners computing the input gradient (workers sharing a machine) against workers computing their own
  examples' with the owners' arithmetic (replicas): bit-identical weights and moments; both against one
  process replaying the same global batches (2e-6, the stated tolerance of tests/test_distributed.py).
- `local_dx` against the dense product g W[ids] of the interpreter's formula (float32 tolerance).
The tiny model's output is below the sizes at which one process fuses the input gradient into the
update and the owners take it; the tests lower both (FUSED_DX_MIN_WEIGHT_BYTES, OWNER_DX_MIN_WEIGHT_BYTES)
so the tiny model takes the owners' path.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

from boltc.ops import fc as fc_op
from boltc.pipeline import load_model_source
from boltc.runtime.distributed import owner_dx
from boltc.runtime.distributed.driver import train_distributed
from boltc.runtime.exec.executor import make_executor
from boltc.runtime.exec.state import ModelState

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import ROWS, TINY, _max_diff, _replay_single_process  # noqa: E402


@pytest.fixture(scope="module")
def tiny_plan():
    _, plan = load_model_source(TINY)
    plan["train"]["epochs"] = 2
    return plan, dict(plan["data"]["train"], rows=ROWS)


def _spec_inversion(ids, lo, hi):
    flat = ids.reshape(-1)
    keep = np.flatnonzero((flat >= lo) & (flat < hi))
    order = keep[np.argsort(flat[keep], kind="stable")]
    uniq, counts = np.unique(flat[order], return_counts=True)
    return uniq, np.concatenate([[0], np.cumsum(counts)]), order


@pytest.mark.parametrize("lo,hi", [(0, 500), (0, 250), (250, 500), (100, 101), (480, 500), (300, 300)])
def test_invert_range_equals_the_sorted_ids_in_range_and_the_full_inversions_slice(tiny_plan, lo, hi):
    plan, _ = tiny_plan
    ex = make_executor(plan, ModelState.init(plan), backend="native", threads=1)
    rng = np.random.default_rng(lo * 1000 + hi)
    ids = rng.integers(0, 500, size=(64, 100)).astype(np.int32)
    fn = ex.split_kernels.fn("scores", "invert_range")
    for _ in range(2):                             # counts must come back zeroed: a second call agrees
        uniq, seg, pos, nu = ex.invert_owned(ids, lo, hi, fn)
        want_u, want_seg, want_pos = _spec_inversion(ids, lo, hi)
        np.testing.assert_array_equal(uniq[:nu], want_u)
        np.testing.assert_array_equal(seg[:nu + 1], want_seg)
        np.testing.assert_array_equal(pos[:want_seg[-1]], want_pos)
    fu, fseg, fpos, fnu = ex.invert(ids, 500, ex.k.fn("scores", "invert"))
    u0, u1 = np.searchsorted(fu[:fnu], [lo, hi])
    np.testing.assert_array_equal(fu[u0:u1], uniq[:nu])
    np.testing.assert_array_equal(fpos[fseg[u0]:fseg[u1]], pos[:seg[nu]])


def test_deferrable_takes_two_layer_models_with_a_fused_wide_output(tiny_plan, monkeypatch):
    plan, _ = tiny_plan
    W = ModelState.init(plan).params["scores"]["W"]
    assert owner_dx.deferrable(plan, W.nbytes) is None          # 64 KB: one process does not fuse it either
    monkeypatch.setattr(fc_op, "FUSED_DX_MIN_WEIGHT_BYTES", 0)
    assert owner_dx.deferrable(plan, W.nbytes) is None          # ... and below the owners' size
    assert owner_dx.deferrable(plan, owner_dx.OWNER_DX_MIN_WEIGHT_BYTES + 1) == owner_dx.OwnerDx("scores", "hidden", "relu")
    monkeypatch.setattr(owner_dx, "OWNER_DX_MIN_WEIGHT_BYTES", 0)
    assert owner_dx.deferrable(plan, W.nbytes) == owner_dx.OwnerDx("scores", "hidden", "relu")
    three = copy.deepcopy(plan)
    three["layers"].insert(1, dict(copy.deepcopy(three["layers"][0]), name="extra"))
    assert owner_dx.deferrable(three, W.nbytes) is None


def test_local_dx_is_the_input_gradient_of_the_active_sets(tiny_plan):
    plan, _ = tiny_plan
    state = ModelState.init(plan)
    ex = make_executor(plan, state, backend="native", threads=1)
    rng = np.random.default_rng(3)
    W = state.params["scores"]["W"]
    W[...] = rng.normal(0, 0.1, W.shape).astype(np.float32)
    k = plan["layers"][1]["active"]
    ids = np.stack([rng.choice(500, k, replace=False) for _ in range(16)]).astype(np.int32)
    g = rng.normal(size=ids.shape).astype(np.float32)
    f = {"kind": "active", "ids": ids, "g": g, "x": np.zeros((16, 32), np.float32)}
    want = np.einsum("bk,bki->bi", g.astype(np.float64), W[ids].astype(np.float64))
    for ranges in ([(0, 500)], [(0, 250), (250, 500)], [(0, 166), (166, 333), (333, 500)]):
        np.testing.assert_allclose(owner_dx.local_dx(ex, plan["layers"][1], f, ranges), want, atol=1e-5)


@pytest.mark.parametrize("exchange_every", [1, 2])
def test_owners_input_gradient_equals_the_workers_own_bit_for_bit(tiny_plan, monkeypatch, exchange_every):
    """Workers sharing a machine leave the output's input gradient to its row owners (one meeting
    more, one pass over W less); workers keeping replicas compute their own examples' with the same
    arithmetic: the same weights and moments, bit for bit, and one process's within 2e-6."""
    from boltc.runtime.distributed import worker as distributed_worker
    plan, train = tiny_plan
    monkeypatch.setattr(fc_op, "FUSED_DX_MIN_WEIGHT_BYTES", 0)
    monkeypatch.setattr(owner_dx, "OWNER_DX_MIN_WEIGHT_BYTES", 0)
    calls = {"owner": 0, "local": 0}
    real_owner, real_local = owner_dx.owner_update_dx, owner_dx.local_dx

    def owner(*a, **k):
        calls["owner"] += 1
        return real_owner(*a, **k)

    def local(*a, **k):
        calls["local"] += 1
        return real_local(*a, **k)
    monkeypatch.setattr(distributed_worker.owner_dx, "owner_update_dx", owner)
    monkeypatch.setattr(distributed_worker.owner_dx, "local_dx", local)
    init = ModelState.init(plan)
    kw = dict(workers=2, in_process=True, backend="native", exchange_every=exchange_every)
    if exchange_every > 1:
        kw["max_updates"] = 4
    shared = train_distributed(plan, copy.deepcopy(init), train, record=exchange_every == 1, **kw)
    updates = shared.stats["updates"]
    assert calls == {"owner": 2 * updates, "local": 0}        # every owner, every update
    replicas = train_distributed(plan, copy.deepcopy(init), train, share_weights=False, **kw)
    assert calls == {"owner": 2 * updates, "local": 2 * updates * exchange_every}
    # what a worker on another machine would send (factors with dz: the projection reads it) is counted
    # the same either way; the owners' input-gradient shares are what sharing workers send on top
    key = "gradient_bytes_sent_per_update_per_worker"
    assert shared.stats[key] == replicas.stats[key]
    share = plan["train"]["batch"] * exchange_every * plan["layers"][1]["in_dim"] * 4
    assert shared.stats["bytes_sent_per_update_per_worker"] == pytest.approx(shared.stats[key] + share - share // 2)
    for which in ("params", "m", "v"):
        for layer, ts in getattr(replicas.state, which).items():
            for t, a in ts.items():
                assert getattr(shared.state, which)[layer][t].tobytes() == a.tobytes(), (which, layer, t)
    if exchange_every == 1:
        oracle = _replay_single_process(plan, train, shared.records, copy.deepcopy(init))
        assert _max_diff(shared.state, oracle) < 2e-6
