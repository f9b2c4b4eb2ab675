"""Data-parallel training (runtime/distributed/driver.py), checked against single-process training.

Oracles:
- exact: one process running the executor's own `train_step` on the same global batches (the workers'
  local batches concatenated, the same active sets) must reach the same weights. Stated tolerance:
  2e-6 absolute on every weight after 2 epochs (float32; the gradients are summed in a different order).
- Ray vs in-process: the same protocol must give bit-identical weights (same seeds, same order of sums).
- the divided update (each worker updates its rows with its moment shard) vs a replicated update of
  the same gradient (native: the fused update kernels over every row, from the workers' factors;
  NumPy: the summed gradient): bit-identical weights and moments; one native worker (gradient factors
  + the owner's fused update) vs the fused train_step: bit-identical.
- loose: single-process `Trainer.fit` (its own batch order, same total batch) on the same data has each
  epoch's mean training loss within 2% (measured: within 0.7% over 4 seeds) and the final validation
  precision@1 within 5 points.
The Ray tests start one local cluster on loopback (2 CPUs) for the module and skip when Ray is absent.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from boltc.errors import DependencyError
from boltc.pipeline import load_model_source
from boltc.runtime.data.load import load_dataset
from boltc.runtime.data.dataset import Batch
from boltc.runtime.distributed.driver import (DistributedError, load_shard, plan_shards, require_ray,
                                       train_distributed)
from boltc.runtime.distributed.worker import sum_parts
from boltc.runtime.exec.executor import make_executor
from boltc.runtime.exec.gradients import one_part
from boltc.runtime.exec.native import merge_factors
from boltc.runtime.exec.state import ModelState

TINY = Path(__file__).parents[1] / "models" / "tiny.bolt"
ROWS = 640                     # 10 updates of 64 per epoch: small enough for seconds, wide (500 labels)


@pytest.fixture(scope="module")
def tiny():
    _, plan = load_model_source(TINY)
    plan["train"]["epochs"] = 2
    train = dict(plan["data"]["train"], rows=ROWS)
    test = dict(plan["data"]["test"], rows=300)
    return plan, train, load_dataset(test, plan)


def _params(state):
    return {(l, t): a for l, ts in state.params.items() for t, a in ts.items()}


def _max_diff(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    return max(float(np.abs(pa[k] - pb[k]).max()) for k in pa)


def _global_batch(plan, shards, rec):
    """One recorded update as a single process sees it: the workers' local batches stacked in worker
    order, and their active sets concatenated the same way."""
    name = next(iter(plan["inputs"]))["name"]
    parts = [sh.take(rows) for sh, (rows, _) in zip(shards, rec)]
    batch = Batch(inputs={name: sp.vstack([p.inputs[name] for p in parts], format="csr")},
                  labels=sp.vstack([p.labels for p in parts], format="csr"))
    active = {}
    for _, acts in rec:
        for a in acts:
            for layer, ids in a.items():
                active.setdefault(layer, []).append(ids)
    return batch, {k: np.concatenate(v) for k, v in active.items()}


def _replay_single_process(plan, train, records, state):
    """Single-process oracle: the executor's train_step on each global batch the workers drew."""
    shards = [load_shard(s, plan) for s in plan_shards(train, plan, len(records[0]))]
    ex = make_executor(plan, state)
    per_epoch = -(-ROWS // plan["train"]["batch"])
    for u, rec in enumerate(records):
        batch, active = _global_batch(plan, shards, rec)
        ex.train_step(batch, plan["train"]["lr"], active=active)
        ex.after_step(u // per_epoch, u % per_epoch, per_epoch)
    return state


def test_in_process_matches_single_process_on_the_same_batches(tiny):
    plan, train, _ = tiny
    init = ModelState.init(plan)
    res = train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True, record=True)
    assert res.stats["updates"] == 20 and res.stats["examples"] == 20 * 64
    assert len(res.records[0]) == 2 and all(len(r[0]) == 32 for r in res.records[0])
    oracle = _replay_single_process(plan, train, res.records, copy.deepcopy(init))
    assert _max_diff(res.state, oracle) < 2e-6
    assert res.state.step == 20
    # it trained: the loss of epoch 2 is below epoch 1's
    assert res.history["epochs"][1]["loss"] < res.history["epochs"][0]["loss"]


def test_frozen_tables_get_the_whole_batchs_missed_labels_on_every_replica(tiny, monkeypatch):
    """After the tables freeze (epoch 2 of the tiny model), labels a lookup missed are inserted as in
    BOLT; every replica inserts the global batch's, so the replicas' tables stay identical."""
    from boltc.runtime.distributed import cluster as distributed_cluster
    plan, train, _ = tiny
    init = ModelState.init(plan)
    seen = []
    real = distributed_cluster.InProcessRunner.shutdown

    def keep_states(self):
        seen.append([w.state for w in self.workers])
        real(self)
    monkeypatch.setattr(distributed_cluster.InProcessRunner, "shutdown", keep_states)
    one_epoch = train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True, epochs=1)
    two_epochs = train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True, epochs=2)
    a, b = seen[-1]
    assert a.lsh["scores"].frozen and b.lsh["scores"].frozen
    np.testing.assert_array_equal(a.lsh["scores"].tables, b.lsh["scores"].tables)
    np.testing.assert_array_equal(a.lsh["scores"].counts, b.lsh["scores"].counts)
    inserted = int(two_epochs.state.lsh["scores"].counts.sum() - one_epoch.state.lsh["scores"].counts.sum())
    assert inserted > 0


