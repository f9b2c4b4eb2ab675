"""`boltc train model.bolt --train F --test F -o out.boltc`: train with a progress bar, per-epoch metrics
and checkpoints; flags override the model's data and train blocks; `--resume` continues a killed run."""
from __future__ import annotations

from pathlib import Path

from boltc.commands.run import add_train_arguments, compile_from_args, train_and_report
from boltc.errors import DataError

HELP = "train a .bolt model on data files (flags override the data block), with checkpoints and resume"


def add_arguments(p) -> None:
    p.add_argument("model", help="the .bolt file")
    p.add_argument("--train", default=None, help="training data (XC, svmlight, CSV/TSV)")
    p.add_argument("--validation", default=None,
                   help="data for per-epoch metrics and early stopping (default: the data block's validation "
                        "set, else the train block's holdout share of --train, 10%% unless set)")
    p.add_argument("--test", default=None, help="data for the final metrics")
    p.add_argument("-o", "--output", required=True, help="saved model file (.boltc)")
    add_train_arguments(p)


def run(args) -> int:
    model, data = compile_from_args(args)
    train = args.train or data.get("train")
    if train is None:
        raise DataError("no training data: give --train FILE or a data block in the model")
    test = args.test or data.get("test")
    validation = args.validation or data.get("validation")     # never the test set (issue 15)
    return train_and_report(model, args, train, validation, test, Path(args.output))
