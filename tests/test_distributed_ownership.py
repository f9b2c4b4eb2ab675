"""Row ownership of data-parallel workers (runtime/distributed/ownership.py).

Oracles: the cost model by hand; the balanced cut against the best two-way cut found by trying every
cut point; training with any contiguous ownership (equal ranges, the driver's balanced ranges, a
deliberately lopsided split) against equal ranges, bit for bit (each row's update is the same sum
whoever owns it).
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

from boltc.pipeline import load_model_source
from boltc.runtime.distributed import cluster as distributed_cluster
from boltc.runtime.distributed.driver import train_distributed
from boltc.runtime.distributed.ownership import balanced_ranges, feature_cost, ownership, row_ranges
from boltc.runtime.exec.state import ModelState

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import ROWS, TINY  # noqa: E402


def test_feature_cost_by_hand():
    # p = 0: never touched; p = 1: touched every update (12 for the optimizer) + batch occurrences;
    # p = 1/2 with batch 2: touched with probability 3/4, one occurrence expected
    np.testing.assert_allclose(feature_cost(np.array([0, 10, 5]), rows=10, batch=2), [0.0, 14.0, 0.75 * 12 + 1.0])


def test_balanced_ranges_cut_where_the_work_halves():
    cost = feature_cost(np.round(1e5 / np.arange(1, 20001)).astype(np.int64), rows=200_000, batch=256)
    (a0, a1), (b0, b1) = balanced_ranges(cost, 2)
    assert (a0, a1, b1) == (0, b0, cost.size)
    best = min(max(cost[:c].sum(), cost[c:].sum()) for c in range(cost.size + 1))
    assert max(cost[a0:a1].sum(), cost[b0:b1].sum()) <= best + cost.max()
    assert a1 < cost.size // 4                   # frequency-ordered ids: the first owner's range is short
    for n in (3, 5):
        ranges = balanced_ranges(cost, n)
        assert ranges[0][0] == 0 and ranges[-1][1] == cost.size
        assert all(ranges[i][1] == ranges[i + 1][0] for i in range(n - 1))
        shares = [cost[lo:hi].sum() for lo, hi in ranges]
        assert max(shares) - min(shares) <= 2 * cost.max()
    assert balanced_ranges(np.zeros(7), 2) == row_ranges(7, 2)


def test_ownership_balances_only_a_sparse_inputs_feature_rows():
    _, plan = load_model_source(TINY)
    shapes = {("hidden", "W"): (256, 32), ("hidden", "b"): (32,), ("scores", "W"): (500, 32), ("scores", "b"): (500,)}
    counts = {"features": np.r_[np.full(32, 1000), np.ones(224)].astype(np.int64)}
    got = ownership(plan, shapes, 2, counts, rows=2000, batch=64)
    assert got[("hidden", "W")][0][1] < 64
    for key in (("hidden", "b"), ("scores", "W"), ("scores", "b")):
        assert got[key] == row_ranges(shapes[key][0], 2)
    assert ownership(plan, shapes, 2) == {k: row_ranges(s[0], 2) for k, s in shapes.items()}


@pytest.mark.parametrize("share_weights", [True, False])
def test_any_contiguous_ownership_trains_the_same_bits(monkeypatch, share_weights):
    _, plan = load_model_source(TINY)
    plan["train"]["epochs"] = 2
    train = dict(plan["data"]["train"], rows=ROWS)
    init = ModelState.init(plan)
    seen = []
    real_shutdown = distributed_cluster.InProcessRunner.shutdown
    monkeypatch.setattr(distributed_cluster.InProcessRunner, "shutdown",
                        lambda self: seen.append(self.workers[0].bounds[("hidden", "W")]) or real_shutdown(self))
    kw = dict(workers=2, in_process=True, backend="native", share_weights=share_weights)
    balanced = train_distributed(plan, copy.deepcopy(init), train, **kw)
    real_set = distributed_cluster._set_ownership

    def lopsided(runner, timeout):                # a few features seen everywhere: owner 0 gets 10 rows
        runner.call("set_ownership", [({"features": np.r_[np.full(10, 10**6), np.ones(246)]}, 2000)] * 2)
    monkeypatch.setattr(distributed_cluster, "_set_ownership", lopsided)
    skewed = train_distributed(plan, copy.deepcopy(init), train, **kw)
    monkeypatch.setattr(distributed_cluster, "_set_ownership", lambda runner, timeout: None)
    equal = train_distributed(plan, copy.deepcopy(init), train, **kw)
    monkeypatch.setattr(distributed_cluster, "_set_ownership", real_set)
    assert seen[0] != [(0, 128), (128, 256)] and seen[1][0][1] <= 12 and seen[2] == [(0, 128), (128, 256)]
    for run in (balanced, skewed):
        for which in ("params", "m", "v"):
            for layer, ts in getattr(equal.state, which).items():
                for t, a in ts.items():
                    assert getattr(run.state, which)[layer][t].tobytes() == a.tobytes(), (which, layer, t)
