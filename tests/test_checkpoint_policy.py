"""When checkpoints are written (runtime/train/checkpoints.py): a wall-clock interval by default, every N epochs
when asked, at the end, when a callback stops the run, and on Ctrl-C (a real SIGINT to a real process),
each one still resuming bit-identically."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from boltc.runtime import savefile
from boltc.runtime.train.checkpoints import CheckpointPolicy
from boltc.runtime.exec.executor import make_executor
from boltc.runtime.exec.state import ModelState
from boltc.runtime.train.trainer import Trainer
from runtime_models import tiny_source
from test_trainer import data, make_plan


def test_policy_on_a_clock():
    now = [0.0]
    p = CheckpointPolicy({"checkpoint_interval": 10}, clock=lambda: now[0])
    now[0] = 9.9
    assert not p.due(1, final=False)
    assert p.due(1, final=True)
    now[0] = 10.0
    assert p.due(2, final=False)
    p.written()
    now[0] = 15.0
    assert not p.due(3, final=False)
    every = CheckpointPolicy({"checkpoint_every": 2, "checkpoint_interval": 1e9}, clock=lambda: 0.0)
    assert [e for e in range(1, 6) if every.due(e, final=False)] == [2, 4]


def _saves(plan, tmp_path, callbacks=(), **kw):
    """The epochs after which a checkpoint was written, and the checkpoint file."""
    st = ModelState.init(plan)
    ck = tmp_path / "c.boltc"
    tr = Trainer(plan, st, make_executor(plan, st), checkpoint=ck, progress=False, **kw)
    written = []
    real = tr.save_checkpoint
    tr.save_checkpoint = lambda *a: written.append(tr.epochs_done) or real(*a)
    tr.fit(data(plan, 100, 1), None, callbacks=callbacks)
    return written, ck


@pytest.mark.parametrize("settings,at_end,want", [
    ({"checkpoint_every": 0}, True, [4]),                                  # default: short epochs, the end
    ({"checkpoint_every": 0}, False, []),                                  # boltc run's own checkpoint
    ({"checkpoint_every": 0, "checkpoint_interval": 1e-9}, True, [1, 2, 3, 4]),
    ({"checkpoint_every": 3}, True, [3, 4]),
])
def test_which_epochs_are_checkpointed(tmp_path, settings, at_end, want):
    plan = make_plan(epochs=4)
    plan["train"].update(settings)
    written, ck = _saves(plan, tmp_path, checkpoint_at_end=at_end)
    assert written == want
    assert ck.exists() == bool(want)
    if want:
        assert savefile.load_model(ck).optimizer["epochs_done"] == want[-1]


def test_a_callback_that_stops_the_run_gets_its_epoch_checkpointed(tmp_path):
    plan = make_plan(epochs=4)
    plan["train"]["checkpoint_every"] = 0

    class Stop(Exception):
        pass

    def stop(trainer, record):
        if record["epoch"] == 2:
            raise Stop()
    with pytest.raises(Stop):
        _saves(plan, tmp_path, callbacks=[stop])
    saved = savefile.load_model(tmp_path / "c.boltc")
    assert saved.optimizer["epochs_done"] == 2


def test_ctrl_c_finishes_the_epoch_writes_it_and_resumes_bit_identically(tmp_path):
    bolt = tmp_path / "tiny.bolt"
    bolt.write_text(tiny_source(40, 800))
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "boltc.cli", "train", str(bolt), "--backend", "numpy"]
    ref, out, ck = tmp_path / "ref.boltc", tmp_path / "out.boltc", tmp_path / "out.ckpt"
    # the interrupted run: SIGINT once its first epoch is logged (with the progress bar on, the epoch
    # lines go to stdout)
    p = subprocess.Popen(cmd + ["-o", str(out), "--checkpoint", str(ck)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("epoch 1 "):
            p.send_signal(signal.SIGINT)
            break
    p.stdout.read()
    err = p.stderr.read()
    p.wait(timeout=300)
    assert p.returncode == 130, err
    assert "finishing this epoch" in err
    assert ck.exists(), err
    done = savefile.load_model(ck).optimizer["epochs_done"]
    assert 1 <= done < 40
    assert not out.exists()
    # resume to the end; the reference runs uninterrupted for as many epochs
    r = subprocess.run(cmd + ["-o", str(out), "--checkpoint", str(ck), "--resume", "--no-progress",
                              "--epochs", str(done + 2)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cmd + ["-o", str(ref), "--no-progress", "--epochs", str(done + 2)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = savefile.load_model(ref), savefile.load_model(out)
    for layer, tensors in a.params.items():
        for k, arr in tensors.items():
            np.testing.assert_array_equal(b.params[layer][k], arr, err_msg=f"{layer}.{k}")
    assert [e["loss"] for e in a.history["epochs"]] == [e["loss"] for e in b.history["epochs"]]
