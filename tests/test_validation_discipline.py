"""Issue 15: the held-out validation split (disjoint from the training rows, never the test set) and
early stopping that restores the best epoch (a planted validation curve), across a resume too."""
import numpy as np
import pytest
import scipy.sparse as sp

import boltc
from boltc.cli import main
from boltc.errors import BoltError
from boltc.runtime.train import trainer as trainer_mod
from boltc.runtime.data.holdout import holdout_rows

ROWS, CLASSES = 300, 5

MODEL = """
model ident {
  input  x: sparse(%d)
  target y: label(%d)
  h = fc(x, 8, relu)
  s = fc(h, %d, softmax)
  loss cross_entropy(s, y)
  metrics accuracy
  train { batch 32  epochs %s  seed 3 %s }
}
"""


def model_text(epochs="2", extra=""):
    return MODEL % (ROWS + 50, CLASSES, CLASSES, epochs, extra)


def identity_rows(first, n):
    """Row r has exactly one feature, `first + r`: a batch's feature ids name its rows."""
    X = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), first + np.arange(n))), shape=(n, ROWS + 50))
    return X, (first + np.arange(n)) % CLASSES


def row_ids(X):
    return set(np.asarray(X.tocsr().indices).tolist())


def test_holdout_rows_are_a_disjoint_seeded_cover():
    tr, va = holdout_rows(1000, 0.1, seed=4)
    assert len(va) == 100 and len(tr) == 900
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(1000))
    again, va2 = holdout_rows(1000, 0.1, seed=4)
    assert np.array_equal(va, va2) and not np.array_equal(va, holdout_rows(1000, 0.1, seed=5)[1])


def test_fit_validates_on_held_out_rows_only(monkeypatch):
    """Spies on every training step and every evaluation during fit: the evaluated rows are 10% of the
    training file, none of them is ever trained on, and the test rows are never evaluated."""
    m = boltc.compile(model_text(), backend="numpy")
    trained, evaluated = set(), []
    step = m.executor.train_step

    def spy_step(b, lr):
        trained.update(row_ids(b.inputs["x"]))
        return step(b, lr)
    monkeypatch.setattr(m.executor, "train_step", spy_step)
    real_eval = trainer_mod.evaluate

    def spy_eval(ex, ds, *a, **k):
        evaluated.append(row_ids(ds.inputs["x"]))
        return real_eval(ex, ds, *a, **k)
    monkeypatch.setattr(trainer_mod, "evaluate", spy_eval)
    hist = m.fit(identity_rows(0, ROWS), progress=False)
    assert len(evaluated) == 2 and evaluated[0] == evaluated[1]
    held = evaluated[0]
    assert len(held) == ROWS // 10
    assert not held & trained and held | trained == set(range(ROWS))
    assert "held out" in hist["validation_source"]


def test_cli_train_never_validates_on_the_test_file(tmp_path):
    from boltc.runtime.data.xcformat import write_xc
    bolt = tmp_path / "m.bolt"
    bolt.write_text(model_text())
    for name, first, n in (("train.txt", 0, ROWS), ("test.txt", ROWS, 50)):
        X, y = identity_rows(first, n)
        write_xc(tmp_path / name, X, sp.csr_matrix((np.ones(n), (np.arange(n), y)), shape=(n, CLASSES)))
    out = tmp_path / "m.boltc"
    assert main(["train", str(bolt), "--train", str(tmp_path / "train.txt"), "--test", str(tmp_path / "test.txt"),
                 "-o", str(out), "--backend", "numpy", "--no-progress"]) == 0
    hist = boltc.load(out).history
    assert "train.txt" in hist["validation_source"] and "held out" in hist["validation_source"]


def planted(curve, offset=0):
    """trainer.evaluate replaced by a planted validation curve (one value per call, from `offset`)."""
    calls = [offset]

    def fake(ex, ds, names, *a, **k):
        v = curve[calls[0]]
        calls[0] += 1
        return {n: float(v) for n in names} | {"examples_per_s": 1.0}
    return fake


