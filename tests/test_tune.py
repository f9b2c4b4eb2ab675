"""`boltc tune` (issue 15): a tuned .bolt retrains to the same test metric, a killed search resumes from
its journal, and every new setting and flag has a located error (a budget too small for one trial too)."""
import pytest

optuna = pytest.importorskip("optuna")     # the `tune` extra; .ci/run installs it

import boltc  # noqa: E402
from boltc.cli import main  # noqa: E402
from boltc.errors import BoltError  # noqa: E402
from boltc.tune import tune  # noqa: E402

MODEL = """
model small {
  input  features: sparse(128)
  target labels:   multilabel(40)
  hidden = fc(features, auto, relu)
  scores = fc(hidden, 40, softmax)
  loss    cross_entropy(scores, labels)
  metrics precision@1
  train {
    optimizer adam(lr=auto)
    batch     64
    epochs    8
    patience  2
    seed      5
  }
  data {
    train synthetic(rows=600, features=128, labels=40, seed=1, nnz=12, proto_nnz=10, max_labels=1)
    test  synthetic(rows=200, features=128, labels=40, seed=2, nnz=12, proto_nnz=10, max_labels=1)
  }
}
"""


@pytest.fixture
def bolt(tmp_path):
    p = tmp_path / "small.bolt"
    p.write_text(MODEL)
    return p


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One search of 3 trials, shared by the tests that read its result."""
    folder = tmp_path_factory.mktemp("tuned")
    (folder / "small.bolt").write_text(MODEL)
    res = tune(str(folder / "small.bolt"), budget=120, output=folder / "out" / "small.boltc", trials=3,
               backend="numpy", progress=False, log=lambda m: None)
    return res, folder


def test_tuned_bolt_retrains_to_the_same_test_metric(tuned):
    res, folder = tuned
    text = res.bolt_path.read_text()
    assert "auto" not in text.split("model small")[1]           # every chosen value written out
    assert "holdout 0.0" in text and f"epochs {res.best['best_epoch']}" in text
    assert f"hidden = fc(features, {res.best['params']['hidden.dim']}, relu" in text
    assert f"adam(lr={res.best['params']['lr']!r})" in text
    again = boltc.compile(str(res.bolt_path), backend="numpy")
    again.fit(progress=False)

    def metrics(d):
        return {k: v for k, v in d.items() if k != "examples_per_s"}
    assert metrics(again.evaluate()) == metrics(res.test["dense"])
    saved = boltc.load(folder / "out" / "small.boltc", backend="numpy")
    assert saved.evaluate()["precision@1"] == res.test["dense"]["precision@1"]


def test_a_killed_search_resumes_from_its_journal(bolt, tmp_path):
    out = tmp_path / "small.boltc"
    quiet = dict(backend="numpy", progress=False, log=lambda m: None)
    tune(str(bolt), budget=120, output=out, trials=1, **quiet)
    journal = out.with_name(out.name + ".tune.journal")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    study = optuna.load_study(study_name="boltc-tune", storage=JournalStorage(JournalFileBackend(str(journal))))
    first = [(t.number, t.params, t.value) for t in study.trials]
    spent = study.user_attrs["elapsed_s"]
    study.ask()                              # a trial left running, as by a run killed mid-trial
    res = tune(str(bolt), budget=120, output=out, trials=3, **quiet)
    study = optuna.load_study(study_name="boltc-tune", storage=JournalStorage(JournalFileBackend(str(journal))))
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and states[1] == "FAIL"            # the orphan is not counted, 2 new trials ran
    assert [(t.number, t.params, t.value) for t in study.trials[:1]] == first
    # the budget left is what the first run did not spend: its time carries over
    assert study.user_attrs["elapsed_s"] > spent > 0
    assert res.search_seconds == pytest.approx(study.user_attrs["elapsed_s"], abs=0.5)


def test_a_journal_of_another_model_is_refused(bolt, tmp_path):
    out = tmp_path / "small.boltc"
    tune(str(bolt), budget=60, output=out, trials=1, backend="numpy", progress=False, log=lambda m: None)
    bolt.write_text(MODEL.replace("batch     64", "batch     32"))
    with pytest.raises(BoltError, match="different tuning run"):
        tune(str(bolt), budget=60, output=out, trials=1, backend="numpy", progress=False, log=lambda m: None)


def test_a_budget_too_small_for_one_trial_says_so(bolt, tmp_path, capsys):
    assert main(["tune", str(bolt), "--budget", "0.001s", "-o", str(tmp_path / "o.boltc"), "--backend", "numpy",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "error: the budget of 0.001s is too small for one trial (its first epoch took" in err
    assert not (tmp_path / "o.bolt").exists() and not (tmp_path / "o.boltc").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--budget", "ten", "argument --budget: expected a duration like 90s, 10m or 1h, found 'ten'"),
    ("--budget", "0", "argument --budget: expected a duration > 0, found '0'"),
    ("--trials", "0", "argument --trials: expected a number of trials >= 1, found '0'"),
])
def test_bad_flags_name_the_flag(bolt, tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as e:
        main(["tune", str(bolt), flag, value, "-o", str(tmp_path / "o.boltc")])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("setting, col, message", [
    ('tune(budget="soon")', 17, "expected a duration like 90s, 10m or 1h, found 'soon'"),
    ("tune(budget=0)", 17, "expected a duration > 0, found 0"),
    ("tune(trials=0)", 17, "expected a number of trials >= 1, found 0"),
    ("tune(budget=60, hurry=1)", 21, "unknown"),
])
def test_tune_setting_errors_are_located(tmp_path, capsys, setting, col, message):
    p = tmp_path / "m.bolt"
    p.write_text(MODEL.replace("    seed      5\n", f"    seed      5\n    {setting}\n"))
    assert main(["check", str(p)]) == 1
    err = capsys.readouterr().err
    assert f"m.bolt:15:{col}: error:" in err and message in err, err


def test_nothing_to_tune_says_so(tmp_path):
    p = tmp_path / "fixed.bolt"
    p.write_text(MODEL.replace("auto", "32").replace("lr=32", "lr=0.01").replace("epochs    8", "epochs 2")
                 .replace("    patience  2\n", ""))
    with pytest.raises(BoltError, match="nothing to tune"):
        tune(str(p), budget=10, output=tmp_path / "o.boltc", backend="numpy", progress=False)


def test_inspect_says_how_the_model_was_tuned(tuned, capsys):
    res, folder = tuned
    assert main(["inspect", str(folder / "out" / "small.boltc")]) == 0
    out = capsys.readouterr().out
    assert "tuned by boltc tune: 3 trials in" in out and f"trial {res.best['number']} chosen (validation precision@1" in out
    assert "trained on all the training rows (train + the validation share)" in out


def test_auto_values_are_recorded_and_take_their_defaults_untuned():
    text = """