def _replicated_replay(plan, train, records, state, backend):
    """Oracle of the divided update: one replica computing every worker's gradient (the same rows and
    active sets) and applying it to all rows with full moments. NumPy: the gradients summed in worker
    order. Native: the layers' factors stacked in worker order, run through the fused update kernels
    over every row (the workers run them over their own rows only), the other tensors' gradients summed."""
    shards = [load_shard(s, plan) for s in plan_shards(train, plan, len(records[0]))]
    ex = make_executor(plan, state, backend=backend)
    per_epoch = -(-ROWS // plan["train"]["batch"])
    counts = state.params["scores"]["label_count"]
    whole = {(l, t): (0, a.shape[0]) for l, ts in state.params.items() for t, a in ts.items() if t != "label_count"}
    for u, rec in enumerate(records):
        parts, factors = [], []
        for sh, (rows, acts) in zip(shards, rec):
            batch = sh.take(rows)
            kw = {"factors": True} if backend == "native" else {}
            out = ex.gradients(batch, active=acts[0], batch_size=plan["train"]["batch"], **kw)
            parts.append(out[1])
            factors.append(out[2] if backend == "native" else {})
            counts += np.bincount(batch.labels.indices, minlength=counts.size).astype(np.float32)
        if backend == "native":
            assert set(factors[0]) == {"hidden", "scores"}          # both layers hand out factors
            ex.apply_update({k: one_part(g) for k, g in sum_parts(parts).items()}, merge_factors(factors),
                            plan["train"]["lr"], whole, state)
        else:
            ex.apply_gradients(sum_parts(parts), plan["train"]["lr"])
        ex.after_step(u // per_epoch, u % per_epoch, per_epoch)
    return state


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_sharded_update_equals_the_replicated_one_bit_for_bit(tiny, backend):
    """Each worker updating only its rows (its moment shard) and sending them on must give exactly the
    weights a replicated update of the summed gradient gives; the assembled moments too."""
    plan, train, _ = tiny
    init = ModelState.init(plan)
    res = train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True, record=True,
                            backend=backend, max_updates=8)
    oracle = _replicated_replay(plan, train, res.records, copy.deepcopy(init), backend)
    for which in ("params", "m", "v"):
        got, want = getattr(res.state, which), getattr(oracle, which)
        for layer in want:
            for t in want[layer]:
                assert got[layer][t].tobytes() == want[layer][t].tobytes(), (which, layer, t)
    assert res.state.step == oracle.step == 8


def test_one_native_worker_equals_the_fused_single_process_step_bit_for_bit(tiny):
    """One worker applying its own gradient through the split kernels = the fused train_step."""
    plan, train, _ = tiny
    init = ModelState.init(plan)
    res = train_distributed(plan, copy.deepcopy(init), train, workers=1, in_process=True, record=True,
                            backend="native", max_updates=8)
    shards = [load_shard(s, plan) for s in plan_shards(train, plan, 1)]
    state = copy.deepcopy(init)
    ex = make_executor(plan, state, backend="native")
    for u, rec in enumerate(res.records):
        rows, acts = rec[0]
        ex.train_step(shards[0].take(rows), plan["train"]["lr"], active=acts[0])
        ex.after_step(0, u, 20)
    assert _max_diff(res.state, state) == 0.0
    for layer in state.m:
        for t in state.m[layer]:
            assert res.state.m[layer][t].tobytes() == state.m[layer][t].tobytes()


def test_native_workers_train_like_numpy_workers(tiny):
    """Native and NumPy workers choose active sets with their own random streams, so weights differ;
    the training loss of each epoch agrees within 2% (as one process's two backends)."""
    plan, train, _ = tiny
    init = ModelState.init(plan)
    kw = dict(workers=2, in_process=True)
    on_numpy = train_distributed(plan, copy.deepcopy(init), train, backend="numpy", **kw)
    on_native = train_distributed(plan, copy.deepcopy(init), train, backend="native", **kw)
    for a, b in zip(on_numpy.history["epochs"], on_native.history["epochs"]):
        assert abs(a["loss"] - b["loss"]) < 0.02 * a["loss"]


def test_exchange_every_k_equals_one_process_with_k_times_the_batch(tiny):
    plan, train, _ = tiny
    init = ModelState.init(plan)
    res = train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True, exchange_every=2,
                            max_updates=3, record=True)
    assert res.stats["updates"] == 3 and res.state.step == 3 and res.stats["examples"] == 3 * 128
    # each record holds both accumulated local batches of a worker: replay them as one batch of 128
    plan2 = copy.deepcopy(plan)
    plan2["train"]["batch"] = 128
    ex = make_executor(plan2, init)
    shards = [load_shard(s, plan) for s in plan_shards(train, plan, 2)]
    for rec in res.records:
        batch, active = _global_batch(plan, shards, rec)
        assert batch.size == 128 and set(active) == {"scores"}
        ex.train_step(batch, plan["train"]["lr"], active=active)
        ex.after_step(0, 0, 1000)
    assert _max_diff(res.state, init) < 2e-6


