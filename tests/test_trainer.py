"""Trainer: learning, per-epoch history, checkpoints, and a killed run resuming bit-identically."""
import numpy as np
import pytest

from boltc.runtime import savefile
from boltc.runtime.data.load import load_dataset
from boltc.runtime.exec.executor import make_executor
from boltc.runtime.exec.state import ModelState
from boltc.runtime.train.trainer import Trainer, evaluate


def make_plan(D=300, C=60, H=16, sparsity=None, epochs=3, batch=32, seed=0, lr=3e-3, sampler=None):
    out = {"name": "scores", "op": "fc", "inputs": ["hidden"], "in_dim": H, "dim": C, "activation": "softmax",
           "bias": True, "input_sparse": False, "layout": "out_major", "sparsity": 1.0, "active": C, "hash": None}
    if sparsity:
        out.update(sparsity=sparsity, active=max(1, int(sparsity * C)),
                   hash={"family": "dwta", "hashes": 2, "range_bits": 6, "tables": 6, "reservoir": 8,
                         "bin_size": 8, "rehash_every": 0.25, "rebuild_every": 0.1, "freeze_after": 2})
    return {"format": 1, "model": "t", "inputs": [{"name": "x", "kind": "sparse", "dim": D}],
            "target": {"name": "y", "kind": "multi", "classes": C, "column": None},
            "layers": [{"name": "hidden", "op": "fc", "inputs": ["x"], "in_dim": D, "dim": H,
                        "activation": "relu", "bias": True, "input_sparse": True, "layout": "in_major",
                        "sparsity": 1.0, "active": H, "hash": None}, out],
            "output": "scores", "loss": "cross_entropy", "metrics": ["precision@1", "recall@5"],
            "train": {"optimizer": "adam", "lr": lr, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
                      "momentum": 0.0, "batch": batch, "epochs": epochs, "schedule": {"kind": "linear", "end": 0.1},
                      "sampler": sampler or {"kind": "uniform"}, "threads": 0, "seed": seed,
                      "checkpoint_every": 1, "inference": "both"},
            "data": {}, "memory": {}}


def data(plan, rows=400, seed=1, noise=0.1):
    return load_dataset({"kind": "synthetic", "rows": rows, "seed": seed, "nnz": 20, "max_labels": 1,
                         "noise": noise, "proto_nnz": 24}, plan)


def run(plan, train, val, checkpoint=None, callbacks=()):
    st = ModelState.init(plan)
    tr = Trainer(plan, st, make_executor(plan, st), checkpoint=checkpoint, progress=False)
    hist = tr.fit(train, val, callbacks=callbacks)
    return st, hist


def test_learns_a_separable_task_and_records_history():
    plan = make_plan(D=1000, C=8, H=16, epochs=8, lr=3e-2)
    train, val = data(plan, 400, 1, noise=0.0), data(plan, 200, 2, noise=0.0)
    st, hist = run(plan, train, val)
    eps = hist["epochs"]
    assert [e["epoch"] for e in eps] == list(range(1, 9))
    assert eps[-1]["loss"] < 0.5 * eps[0]["loss"]
    assert eps[-1]["validation"]["precision@1"] >= 99.0
    assert set(eps[-1]["validation"]) >= {"precision@1", "recall@5"}
    assert hist["step"] == st.step == 8 * 13                     # ceil(400 / 32) batches per epoch


class Killed(Exception):
    pass


@pytest.mark.parametrize("sampler", [{"kind": "uniform"}, {"kind": "nw_sketch", "rows": 4, "bits": 4},
                                     {"kind": "nw_sketch", "draw": "alias", "rows": 4, "bits": 4},
                                     {"kind": "auto", "rows": 4, "bits": 4, "min_rows": 0}])