model a {
  input x: text(ngrams=auto, dim=auto, idf=auto)
  target y: label(3)
  h = fc(x, auto, relu)
  d = dropout(h, auto)
  s = fc(d, 3, softmax)
  loss cross_entropy(s, y)
  train { optimizer adam(lr=auto, weight_decay=auto)  batch auto  epochs auto  label_smoothing auto }
}
"""
    plan = boltc.compile(text, backend="numpy").plan
    got = {tuple(t["where"]): (t["kind"], t["default"]) for t in plan["tunable"]}
    assert got == {("input", "x", "ngrams"): ("ngrams", 1), ("input", "x", "dim"): ("text_dim", 1 << 18),
                   ("input", "x", "idf"): ("idf", False),
                   ("layer", "h", "dim"): ("width", 256), ("layer", "d", "rate"): ("dropout", 0.0),
                   ("train", "lr"): ("lr", 1e-3), ("train", "weight_decay"): ("weight_decay", 0.0),
                   ("train", "batch"): ("batch", 256), ("train", "label_smoothing"): ("label_smoothing", 0.0)}
    layers = {l["name"]: l for l in plan["layers"]}
    assert layers["h"]["dim"] == 256 and plan["inputs"][0]["ngrams"] == 1 and plan["inputs"][0]["dim"] == 1 << 18
    assert plan["inputs"][0]["idf"] is False
    assert plan["train"]["lr"] == 1e-3 and plan["train"]["batch"] == 256 and plan["train"]["patience"] == 3


def test_run_can_skip_or_bound_the_tune_setting(tmp_path, capsys):
    """`boltc run` on a model with tune(...): --no-tune trains the untuned defaults (no search, no chosen
    .bolt written), --budget bounds the search (a budget too small for one trial says so)."""
    p = tmp_path / "m.bolt"
    p.write_text(MODEL.replace("    seed      5\n", "    seed      5\n    tune(budget=600)\n"))
    out = tmp_path / "m.boltc"
    assert main(["run", str(p), "-o", str(out), "--backend", "numpy", "--no-tune", "--no-progress"]) == 0
    assert out.exists() and not (tmp_path / "m.tuned.bolt").exists() and not list(tmp_path.glob("*.journal"))
    assert "chose trial" not in capsys.readouterr().err
    assert main(["run", str(p), "-o", str(tmp_path / "b.boltc"), "--backend", "numpy", "--budget", "0.001s",
                 "--no-progress"]) == 1
    assert "the budget of 0.001s is too small for one trial" in capsys.readouterr().err


def test_a_small_training_set_scores_each_trial_on_three_disjoint_folds(tuned):
    """600 training rows (under SMALL_ROWS): a trial's value is the mean of its three folds' best values."""
    from boltc.tune.studies import STUDY, journal_storage
    from boltc.tune.trial_data import FOLDS
    res, folder = tuned
    study = optuna.load_study(study_name=STUDY, storage=journal_storage(folder / "out" / "small.boltc.tune.journal"))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for t in complete:
        folds = t.user_attrs["folds"]
        assert len(folds) == FOLDS and t.value == pytest.approx(sum(folds) / FOLDS, abs=0.01)


def test_holdout_folds_are_disjoint_and_fold_zero_is_the_plain_holdout():
    import numpy as np
    from boltc.runtime.data.holdout import holdout_rows
    parts = [holdout_rows(500, 0.1, seed=3, fold=f) for f in range(3)]
    assert np.array_equal(parts[0][1], holdout_rows(500, 0.1, seed=3)[1])
    for tr, va in parts:
        assert len(va) == 50 and np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(500))
    assert not set(parts[0][1]) & set(parts[1][1]) and not set(parts[1][1]) & set(parts[2][1])
    with pytest.raises(BoltError, match="fold 11"):
        holdout_rows(500, 0.1, seed=3, fold=10)


def test_a_chosen_idf_is_written_out_and_planned(tmp_path):
    """`text(..., idf=auto)`: the value a trial chooses reaches the written .bolt and the retrained plan."""
    from boltc.frontend import parse
    from boltc.tune import report, space
    text = """