def test_checkpoint_then_resume_equals_uninterrupted(tiny, tmp_path):
    from boltc.runtime import savefile
    plan, train, _ = tiny
    init = ModelState.init(plan)
    whole = train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True)
    ckpt = tmp_path / "ckpt.boltc"
    train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True, epochs=1, checkpoint=ckpt,
                      source=TINY.read_text())
    saved = savefile.load_model(ckpt)
    assert saved.optimizer["epochs_done"] == 1 and saved.history["epochs"][0]["epoch"] == 1
    state = savefile.state_from_saved(saved, ckpt)
    resumed = train_distributed(plan, state, train, workers=2, in_process=True, history=saved.history)
    assert [e["epoch"] for e in resumed.history["epochs"]] == [1, 2]
    assert _max_diff(resumed.state, whole.state) == 0.0


def test_worker_loss_restarts_from_epoch_state_or_fails_clearly(tiny):
    plan, train, _ = tiny
    init = ModelState.init(plan)
    whole = train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True)
    again = train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True, fail_at={1: 13})
    assert again.stats["restarts"] == 1
    assert _max_diff(again.state, whole.state) == 0.0
    with pytest.raises(DistributedError, match=r"worker 1 died .* epoch 2.*--resume"):
        train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True, fail_at={1: 13},
                          max_restarts=0)


def _synthetic_file(tmp_path, train, name):
    """The synthetic training rows written as an XC file; returns (path, X, Y)."""
    from boltc.runtime.data import synth, xcformat
    X, Y = synth.generate({k: v for k, v in train.items() if k != "kind"})
    path = tmp_path / name
    xcformat.write_xc(path, X, Y)
    return path, X, Y


