"""`boltc run model.bolt`: the main job. Compile, train on the data the file names, evaluate on its test
set (dense inference, and sparse inference too when the output layer is LSH-sparse), save the model.

The other runtime commands (train, eval, predict, inspect) share the helpers below.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import boltc
from boltc.commands.common import (add_backend_arguments, duration_argument, evaluate_both,  # noqa: F401
                                   is_sparse_output, metrics_table)
from boltc.errors import DataError
from boltc.runtime.distributed.driver import fit_model

HELP = "compile, train on the model's data block, evaluate and save (the main job)"


# ---------------------------------------------------------------- shared helpers

def add_train_arguments(p) -> None:
    """The options of the training commands (run, train): backend, train-block overrides, checkpoints
    and distribution."""
    add_backend_arguments(p)
    p.add_argument("--epochs", type=int, default=None, help="override the train block's epochs")
    p.add_argument("--lr", type=float, default=None, help="override the learning rate")
    p.add_argument("--batch", type=int, default=None, help="override the batch size")
    p.add_argument("--seed", type=int, default=None, help="override the training seed")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file, written at epoch ends on the train block's interval (default every "
                        "300 s of wall clock), at the end and on Ctrl-C (default: OUTPUT.ckpt, removed after "
                        "a finished run)")
    p.add_argument("--checkpoint-interval", type=float, default=None, metavar="SECONDS",
                   help="override the train block's checkpoint_interval")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the per-epoch lines are still printed)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON on stdout")
    p.add_argument("--workers", type=int, default=None,
                   help="train data-parallel on N Ray workers (needs: pip install boltc[distributed])")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: auto (the running one, else a local one) or ray://host:port")
    p.add_argument("--exchange", choices=("sparse",), default=None,
                   help="what workers exchange each step (default: the model's distributed block, else sparse)")


def compile_from_args(args):
    """(model, its data block) for `run` and `train`: the .bolt file compiled with the command line's
    backend and its overrides of the train block."""
    model = boltc.compile(args.model, backend=args.backend, threads=args.threads,
                          lr=args.lr, batch=args.batch, seed=args.seed,
                          checkpoint_interval=getattr(args, "checkpoint_interval", None))
    return model, model.plan.get("data") or {}


def load_from_args(args):
    """The saved model of `eval` and `predict`, on the command line's backend and threads."""
    return boltc.load(args.model, backend=args.backend, threads=args.threads)


def note(model) -> None:
    _ = model.executor                  # build it now so the backend choice is known
    if model.backend_note:
        print(model.backend_note, file=sys.stderr)


def train_and_report(model, args, train, validation, test, output: Path) -> int:
    ckpt = Path(args.checkpoint) if args.checkpoint else output.with_name(output.name + ".ckpt")
    note(model)
    try:
        if getattr(args, "workers", None) is not None or model.plan["train"].get("distributed"):
            hist = fit_model(model, train, validation, epochs=args.epochs, workers=args.workers,
                             address=args.address, exchange=args.exchange, checkpoint=ckpt,
                             resume=args.resume, progress=True)     # its only progress: the epoch lines
        else:
            # the default checkpoint is deleted once the model is saved: none is written at the end
            hist = model.fit(train, validation, epochs=args.epochs, checkpoint=ckpt, resume=args.resume,
                             progress=not args.no_progress, checkpoint_at_end=bool(args.checkpoint),
                             epoch_lines=True)
    except KeyboardInterrupt:
        if ckpt.exists():
            print(f"interrupted: the last checkpoint is {ckpt}; run the same command with --resume to continue",
                  file=sys.stderr)
        raise
    model.save(output)
    if not args.checkpoint and ckpt.exists():
        ckpt.unlink()       # the run finished and the model is saved: the default checkpoint has done its job
    epochs = hist.get("epochs", [])
    runs = [epochs] + [m.get("epochs") or [] for m in hist.get("members") or []]   # `ensemble N`: every network
    train_s = sum(e["seconds"] for r in runs for e in r)
    upkeep = sum(e.get("upkeep_seconds", 0.0) for r in runs for e in r)
    what = (f"{len(epochs)} epochs" if len(runs) == 1 else
            f"{len(runs)} networks ({', '.join(str(len(r)) for r in runs)} epochs)")
    print(f"trained {what} in {train_s:.1f}s on the {model.backend} backend "
          f"(hash-table upkeep {100 * upkeep / train_s if train_s else 0:.1f}% of training time)", file=sys.stderr)
    results = evaluate_both(model, test) if test is not None else {}
    if results:
        print(metrics_table(results))
    print(f"saved {output}", file=sys.stderr)
    if args.json:
        print(json.dumps({"metrics": results, "train_seconds": train_s, "epochs": epochs}, indent=1, default=float))
    return 0


# ---------------------------------------------------------------- boltc run

def add_arguments(p) -> None:
    p.add_argument("model", help="the .bolt file")
    p.add_argument("-o", "--output", default=None, help="saved model (default: MODEL_NAME.boltc)")
    # a model whose train block says tune(...) searches first; these two let a user bound or skip that
    # search without editing the file (skipped, the values written `auto` take their untuned defaults)
    p.add_argument("--budget", type=duration_argument, default=None,
                   help="wall-clock time for the tune(...) search: 90s, 10m, 1h (default: the train block's)")
    p.add_argument("--no-tune", action="store_true",
                   help="skip the train block's tune(...) search: train the values written auto at their defaults")
    add_train_arguments(p)


def run(args) -> int:
    model, data = compile_from_args(args)
    if not data.get("train"):
        raise DataError(f"{args.model} has no data block naming a train set; use `boltc train` with --train")
    output = Path(args.output or f"{model.plan.get('model') or Path(args.model).stem}.boltc")
    if model.plan["train"].get("tune") and not args.no_tune:
        # a tune(...) setting: search the values written auto first (boltc/tune), then train the winner
        # the search (boltc/tune) is imported only by a run that tunes: a plain train does not load it
        from boltc.commands.tune import run_tune
        return run_tune(args.model, output, budget=args.budget, trials=None, backend=args.backend, threads=args.threads,
                        seed=args.seed, progress=not args.no_progress, as_json=args.json)
    # per-epoch metrics on the data block's validation set, else on the train block's holdout share of
    # the training rows (Model.fit); the test set is evaluated once, after training
    return train_and_report(model, args, data["train"], data.get("validation"), data.get("test"), output)
