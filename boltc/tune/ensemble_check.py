"""`ensemble auto`: after the search, measure whether averaging networks of the winning values pays on
this data, and write `ensemble SIZE` or `ensemble 1` into the tuned .bolt.

How (decisions):
- The check trains PROBE networks of the winner, exactly as its trial trained (same rows, same
  validation rows, early stopping), with the seeds of ensemble networks 1..PROBE: network 0 (the trial's
  own seed) is left out, because the search picked the winner partly for that seed's luck on these very
  validation rows (delicious: 70.82 for the seed searched against 69.12-69.81 for four others of the
  same values; docs/results.md "Ensembles"), which would understate what averaging adds.
- The gain is the validation metric of the PROBE networks averaged minus their mean alone (each ranked
  with the blend, when the model has one). At least MIN_GAIN points: `ensemble SIZE`; else one network,
  which costs SIZE times less to train and serve. Measured on the real sets (four networks against one,
  mean of the runs of benchmarks/ensemble_accuracy.py): delicious +1.20, sst2 +0.41, 20newsgroups
  +0.01, bibtex +0.08 (the last two lean on the ridge blend). Why four: applied to each of those runs,
  the rule with four networks chooses 5 in 9 of 9 delicious runs, 1 of 3 sst2, 0 of 9 20newsgroups and
  1 of 9 bibtex runs; with three, in only 7 of 9 delicious runs (one run's three gained +0.02, another's
  -0.37, where four gained +0.42 and +0.44).
- Budget: the search runs for 1 - BUDGET_SHARE of the budget and the check in the rest (it trains
  PROBE models; a trial of the search often trains one in well under that share of the budget). The
  check runs only when PROBE times the winning trial's own training time fits in the budget left
  (`affordable`); otherwise the file gets one network and its header says why, so a slow model never
  overruns the budget by several trainings. A check that starts is not cut short: stopping its networks
  early would measure networks other than the ones the final training trains.
"""
from __future__ import annotations

import copy
import time

import numpy as np

from boltc.api import Model
from boltc.runtime.train.ensemble import member_seed
from boltc.runtime.train.trainer import evaluate

PROBE = 4
SIZE = 5
MIN_GAIN = 0.25          # points of the metric: below one validation row in 400 (noise of a tie-break)
BUDGET_SHARE = 0.2


def check(text: str, trial_plan: dict, data, metric: str, *, backend, threads, file) -> dict:
    """{"networks": SIZE or 1, "alone": [...], "averaged": v, "gain": v, "seconds": s} on `data`'s
    validation split (`data`: the search's tune.trial_data.TrialData, at the winner's rows)."""
    t0 = time.monotonic()
    plan = copy.deepcopy(trial_plan)
    plan["train"]["seed"] = member_seed(int(trial_plan["train"].get("seed", 0)), 1)
    plan["train"]["ensemble"] = PROBE       # networks 1..PROBE: their seeds continue from network 1's
    model = Model(text, plan, backend=backend, threads=threads, file=file)
    train, validation = data.get(model)
    model.fit(train, validation, progress=False)
    binary = plan["target"].get("kind") == "binary"
    together = model.inference_executor
    alone = [float(evaluate(ex, validation, [metric], binary=binary)[metric]) for ex in together.members]
    averaged = float(evaluate(together, validation, [metric], binary=binary)[metric])
    gain = averaged - float(np.mean(alone))
    return {"networks": SIZE if gain >= MIN_GAIN else 1, "alone": [round(v, 2) for v in alone],
            "averaged": round(averaged, 2), "gain": round(gain, 2),
            "seconds": round(time.monotonic() - t0, 1)}


def affordable(trial_seconds: float, left_seconds: float) -> bool:
    """Whether PROBE trainings of the winner (each about as long as its trial) fit in the budget left."""
    return PROBE * max(float(trial_seconds), 0.0) <= float(left_seconds)


def not_checked(trial_seconds: float, left_seconds: float) -> dict:
    """The result when the check does not fit: one network."""
    return {"networks": 1, "not_checked": {"trial_s": round(float(trial_seconds), 2),
                                           "left_s": round(max(float(left_seconds), 0.0), 2)}, "seconds": 0.0}


def describe(result: dict) -> str:
    """One line for the log and the tuned file's header."""
    if "not_checked" in result:
        nc = result["not_checked"]
        return (f"ensemble auto: not measured ({PROBE} more networks of these values would take about "
                f"{PROBE * nc['trial_s']:.0f}s, {nc['left_s']:.0f}s of the budget was left): 1 network.")
    alone = sum(result["alone"]) / len(result["alone"])
    n = result["networks"]
    return (f"ensemble auto: {len(result['alone'])} more networks of these values, averaged, scored "
            f"{result['averaged']:.2f} against {alone:.2f} alone ({result['gain']:+.2f}; in {result['seconds']:.0f}s): "
            f"{n} network{'s' if n > 1 else ''}.")