def test_file_shards_are_read_by_byte_range(tiny, tmp_path):
    plan, train, _ = tiny
    path, X, Y = _synthetic_file(tmp_path, train, "train.txt")
    shards = plan_shards(str(path), plan, 2)
    assert [s["kind"] for s in shards] == ["range", "range"] and shards[0]["end"] == shards[1]["start"]
    parts = [load_shard(s, plan) for s in shards]
    assert sum(p.rows for p in parts) == ROWS
    got = sp.vstack([p.inputs["features"] for p in parts]).tocsr()
    assert abs(got - X).max() < 1e-5 and (sp.vstack([p.labels for p in parts]) != Y).nnz == 0
    res = train_distributed(plan, ModelState.init(plan), str(path), workers=2, in_process=True, max_updates=2)
    assert res.stats["examples"] == 128


def test_without_ray_the_error_says_what_to_install(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "ray", None)       # `import ray` now raises ImportError
    with pytest.raises(DependencyError, match=r"pip install boltc\[distributed\]"):
        require_ray()
    plan, train, _ = tiny
    with pytest.raises(DependencyError, match=r"pip install boltc\[distributed\]") as err:
        train_distributed(plan, ModelState.init(plan), train, workers=2)
    assert "error: distributed training" in err.value.render()


def _bad_row_file(tmp_path, plan, train):
    path, _, _ = _synthetic_file(tmp_path, train, "bad.txt")
    lines = path.read_text().splitlines()
    lines[500] = "3,4 12:0.5 oops"                     # file line 501: in the second worker's range
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_bad_row_in_a_workers_range_is_reported_with_the_file_line(tiny, tmp_path):
    from boltc.errors import DataError
    plan, train, _ = tiny
    path = _bad_row_file(tmp_path, plan, train)
    with pytest.raises(DataError) as err:
        train_distributed(plan, ModelState.init(plan), str(path), workers=2, in_process=True)
    assert err.value.location.line == 501 and err.value.location.file == str(path)


# ------------------------------------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, address="local",
             _temp_dir=str(Path("/tmp") / f"boltc_ray_test_{np.random.randint(1 << 30)}"))
    yield ray
    ray.shutdown()


def test_ray_two_workers_match_single_process(tiny, ray_cluster):
    from boltc.runtime.train.trainer import Trainer
    plan, train, test = tiny
    init = ModelState.init(plan)
    on_ray = train_distributed(plan, copy.deepcopy(init), train, validation=test, workers=2, timeout=120)
    local = train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True, record=True)
    assert _max_diff(on_ray.state, local.state) == 0.0                   # same protocol, same bits
    oracle = _replay_single_process(plan, train, local.records, copy.deepcopy(init))
    assert _max_diff(on_ray.state, oracle) < 2e-6                        # = one process, same batches
    # one process with its own batch order and the same total batch: same quality within 5 points
    single = copy.deepcopy(init)
    hist = Trainer(plan, single, make_executor(plan, single), progress=False).fit(
        load_dataset(train, plan), test)
    for mine, theirs in zip(on_ray.history["epochs"], hist["epochs"]):
        assert abs(mine["loss"] - theirs["loss"]) < 0.02 * theirs["loss"]          # mean training loss
    p1_single = hist["epochs"][-1]["validation"]["precision@1"]
    p1_ray = on_ray.history["epochs"][-1]["validation"]["precision@1"]
    assert abs(p1_single - p1_ray) < 5.0
    assert on_ray.stats["bytes_per_update_per_worker"] > 0


def test_ray_worker_data_error_reaches_the_driver_with_its_location(tiny, ray_cluster, tmp_path):
    from boltc.errors import DataError
    plan, train, _ = tiny
    path = _bad_row_file(tmp_path, plan, train)
    with pytest.raises(DataError) as err:
        train_distributed(plan, ModelState.init(plan), str(path), workers=2, timeout=120)
    assert err.value.location.line == 501


