"""`boltc eval out.boltc --test F`: metrics of a saved model (dense, and sparse for LSH outputs)."""
from __future__ import annotations

import json

from boltc.commands.run import add_backend_arguments, evaluate_both, load_from_args, metrics_table, note
from boltc.errors import DataError

HELP = "evaluate a saved model on labelled data"


def add_arguments(p) -> None:
    p.add_argument("model", help="saved model (.boltc)")
    p.add_argument("--test", default=None, help="labelled data (default: the model's test set)")
    p.add_argument("--metrics", default=None, help="comma-separated, e.g. precision@1,recall@5,accuracy")
    p.add_argument("--sparse", action="store_true", help="sparse (LSH) inference only")
    p.add_argument("--dense", action="store_true", help="dense inference only")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    add_backend_arguments(p)


def run(args) -> int:
    model = load_from_args(args)
    test = args.test or (model.plan.get("data") or {}).get("test")
    if test is None:
        raise DataError("no test data: give --test FILE")
    note(model)
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    if args.sparse or args.dense:
        results = {("sparse" if args.sparse else "dense"): model.evaluate(test, sparse=args.sparse, metrics=metrics)}
    else:
        results = evaluate_both(model, test, metrics)
    print(json.dumps(results, indent=1) if args.json else metrics_table(results))
    return 0
