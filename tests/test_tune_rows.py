"""`boltc tune` on row samples (multi-fidelity on rows, boltc/tune/search.py and rungs.py): the rung sizes, which
trials move up, and a whole search on a set made "large" by lowering MIN_RUNG_ROWS: the trials of each
rung train on seeded samples of the training part only, the best of one rung train again on the next,
the winner comes from the largest rung, and the final model keeps early stopping on the held-out rows."""
from types import SimpleNamespace

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")     # the `tune` extra; .ci/run installs it

from boltc.runtime.data.holdout import holdout_rows  # noqa: E402
from boltc.tune import rungs, search, trial_data  # noqa: E402
from boltc.tune.rungs import promoted, row_rungs, rung_validation_rows, worth_promoting  # noqa: E402

ROWS = 3000
MODEL = f"""
model small {{
  input  features: sparse(128)
  target labels:   multilabel(40)
  hidden = fc(features, 32, relu)
  scores = fc(hidden, 40, softmax)
  loss    cross_entropy(scores, labels)
  metrics precision@1
  train {{
    optimizer adam(lr=auto)
    batch     64
    epochs    auto
    patience  1
    holdout   0.1
    seed      5
  }}
  data {{
    train synthetic(rows={ROWS}, features=128, labels=40, seed=1, nnz=12, proto_nnz=10, max_labels=1)
    test  synthetic(rows=200, features=128, labels=40, seed=2, nnz=12, proto_nnz=10, max_labels=1)
  }}
}}
"""