CURVE = [10.0, 30.0, 20.0, 25.0, 15.0, 40.0, 50.0]


def weights(state):
    return {n: {k: a.copy() for k, a in p.items()} for n, p in state.params.items()}


def same(a, b):
    return all(np.array_equal(a[n][k], b[n][k]) for n in a for k in a[n])


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_early_stopping_restores_the_best_epoch(monkeypatch, backend):
    monkeypatch.setattr(trainer_mod, "evaluate", planted(CURVE))
    m = boltc.compile(model_text("auto", "patience 2"), backend=backend)
    seen = {}
    hist = m.fit(identity_rows(0, ROWS), progress=False,
                 callbacks=[lambda tr, rec: seen.__setitem__(rec["epoch"], weights(tr.state))])
    # best 30 at epoch 2; epochs 3 and 4 are not better, which is patience 2, but no run stops before
    # epoch 5 (MIN_EPOCHS): epoch 5 is not better either, so it stops there (the 40 and 50 never come)
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2, 3, 4, 5]
    es = hist["early_stopping"]
    assert (es["best_epoch"], es["best"], es["epochs_trained"], es["stopped_early"]) == (2, 30.0, 5, True)
    assert same(weights(m.state), seen[2]) and not same(weights(m.state), seen[5])


def test_early_stopping_resumes_from_a_checkpoint_as_if_never_killed(monkeypatch, tmp_path):
    monkeypatch.setattr(trainer_mod, "evaluate", planted(CURVE))
    whole = boltc.compile(model_text("auto", "patience 2"), backend="numpy")
    whole.fit(identity_rows(0, ROWS), progress=False)

    class Killed(Exception):
        pass

    def kill(tr, rec):
        if rec["epoch"] == 3:
            raise Killed
    ckpt = tmp_path / "run.ckpt"
    monkeypatch.setattr(trainer_mod, "evaluate", planted(CURVE))
    first = boltc.compile(model_text("auto", "patience 2"), backend="numpy")
    with pytest.raises(Killed):
        first.fit(identity_rows(0, ROWS), progress=False, checkpoint=ckpt, callbacks=[kill])
    monkeypatch.setattr(trainer_mod, "evaluate", planted(CURVE, offset=3))
    again = boltc.compile(model_text("auto", "patience 2"), backend="numpy")
    hist = again.fit(identity_rows(0, ROWS), progress=False, checkpoint=ckpt, resume=True)
    assert hist["early_stopping"]["best_epoch"] == 2 and len(hist["epochs"]) == 5
    assert same(weights(again.state), weights(whole.state))