def test_killed_after_an_epoch_resumes_bit_identically(tmp_path, sampler):
    plan = make_plan(sparsity=0.25, epochs=3, sampler=sampler)
    train, val = data(plan, 300, 1), data(plan, 100, 2)
    ref_state, ref_hist = run(plan, train, val)

    ck = tmp_path / "run.ckpt.boltc"

    def kill_after_first(trainer, record):
        if record["epoch"] == 1:
            raise Killed()
    with pytest.raises(Killed):
        run(plan, train, val, checkpoint=ck, callbacks=[kill_after_first])

    saved = savefile.load_model(ck)                 # a fresh process would start from here
    st = savefile.state_from_saved(saved, ck)
    tr = Trainer(saved.plan, st, make_executor(saved.plan, st), checkpoint=ck, progress=False)
    tr.restore(saved)
    assert tr.epochs_done == 1
    hist = tr.fit(train, val)

    for layer, tensors in ref_state.params.items():
        for name, a in tensors.items():
            np.testing.assert_array_equal(st.params[layer][name], a, err_msg=f"{layer}.{name}")
            np.testing.assert_array_equal(st.m[layer][name], ref_state.m[layer][name])
    np.testing.assert_array_equal(st.lsh["scores"].tables, ref_state.lsh["scores"].tables)
    assert st.step == ref_state.step
    assert [e["loss"] for e in hist["epochs"]] == [e["loss"] for e in ref_hist["epochs"]]
    for key in ("validation", "validation_sparse"):
        for metric in ("precision@1", "recall@5"):
            assert hist["epochs"][-1][key][metric] == ref_hist["epochs"][-1][key][metric]


def test_checkpoint_is_a_loadable_model(tmp_path):
    plan = make_plan(epochs=1)
    train = data(plan, 100, 1)
    ck = tmp_path / "c.boltc"
    st, _ = run(plan, train, None, checkpoint=ck)
    saved = savefile.load_model(ck)
    assert saved.optimizer["epochs_done"] == 1 and saved.optimizer["step"] == st.step
    st2 = savefile.state_from_saved(saved)
    a = evaluate(make_executor(plan, st), train, ["precision@1"])
    b = evaluate(make_executor(plan, st2), train, ["precision@1"])
    assert a["precision@1"] == b["precision@1"]


def test_killed_while_auto_thins_resumes_bit_identically(tmp_path):
    """`sampler auto` switched on (noisy labels: a fifth of the rows stay hard) before the kill: the resumed
    run skips the same examples and ends with the same weights as the uninterrupted one."""
    plan = make_plan(C=20, sparsity=0.25, epochs=4, lr=1e-2, sampler={"kind": "auto", "min_rows": 0})
    train, val = data(plan, 1200, 1, noise=0.2), data(plan, 100, 2)
    ref_state, ref_hist = run(plan, train, val)
    assert ref_hist["epochs"][1]["sampler"]["thinning"] == 1           # on by the end of the second epoch
    assert ref_hist["epochs"][-1]["sampler"]["keep_fraction"] < 0.7    # and skipping
    ck = tmp_path / "auto.ckpt.boltc"

    def kill_after_second(trainer, record):
        if record["epoch"] == 2:
            raise Killed()
    with pytest.raises(Killed):
        run(plan, train, val, checkpoint=ck, callbacks=[kill_after_second])
    saved = savefile.load_model(ck)
    st = savefile.state_from_saved(saved, ck)
    tr = Trainer(saved.plan, st, make_executor(saved.plan, st), checkpoint=ck, progress=False)
    tr.restore(saved)
    assert tr.epochs_done == 2
    hist = tr.fit(train, val)
    for layer, tensors in ref_state.params.items():
        for name, a in tensors.items():
            np.testing.assert_array_equal(st.params[layer][name], a, err_msg=f"{layer}.{name}")
    assert st.step == ref_state.step
    assert [e["loss"] for e in hist["epochs"]] == [e["loss"] for e in ref_hist["epochs"]]
    assert [e["sampler"]["keep_fraction"] for e in hist["epochs"]] == \
        [e["sampler"]["keep_fraction"] for e in ref_hist["epochs"]]
