"""The wide output's owners' ranges following their measured work (ownership.rebalanced,
Worker.rebalance), for workers sharing a machine.

Oracles:
- `rebalanced` against hand-computed cuts (work spread evenly within each owner's range).
- workers whose output ranges move every 2 updates (timings replaced by fixed, uneven seconds, so the
  ranges do move) against workers that keep replicas and equal ranges: bit-identical weights, moments
  and tables (any contiguous ranges give the same sums in the same order).
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from boltc.pipeline import load_model_source
from boltc.runtime.distributed import worker as distributed_worker
from boltc.runtime.distributed.driver import train_distributed
from boltc.runtime.distributed.ownership import rebalanced
from boltc.runtime.exec.state import ModelState

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import ROWS, TINY  # noqa: E402


def test_rebalanced_cuts_where_the_measured_work_splits_evenly():
    # owner 0 took 3 s on rows [0, 100), owner 1 1 s on [100, 200): 2 s of work is 200/3 rows of owner 0
    assert rebalanced([(0, 100), (100, 200)], [3.0, 1.0], damping=1.0) == [(0, 67), (67, 200)]
    assert rebalanced([(0, 100), (100, 200)], [3.0, 1.0], damping=0.5) == [(0, 83), (83, 200)]
    # the other way: owner 1 slower; its rows [100, 200) carry 3 s, 1 s to give away = 100/3 rows
    assert rebalanced([(0, 100), (100, 200)], [1.0, 3.0], damping=1.0) == [(0, 133), (133, 200)]
    # balanced work keeps the ranges; three owners (6 s: the cuts at 2 s, the end of owner 1, and 4 s,
    # 15 rows into owner 2 at 4 s per 30 rows); ranges offset from 0
    assert rebalanced([(0, 50), (50, 200)], [2.0, 2.0]) == [(0, 50), (50, 200)]
    assert rebalanced([(10, 40), (40, 70), (70, 100)], [1.0, 1.0, 4.0], damping=1.0) == [(10, 70), (70, 85), (85, 100)]
    # all the work on one side: half of it 1.5 rows in (rounded to even), or 1 row into owner 1's 2
    assert rebalanced([(0, 3), (3, 6)], [100.0, 0.0], damping=1.0) == [(0, 2), (2, 6)]
    assert rebalanced([(0, 2), (2, 4)], [0.0, 100.0], damping=1.0) == [(0, 3), (3, 4)]
    # nobody loses its last row: the cuts would fall at rows 0 and 1
    assert rebalanced([(0, 1), (1, 2), (2, 10)], [1e6, 0.0, 0.0], damping=1.0) == [(0, 1), (1, 2), (2, 10)]
    assert rebalanced([(0, 5)], [1.0]) == [(0, 5)]


def test_rebalancing_output_owners_equal_replicas_bit_for_bit(monkeypatch):
    _, plan = load_model_source(TINY)
    plan["train"]["epochs"] = 2
    train = dict(plan["data"]["train"], rows=ROWS)
    init = ModelState.init(plan)
    monkeypatch.setattr(distributed_worker, "BALANCE_EVERY", 2)
    seen = []
    real = distributed_worker.Worker.rebalance

    def uneven(self, seconds):                      # measured seconds replaced: the ranges must move
        real(self, [3.0, 1.0] if len(seen) % 4 < 2 else [1.0, 2.0])
        seen.append((self.rank, self.bounds[("scores", "W")], self.bounds[("scores", "b")],
                     self.shard.m["scores"]["W"].shape[0], self.full_moments[("scores", "W")][0]))
    monkeypatch.setattr(distributed_worker.Worker, "rebalance", uneven)
    kw = dict(workers=2, in_process=True, backend="native")
    shared = train_distributed(plan, copy.deepcopy(init), train, **kw)
    replicas = train_distributed(plan, copy.deepcopy(init), train, share_weights=False, **kw)
    assert len(seen) == 2 * (2 * ROWS // plan["train"]["batch"]) // 2       # every 2nd update, both workers
    ranges = {tuple(b) for _, b, _, _, _ in seen}
    assert len(ranges) >= 3 and all(b == w for _, w, b, _, _ in seen)       # moved; W and b together
    for rank, bounds, _, rows, full in seen:      # the moments' view follows the range, in the shared file
        lo, hi = bounds[rank]
        assert rows == hi - lo and full.shape[0] == 500
    for which in ("params", "m", "v"):
        for layer, ts in getattr(replicas.state, which).items():
            for t, a in ts.items():
                assert getattr(shared.state, which)[layer][t].tobytes() == a.tobytes(), (which, layer, t)
    assert shared.state.lsh["scores"].tables.tobytes() == replicas.state.lsh["scores"].tables.tobytes()


def test_owners_computing_the_input_gradient_keep_their_ranges(monkeypatch):
    """Their ranges cut the input gradient's chunks (owner_dx.py): moving them would move bits."""
    from boltc.ops import fc as fc_op
    from boltc.runtime.distributed import owner_dx
    _, plan = load_model_source(TINY)
    plan["train"]["epochs"] = 1
    train = dict(plan["data"]["train"], rows=ROWS)
    monkeypatch.setattr(fc_op, "FUSED_DX_MIN_WEIGHT_BYTES", 0)
    monkeypatch.setattr(owner_dx, "OWNER_DX_MIN_WEIGHT_BYTES", 0)
    monkeypatch.setattr(distributed_worker, "BALANCE_EVERY", 1)
    called = []
    monkeypatch.setattr(distributed_worker.Worker, "rebalance", lambda self, s: called.append(s))
    train_distributed(plan, ModelState.init(plan), train, workers=2, in_process=True, backend="native")
    assert called == []