def test_inspect_shows_epochs_trained_and_the_curve(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(trainer_mod, "evaluate", planted(CURVE))
    m = boltc.compile(model_text("auto", "patience 2"), backend="numpy")
    m.fit(identity_rows(0, ROWS), progress=False)
    m.save(tmp_path / "m.boltc")
    assert main(["inspect", str(tmp_path / "m.boltc")]) == 0
    out = capsys.readouterr().out
    assert "epochs trained: 5 (stopped early: no better validation accuracy for 2 epochs; weights of epoch 2 kept)" in out
    assert "validation accuracy by epoch: 10.00 [30.00] 20.00 25.00 15.00" in out


def test_epochs_auto_without_validation_data_says_so():
    m = boltc.compile(model_text("auto", "holdout 0"), backend="numpy")
    with pytest.raises(BoltError, match="no validation data"):
        m.fit(identity_rows(0, ROWS), progress=False)


@pytest.mark.parametrize("setting, where, message", [
    ("epochs often", "often", "epochs: expected a number of epochs or auto, found"),
    ("epochs 0", "0", "epochs: expected a number of epochs or auto >= 1"),
    ("patience 0", "0", "patience: expected a number of epochs >= 1"),
    ("patience auto", "auto", "patience: expected a number of epochs"),
    ("holdout 10", "10", "holdout: expected a share of the training rows (0 = none) <= 0.9"),
    ("holdout -0.1", "-0.1", "holdout: expected a share of the training rows (0 = none) >= 0"),
])
def test_new_settings_have_located_errors(tmp_path, capsys, setting, where, message):
    text = f"model m {{\n  input x: sparse(10)\n  target y: label(3)\n  s = fc(x, 3, softmax)\n" \
           f"  loss cross_entropy(s, y)\n  train {{\n    {setting}\n  }}\n}}\n"
    bolt = tmp_path / "m.bolt"
    bolt.write_text(text)
    assert main(["check", str(bolt)]) == 1
    err = capsys.readouterr().err
    col = 5 + len(setting.split()[0]) + 1
    assert f"m.bolt:7:{col}: error: {message}" in err, err


def test_a_decaying_schedule_with_epochs_auto_is_located(tmp_path, capsys):
    bolt = tmp_path / "m.bolt"
    bolt.write_text("model m {\n  input x: sparse(10)\n  target y: label(3)\n  s = fc(x, 3, softmax)\n"
                    "  loss cross_entropy(s, y)\n  train {\n    epochs auto\n    schedule linear(end=0.1)\n  }\n}\n")
    assert main(["check", str(bolt)]) == 1
    assert "m.bolt:8:14: error: schedule linear decays over a known number of epochs; with `epochs auto` use " \
           "constant or step(every=E)" in capsys.readouterr().err


def test_no_stop_before_the_minimum_of_epochs(monkeypatch):
    """A flat start (the same value for four epochs, then learning) is not ended by patience 2."""
    monkeypatch.setattr(trainer_mod, "evaluate", planted([42.0, 42.0, 42.0, 42.0, 50.0, 60.0, 55.0, 54.0, 53.0]))
    m = boltc.compile(model_text("auto", "patience 2"), backend="numpy")
    es = m.fit(identity_rows(0, ROWS), progress=False)["early_stopping"]
    assert (es["best_epoch"], es["best"], es["epochs_trained"]) == (6, 60.0, 8)
    from boltc.runtime.train.early_stop import MIN_EPOCHS
    assert MIN_EPOCHS == 5


def test_with_a_blend_early_stopping_watches_the_network_and_reports_the_blend(monkeypatch):
    """Planted curves: the blended metric is flat (the ridge dominates) and would stop at epoch 3; the
    network's own curve peaks at epoch 5, which is the epoch kept; the model's (blended) value at that
    epoch is what the summary, and so `boltc tune`, reports."""
    network = [10.0, 20.0, 30.0, 35.0, 50.0, 45.0, 40.0, 30.0]
    blended = [60.0, 61.0, 60.5, 60.0, 60.8, 60.1, 59.0, 58.0]
    calls = []

    def fake(ex, ds, names, *a, **k):
        own = k.get("blended") is False
        calls.append(own)
        curve = network if own else blended
        v = curve[sum(1 for c in calls if c == own) - 1]
        return {n: float(v) for n in names} | {"examples_per_s": 1.0}
    monkeypatch.setattr(trainer_mod, "evaluate", fake)
    m = boltc.compile(model_text("auto", "patience 3 blend ridge(weight=1, l2=1)"), backend="numpy")
    seen = {}
    hist = m.fit(identity_rows(0, ROWS), progress=False,
                 callbacks=[lambda tr, rec: seen.__setitem__(rec["epoch"], weights(tr.state))])
    es = hist["early_stopping"]
    assert (es["best_epoch"], es["best"], es["validation_at_best"], es["epochs_trained"]) == (5, 50.0, 60.8, 8)
    assert [e["validation_network"]["accuracy"] for e in hist["epochs"]] == network
    assert same(weights(m.state), seen[5])
    from boltc.tune.search import _best
    assert _best(hist, "accuracy") == (60.8, 5)
    # without a blend nothing else is measured and the summary's value is the watched one
    calls.clear()
    plain = boltc.compile(model_text("auto", "patience 2"), backend="numpy")
    monkeypatch.setattr(trainer_mod, "evaluate", planted(CURVE))
    h = plain.fit(identity_rows(0, ROWS), progress=False)
    assert "validation_network" not in h["epochs"][0] and h["early_stopping"]["validation_at_best"] == 30.0