def test_ray_dead_worker_restarts_then_fails_clearly(tiny, ray_cluster):
    plan, train, _ = tiny
    init = ModelState.init(plan)
    whole = train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True, epochs=1)
    again = train_distributed(plan, copy.deepcopy(init), train, workers=2, timeout=120, fail_at={0: 6}, epochs=1)
    assert again.stats["restarts"] == 1 and _max_diff(again.state, whole.state) == 0.0
    with pytest.raises(DistributedError, match=r"worker 0 died"):
        train_distributed(plan, copy.deepcopy(init), train, workers=2, timeout=120, fail_at={0: 3}, max_restarts=0)


def test_fit_model_trains_a_compiled_model_on_ray_and_writes_a_resumable_checkpoint(tiny, ray_cluster, tmp_path):
    import boltc
    from boltc.runtime import savefile
    from boltc.runtime.distributed.driver import fit_model
    plan, train, test = tiny
    model = boltc.compile(str(TINY), backend="numpy")
    ckpt = tmp_path / "tiny.ckpt"
    hist = fit_model(model, train, test, epochs=1, workers=2, checkpoint=ckpt, progress=False)
    assert hist["distributed"]["workers"] == 2 and hist["epochs"][0]["epoch"] == 1
    assert model.state.step == 10
    saved = savefile.load_model(ckpt)
    assert saved.optimizer["epochs_done"] == 1 and saved.optimizer["step"] == 10
    # the trained replica serves: its metrics equal the driver's validation of the same state
    got = model.evaluate(test, sparse=False)
    assert abs(got["precision@1"] - hist["epochs"][0]["validation"]["precision@1"]) < 1e-9
    assert all(a.flags.writeable for ts in model.state.params.values() for a in ts.values())


def test_ray_native_workers_from_a_state_a_native_executor_has_used(tiny, ray_cluster):
    """The native executor attaches ctypes hash functions to the LSH indexes; workers must still get
    (and return) a plain copy of the state."""
    plan, train, _ = tiny
    init = ModelState.init(plan)
    make_executor(plan, init, backend="native")              # patches init.lsh with native hashing
    local = train_distributed(plan, copy.deepcopy(ModelState.init(plan)), train, workers=2, in_process=True,
                              backend="native", max_updates=3)
    on_ray = train_distributed(plan, init, train, workers=2, backend="native", max_updates=3, timeout=120)
    assert _max_diff(local.state, on_ray.state) == 0.0


def test_checkpoints_move_between_one_process_and_the_workers_both_ways(tiny, tmp_path):
    """A distributed checkpoint (moments gathered from the workers' shards) resumes in one process, and a
    one-process checkpoint resumes on workers (each takes its rows of the moments); oracle: the same
    continuation from the in-memory state, bit for bit (the file loses nothing)."""
    from boltc.runtime import savefile
    from boltc.runtime.train.trainer import Trainer
    plan, train, _ = tiny
    source = TINY.read_text()
    ck = tmp_path / "dist.boltc"
    first = train_distributed(plan, ModelState.init(plan), train, workers=2, in_process=True, epochs=1,
                              checkpoint=ck, source=source, backend="native")
    saved = savefile.load_model(ck)
    loaded = savefile.state_from_saved(saved, ck)
    for layer in first.state.m:
        for t in first.state.m[layer]:
            assert loaded.m[layer][t].tobytes() == first.state.m[layer][t].tobytes()
    assert any(np.abs(first.state.m["scores"]["W"]).max() > 0 for _ in [0])     # moments were trained
    ds = load_dataset(train, plan)

    def one_more_epoch(state, restored):
        tr = Trainer(plan, state, make_executor(plan, state, backend="native"), progress=False)
        tr.restore(restored)
        tr.fit(ds, epochs=2)
        return state
    a = one_more_epoch(loaded, saved)
    b = one_more_epoch(copy.deepcopy(first.state), saved)
    assert _max_diff(a, b) == 0.0 and a.step == b.step == 20
    # one process -> workers
    ck1 = tmp_path / "one.boltc"
    single = ModelState.init(plan)
    Trainer(plan, single, make_executor(plan, single, backend="native"), checkpoint=ck1, progress=False).fit(ds, epochs=1)
    saved1 = savefile.load_model(ck1)
    resumed = train_distributed(plan, savefile.state_from_saved(saved1, ck1), train, workers=2, in_process=True,
                                epochs=2, history=saved1.history, epochs_done=1, backend="native")
    direct = train_distributed(plan, copy.deepcopy(single), train, workers=2, in_process=True, epochs=2,
                               epochs_done=1, backend="native")
    assert [e["epoch"] for e in resumed.history["epochs"]] == [1, 2]
    for which in ("params", "m", "v"):
        for layer, ts in getattr(direct.state, which).items():
            for t, arr in ts.items():
                assert getattr(resumed.state, which)[layer][t].tobytes() == arr.tobytes(), (which, layer, t)


