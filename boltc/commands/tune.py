"""`boltc tune model.bolt --budget 10m -o tuned.boltc`: search the values written `auto` on a validation
split within a wall-clock budget (boltc/tune/search.py), print the leaderboard, write the winning model
as TUNED.bolt with every value written out, train it and save it, and evaluate the test set once."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from boltc.commands.common import add_backend_arguments, duration_argument, metrics_table
from boltc.errors import BoltError
from boltc.pipeline import load_model_source
from boltc.tune import tune
from boltc.frontend.duration import parse_duration

HELP = "search the values written auto on a validation split within a time budget; write and train the best model"
DEFAULT_BUDGET = 600.0


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number of trials >= 1, found {text!r}")
    return n


def add_arguments(p) -> None:
    p.add_argument("model", help="the .bolt file (values to search written `auto`)")
    p.add_argument("--budget", type=duration_argument, default=None,
                   help="wall-clock time for the search: 90s, 10m, 1h (default: the train block's tune(budget=), "
                        "else 10m)")
    p.add_argument("--trials", type=_positive, default=None, help="stop after this many trials (default: the budget decides)")
    p.add_argument("-o", "--output", default=None,
                   help="the trained model (.boltc; default MODEL_NAME.boltc); the chosen model is written next to "
                        "it as .bolt, the search's journal as OUTPUT.tune.journal (a killed run resumes from it)")
    p.add_argument("--train", default=None, help="training data (default: the data block's)")
    p.add_argument("--validation", default=None,
                   help="validation data (default: the data block's, else the holdout share of --train)")
    p.add_argument("--test", default=None, help="evaluated once, after the final training (default: the data block's)")
    p.add_argument("--seed", type=int, default=None, help="override the train seed (search and split)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the trial lines stay)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    add_backend_arguments(p)


def settings(plan: dict, budget: float | None, trials: int | None) -> tuple[float, int | None]:
    """The budget and trial cap: the command line's, else the train block's tune(...), else 10 minutes."""
    block = (plan.get("train") or {}).get("tune") or {}
    return (budget if budget is not None else float(block.get("budget", DEFAULT_BUDGET)),
            trials if trials is not None else block.get("trials"))


def run_tune(model_file: str, output: Path, *, budget, trials, train=None, validation=None, test=None,
             backend=None, threads=None, seed=None, progress=True, as_json=False) -> int:
    _, plan = load_model_source(model_file)
    budget, trials = settings(plan, budget, trials)
    res = tune(model_file, budget, output, train=train, validation=validation, test=test, trials=trials,
               backend=backend, threads=threads, seed=seed, progress=progress)
    print(f"chose trial {res.best['number']} (validation {res.metric} {res.best['value']:.2f}); wrote {res.bolt_path}",
          file=sys.stderr)
    print(f"search {res.search_seconds:.1f}s; final training {res.final_seconds:.1f}s on {res.final_data}",
          file=sys.stderr)
    if res.test:
        print(metrics_table(res.test))
    print(f"saved {output}", file=sys.stderr)
    if as_json:
        print(json.dumps({"metrics": res.test, "search_seconds": res.search_seconds,
                          "final_seconds": res.final_seconds, "best": res.best, "bolt": str(res.bolt_path),
                          "trials": res.trials}, indent=1, default=float))
    return 0


def run(args) -> int:
    if not str(args.model).endswith(".bolt") and "{" not in str(args.model):
        raise BoltError(f"{args.model}: boltc tune takes a .bolt file")
    output = Path(args.output or f"{Path(args.model).stem}.boltc")
    return run_tune(args.model, output, budget=args.budget, trials=args.trials, train=args.train,
                    validation=args.validation, test=args.test, backend=args.backend, threads=args.threads,
                    seed=args.seed, progress=not args.no_progress, as_json=args.json)
