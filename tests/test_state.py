"""ModelState initialisation (CONTRACTS.md section 4) and the LSH upkeep schedule."""
import numpy as np

from boltc.runtime.lsh.upkeep import LSHUpkeep
from boltc.runtime.exec.state import ModelState

from test_interp_plans import dwta, fc, plan


def _plan(seed=0):
    layers = [fc("h", ["x"], 300, 64, "relu", input_sparse=True),
              {"name": "e", "op": "embedding", "inputs": ["x"], "in_dim": 300, "dim": 8, "reduce": "sum",
               "input_sparse": True, "layout": "in_major"},
              {"name": "c", "op": "concat", "inputs": ["h", "e"], "dim": 72},
              {"name": "n", "op": "layernorm", "inputs": ["c"], "dim": 72, "eps": 1e-5},
              fc("out", ["n"], 72, 500, "softmax", active=50, hash=dwta(tables=4))]
    return plan(layers, 300, 500, seed=seed)


def test_shapes_layouts_and_init_values():
    s = ModelState.init(_plan())
    assert s.params["h"]["W"].shape == (300, 64)          # in_major: sparse input
    assert s.params["out"]["W"].shape == (500, 72)        # out_major
    assert s.params["e"]["W"].shape == (300, 8) and "b" not in s.params["e"]
    assert (s.params["n"]["gamma"] == 1).all() and (s.params["n"]["beta"] == 0).all()
    assert (s.params["h"]["b"] == 0).all()
    w = s.params["h"]["W"]
    assert w.dtype == np.float32 and abs(w.std() - 0.01) < 0.0005 and abs(w.mean()) < 0.0005
    assert set(s.m) == set(s.params) and all(s.m[k].keys() == s.params[k].keys() for k in s.params)
    assert (s.params["out"]["label_count"] == 0).all()
    assert s.step == 0 and set(s.lsh) == {"out"}
    assert s.lsh["out"].counts.sum() == 500 * 4          # built from the initial weights
    assert s.n_parameters() == 300 * 64 + 64 + 300 * 8 + 72 * 2 + 500 * 72 + 500


def test_seeded_and_independent_per_layer():
    a, b, c = ModelState.init(_plan(0)), ModelState.init(_plan(0)), ModelState.init(_plan(1))
    np.testing.assert_array_equal(a.params["out"]["W"], b.params["out"]["W"])
    np.testing.assert_array_equal(a.lsh["out"].tables, b.lsh["out"].tables)
    assert not np.array_equal(a.params["out"]["W"], c.params["out"]["W"])
    # removing another layer does not change this layer's draw
    p = _plan(0)
    p["layers"] = [l for l in p["layers"] if l["name"] != "e"]
    np.testing.assert_array_equal(ModelState.init(p).params["h"]["W"], a.params["h"]["W"])


def test_upkeep_schedule_rebuilds_rehashes_then_freezes():
    p = _plan()
    s = ModelState.init(p)
    up = LSHUpkeep(p, s, budget=1e9)                      # budget never binds: BOLT's schedule
    layer = p["layers"][-1]
    assert up.intervals(layer, 100) == (5, 25)           # rebuild 0.05 epoch, rehash 0.25 epoch
    seed0 = s.lsh["out"].seed
    for bi in range(100):
        up.after_step(0, bi, 100)
    assert up.rebuilds == 20 and up.rehashes == 3         # the end of the epoch: refill, then freeze
    assert s.lsh["out"].seed == seed0 + 3 and s.lsh["out"].frozen
    builds = s.lsh["out"].builds
    for bi in range(100):
        up.after_step(1, bi, 100)
    assert s.lsh["out"].builds == builds and up.rebuilds == 20


def test_upkeep_budget_stretches_the_rebuild_interval():
    p = _plan()
    s = ModelState.init(p)
    layer = p["layers"][-1]
    tight, loose = LSHUpkeep(p, s, budget=1e-4), LSHUpkeep(p, s, budget=1e9)
    r_tight, h_tight = tight.intervals(layer, 100)
    assert r_tight > loose.intervals(layer, 100)[0] and h_tight >= r_tight
    # past the epoch: no rebuild during it, but the tables are refilled once before they freeze
    assert r_tight > 100
    seed0 = s.lsh["out"].seed
    for bi in range(100):
        tight.after_step(0, bi, 100)
    assert tight.rebuilds == 1 and tight.rehashes == 0 and s.lsh["out"].seed == seed0 and s.lsh["out"].frozen