model a {
  input x: text(idf=auto)
  target y: label(2)
  s = fc(x, 2, softmax)
  loss cross_entropy(s, y)
}
"""
    parsed = parse(text, str(tmp_path / "a.bolt"))
    for chosen in (True, False):
        out = tmp_path / f"a_{chosen}.bolt"
        report.write_bolt(out, space.with_values(parsed, {("input", "x", "idf"): chosen}), [],
                          train=None, validation=None, test=None)
        assert ("idf=true" in out.read_text()) is chosen
        assert boltc.compile(str(out), backend="numpy").plan["inputs"][0]["idf"] is chosen


def test_trials_train_one_network_and_the_final_model_the_ensemble(tmp_path, monkeypatch):
    """`ensemble N` multiplies a training's cost by N: the search compares one network per trial, and
    only the final training (and the written .bolt) has every member."""
    from boltc.api import Model
    from boltc.runtime.train import ensemble
    sizes = []
    real = Model._fit_members

    def counting(self, *args, **kw):
        sizes.append(ensemble.size(self.plan))
        return real(self, *args, **kw)
    monkeypatch.setattr(Model, "_fit_members", counting)
    p = tmp_path / "small.bolt"
    p.write_text(MODEL.replace("    seed      5\n", "    seed      5\n    ensemble  2\n"))
    res = tune(str(p), budget=120, output=tmp_path / "o.boltc", trials=2, backend="numpy", progress=False,
               log=lambda m: None)
    assert sizes[:-1] and set(sizes[:-1]) == {1} and sizes[-1] == 2
    assert "ensemble 2" in res.bolt_path.read_text()
    assert len(res.model.members) == 1 and len(boltc.load(tmp_path / "o.boltc").members) == 1


def tune_ensemble_auto(tmp_path):
    """A 2-trial search of MODEL with `ensemble auto`: (result, its ensemble check, the written .bolt)."""
    p = tmp_path / "small.bolt"
    p.write_text(MODEL.replace("    seed      5\n", "    seed      5\n    ensemble  auto\n"))
    res = tune(str(p), budget=120, output=tmp_path / "o.boltc", trials=2, backend="numpy", progress=False,
               log=lambda m: None)
    return res, res.model.history["tune"]["ensemble_check"], res.bolt_path.read_text()


def test_ensemble_auto_measures_networks_1_to_4_of_the_winner(tmp_path):
    """`ensemble auto`: the check's figures equal the winner's values trained alone with the seeds of
    ensemble networks 1..4 on the search's split (the oracle), and its decision is written out."""
    import re

    from boltc.runtime.data.holdout import split
    from boltc.runtime.train.ensemble import EnsembleExecutor, member_seed
    from boltc.runtime.train.trainer import evaluate
    from boltc.tune import ensemble_check
    res, check, written = tune_ensemble_auto(tmp_path)
    n = check["networks"]
    assert n == (ensemble_check.SIZE if check["gain"] >= ensemble_check.MIN_GAIN else 1)
    assert f"ensemble {n}\n" in written and len(res.model.members) == n - 1
    # the oracle: the written values as the trial trained them (early stopping on the 10% holdout of seed 5)
    trial = re.sub(r"    epochs \d+\n", "    epochs 8\n    patience 2\n", written)
    trial = trial.replace("    holdout 0.0\n", "").replace(f"    ensemble {n}\n", "")
    full = boltc.compile(trial, backend="numpy").dataset(
        {"kind": "synthetic", "rows": 600, "features": 128, "labels": 40, "seed": 1, "nnz": 12, "proto_nnz": 10,
         "max_labels": 1})
    tr, va = split(full, 0.1, 5)
    executors = []
    for i in range(1, ensemble_check.PROBE + 1):
        m = boltc.compile(trial.replace("    seed 5\n", f"    seed {member_seed(5, i)}\n"), backend="numpy")
        m.fit(tr, va, progress=False)
        executors.append(m.executor)
    alone = [round(evaluate(ex, va, ["precision@1"])["precision@1"], 2) for ex in executors]
    assert check["alone"] == alone
    assert check["averaged"] == round(evaluate(EnsembleExecutor(executors), va, ["precision@1"])["precision@1"], 2)


