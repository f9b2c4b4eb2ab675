"""The Optuna studies of `boltc tune`, kept in a journal file so that a killed search resumes: the search's
study (TPE sampler, successive-halving pruner) and one study per row rung (rungs.py)."""
from __future__ import annotations

from pathlib import Path

from boltc.errors import BoltError, DependencyError
from boltc.tune.rungs import promoted

STUDY = "boltc-tune"
REDUCTION = 3              # successive halving keeps the best third at each rung
MIN_RESOURCE = 2           # first rung: after two epochs (a slow learning rate often trails after one)


def optuna_module():
    try:
        import optuna  # optional: the tune extra
    except ImportError:
        raise DependencyError("boltc tune needs Optuna: pip install 'boltc[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(optuna, journal: Path, seed: int, fp: str, defaults: dict):
    """The search's study (the smallest row rung's, when there are rungs)."""
    from optuna.trial import TrialState  # optional: the tune extra
    storage = journal_storage(journal)
    study = optuna.create_study(
        study_name=STUDY, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=MIN_RESOURCE, reduction_factor=REDUCTION))
    have = study.user_attrs.get("fingerprint")
    if have is None:
        study.set_user_attr("fingerprint", fp)
        study.set_user_attr("elapsed_s", 0.0)
        study.enqueue_trial(defaults)
    elif have != fp:
        raise BoltError(f"{journal} holds the trials of a different tuning run (the model, its data or its "
                        "search changed): remove it to start afresh, or write to another -o")
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # a killed run left it running: it will never finish
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return study


def journal_storage(journal: Path):
    from optuna.storages import JournalStorage  # optional: the tune extra
    from optuna.storages.journal import JournalFileBackend  # optional: the tune extra
    return JournalStorage(JournalFileBackend(str(journal)))


def complete(optuna, study) -> list:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def open_rung_study(optuna, journal: Path, rows: int, below, bar):
    """The study of the rung with `rows` training rows: the best trials of the rung below enqueued once
    (with their values; no sampler, no pruner: the few promoted trials are compared whole). None when the
    rung below finished no trial."""
    storage = journal_storage(journal)
    st = optuna.create_study(study_name=f"{STUDY}-rows-{rows}", storage=storage, direction="maximize",
                             load_if_exists=True, pruner=optuna.pruners.NopPruner())
    if st.user_attrs.get("promoted"):
        for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)   # a killed run's
        return st
    up = promoted(complete(optuna, below))
    if not up:
        return None
    for t in up:
        st.enqueue_trial(dict(t.params), user_attrs={"from_trial": t.number})
    st.set_user_attr("promoted", [t.number for t in up])
    bar.note(f"{len(up)} trial(s) promoted to {rows:,} rows: " + ", ".join(f"trial {t.number} ({t.value:.2f})" for t in up))
    return st