def test_row_rungs_are_quarters_down_to_the_smallest_useful_sample():
    n = rungs.MIN_RUNG_ROWS
    assert row_rungs(4 * n - 1) == []                    # a quarter would be under the minimum: all rows
    assert row_rungs(4 * n) == [n]
    assert row_rungs(950_000) == [950_000 // 16, 950_000 // 4]
    assert row_rungs(10**9) == [10**9 // 16, 10**9 // 4]     # at most MAX_ROW_RUNGS below all rows


def test_rung_validation_is_a_fifth_of_its_rows_within_bounds():
    assert rung_validation_rows(50_000, 59_375) == 11_875
    assert rung_validation_rows(50_000, 10_000) == 10_000
    assert rung_validation_rows(4_000, 237_500) == 4_000


def test_the_best_quarter_moves_up_best_first_ties_to_the_earlier_trial():
    t = [SimpleNamespace(number=i, value=v) for i, v in enumerate([5.0, 9.0, 7.0, 9.0, 1.0, 3.0, 8.0, 2.0, 6.0])]
    assert [x.number for x in promoted(t)] == [1, 3, 6]          # ceil(9 / 4) = 3
    assert [x.number for x in promoted(t[:3])] == [1, 2]         # at least PROMOTE_MIN
    assert promoted([]) == []


def test_a_trial_moves_up_only_when_four_times_its_rungs_median_time_fits():
    done = [SimpleNamespace(user_attrs={"seconds": s}) for s in (10.0, 30.0, 20.0)]
    assert worth_promoting(done, 80.0) and not worth_promoting(done, 79.9)      # median 20 s x 4
    assert not worth_promoting([], 1e9)


@pytest.fixture
def small_rungs(monkeypatch):
    monkeypatch.setattr(rungs, "MIN_RUNG_ROWS", 150)
    monkeypatch.setattr(rungs, "MIN_RUNG_VALIDATION", 50)


def test_a_search_on_row_samples_promotes_and_keeps_early_stopping(small_rungs, tmp_path, monkeypatch):
    (tmp_path / "small.bolt").write_text(MODEL)
    seen = []                                            # (row ids of training, of validation) per trial
    real_get = trial_data.TrialData.get

    def spy(self, model):
        tr, va = real_get(self, model)
        seen.append((tr.meta["row_ids"], va.meta["row_ids"], tr.meta.get("rows_of"), va.meta.get("rows_of")))
        return tr, va
    monkeypatch.setattr(trial_data.TrialData, "get", spy)
    res = search.tune(str(tmp_path / "small.bolt"), budget=600, output=tmp_path / "out" / "small.boltc",
                      trials=5, backend="numpy", progress=False, log=lambda m: None)
    n_train = ROWS - round(0.1 * ROWS)
    assert row_rungs(n_train) == [n_train // 16, n_train // 4]
    board = res.trials
    low = [r for r in board if r["rows"] == n_train // 16]
    high = [r for r in board if r["rows"] == n_train // 4]
    assert len(low) == 5 and any(r["state"] == "complete" for r in low)     # the pruner left a finisher
    done_low = sorted((r for r in low if r["state"] == "complete"), key=lambda r: (-r["value"], r["trial"]))
    assert sorted(map(str, (r["params"] for r in high))) == sorted(map(str, (r["params"] for r in done_low[:2])))
    best_high = max((r for r in high if r["state"] == "complete"), key=lambda r: (r["value"], -r["trial"]))
    assert res.best["params"] == best_high["params"] and res.best["rows"] == n_train // 4
    # every sample is drawn from the training part and validated on the held-out part only
    train_part, val_part = holdout_rows(ROWS, 0.1, 5)
    for tr_ids, va_ids, tr_of, va_of in seen[1:]:        # seen[0]: the data check before the search
        assert len(tr_ids) in (n_train // 16, n_train // 4) and "training part" in tr_of
        assert len(va_ids) == min(len(val_part), max(50, len(tr_ids) // 5)) and "validation" in va_of
        assert len(np.unique(tr_ids)) == len(tr_ids) and tr_ids.max() < n_train and va_ids.max() < len(val_part)
    small = [s[0] for s in seen[1:] if len(s[0]) == n_train // 16]
    large = [s[0] for s in seen[1:] if len(s[0]) == n_train // 4]
    assert np.isin(small[0], large[0]).all()             # a promoted trial sees its old rows and more
    # the written model keeps early stopping and the holdout: epochs on a sample do not carry over
    text = res.bolt_path.read_text()
    assert "epochs 100" in text and "patience 1" in text and "holdout 0" not in text    # 0.1: the default
    assert res.model.history["early_stopping"]["best_epoch"] >= 1
    assert res.model.history["tune"]["row_rungs"] == [n_train // 16, n_train // 4]
    assert np.intersect1d(train_part, val_part).size == 0


def test_a_killed_search_on_row_samples_resumes_without_promoting_twice(small_rungs, tmp_path):
    (tmp_path / "small.bolt").write_text(MODEL)
    out = tmp_path / "small.boltc"
    quiet = dict(budget=600, output=out, trials=3, backend="numpy", progress=False, log=lambda m: None)
    first = search.tune(str(tmp_path / "small.bolt"), **quiet)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = JournalStorage(JournalFileBackend(str(out.with_name(out.name + ".tune.journal"))))
    n_high = (ROWS - round(0.1 * ROWS)) // 4
    high = optuna.load_study(study_name=f"boltc-tune-rows-{n_high}", storage=storage)
    before = [(t.params, t.value) for t in high.trials]
    high.ask()                               # a trial left running on the top rung, as by a killed run
    again = search.tune(str(tmp_path / "small.bolt"), **quiet)
    high = optuna.load_study(study_name=f"boltc-tune-rows-{n_high}", storage=storage)
    assert [(t.params, t.value) for t in high.trials[:len(before)]] == before
    assert [t.state.name for t in high.trials[len(before):]] == ["FAIL"]     # no second promotion
    assert again.best["params"] == first.best["params"] and again.best["value"] == first.best["value"]


def test_without_time_for_a_promoted_trial_the_search_stays_on_the_small_rung(small_rungs, tmp_path, monkeypatch):
    monkeypatch.setattr(search, "worth_promoting", lambda finished, left: False)
    (tmp_path / "small.bolt").write_text(MODEL)
    out = tmp_path / "small.boltc"
    res = search.tune(str(tmp_path / "small.bolt"), budget=600, output=out, trials=3, backend="numpy",
                      progress=False, log=lambda m: None)
    n_low = (ROWS - round(0.1 * ROWS)) // 16
    assert {r["rows"] for r in res.trials} == {n_low} and res.best["rows"] == n_low
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = JournalStorage(JournalFileBackend(str(out.with_name(out.name + ".tune.journal"))))
    assert optuna.get_all_study_names(storage) == ["boltc-tune"]
    best_low = max((r for r in res.trials if r["state"] == "complete"), key=lambda r: (r["value"], -r["trial"]))
    assert res.best["params"] == best_low["params"]