def test_ensemble_auto_is_not_measured_when_its_networks_do_not_fit_the_budget_left(tmp_path, monkeypatch):
    """The check trains PROBE networks of the winner: when PROBE times the winning trial's time exceeds
    the budget left, none is trained, the file gets one network, and its header says why."""
    from boltc.tune import ensemble_check
    assert ensemble_check.affordable(10.0, 4 * 10.0) and not ensemble_check.affordable(10.0, 4 * 10.0 - 0.1)
    trained = []
    monkeypatch.setattr(ensemble_check, "check", lambda *a, **k: trained.append(1))
    # a budget whose share left after the search is smaller than PROBE trials of this model
    monkeypatch.setattr(ensemble_check, "affordable", lambda trial_s, left_s: trial_s * 1e9 <= left_s)
    res, check, written = tune_ensemble_auto(tmp_path)
    assert not trained and check["networks"] == 1 and not res.model.members
    assert "ensemble 1\n" in written and "ensemble auto: not measured" in written
    # one training of the winner: its trial's recorded seconds over the 3 folds it trained (600 rows)
    from boltc.tune.trial_data import FOLDS
    winner = next(r for r in res.trials if r["trial"] == res.best["number"])
    assert check["not_checked"]["trial_s"] == round(winner["seconds"] / FOLDS, 2)
    assert 0 <= check["not_checked"]["left_s"] <= 120