def test_shared_weights_equal_replicas_bit_for_bit(tiny, monkeypatch):
    """Workers of one machine sharing one copy of the weights (direct links, table rebuilds hashed a
    share per worker) end with exactly the weights, moments and tables of workers that keep replicas
    and exchange new rows (the protocol across machines)."""
    from boltc.runtime.distributed import cluster as distributed_cluster, worker as distributed_worker
    plan, train, _ = tiny
    init = ModelState.init(plan)
    divided, refilled, inserted, kept = [], [], [], []
    real = distributed_worker.Worker.hash_share
    monkeypatch.setattr(distributed_worker.Worker, "hash_share",
                        lambda self, *a: divided.append(self.rank) or real(self, *a))
    real_share = distributed_worker.Worker.tables_share
    monkeypatch.setattr(distributed_worker.Worker, "tables_share",
                        lambda self, *a: refilled.append(real_share(self, *a)[:2]) or real_share(self, *a))
    real_facts = distributed_worker.Worker.apply_facts
    monkeypatch.setattr(distributed_worker.Worker, "apply_facts", lambda self, facts: inserted.append(
        (self.table_share.get("scores"), len(facts["inserts"].get("scores", ((),))[0]))) or real_facts(self, facts))
    real_shutdown = distributed_cluster.InProcessRunner.shutdown
    monkeypatch.setattr(distributed_cluster.InProcessRunner, "shutdown", lambda self: kept.append(
        ([w.state.lsh["scores"] for w in self.workers], [w.shard.m["scores"]["W"] for w in self.workers],
         getattr(self, "shared_arrays", None))) or real_shutdown(self))
    kw = dict(workers=2, in_process=True, backend="native")
    shared = train_distributed(plan, copy.deepcopy(init), train, **kw)
    replicas = train_distributed(plan, copy.deepcopy(init), train, share_weights=False, **kw)
    assert shared.stats["shared_weights"] and not replicas.stats["shared_weights"]
    assert sorted(divided) == [0, 1]                    # the epoch-end rebuild, hashed half by each worker
    L = init.lsh["scores"].L
    assert sorted(refilled) == [(0, L // 2), (L // 2, L)]   # ... and its tables refilled half by each
    # one copy of the tables on one machine, a replica each otherwise; frozen epoch 2 inserted the
    # missed labels into the shared tables, each worker into its half
    ((a, b), moments, arrays), ((c, d), _, no_arrays) = kept
    assert np.shares_memory(a.tables, b.tables) and not np.shares_memory(c.tables, d.tables)
    # each owner's moments are its rows of the machine's one copy, which the driver read at the end
    assert no_arrays is None and all(np.shares_memory(m, arrays[("scores", "W", "m")]) for m in moments)
    # after the last update the result is that copy itself (no worker writes it again)
    assert np.shares_memory(shared.state.params["scores"]["W"], arrays[("scores", "W")])
    assert {share for share, n in inserted[:40] if n} == {(0, L // 2), (L // 2, L)}
    for which in ("params", "m", "v"):
        for layer, ts in getattr(replicas.state, which).items():
            for t, a in ts.items():
                assert getattr(shared.state, which)[layer][t].tobytes() == a.tobytes(), (which, layer, t)
    np.testing.assert_array_equal(shared.state.lsh["scores"].tables, replicas.state.lsh["scores"].tables)
    assert replicas.stats["row_bytes_sent_per_update_per_worker"] == shared.stats["row_bytes_sent_per_update_per_worker"] > 0
    assert shared.stats["bytes_sent_per_update_per_worker"] < replicas.stats["bytes_sent_per_update_per_worker"]
