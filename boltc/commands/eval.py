"""`boltc eval out.boltc --test F`: metrics of a saved model (dense, and sparse for LSH outputs)."""
from __future__ import annotations

import json

from boltc.commands.run import add_backend_arguments, evaluate_both, metrics_table, note

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
    import boltc
    from boltc.errors import DataError
    model = boltc.load(args.model, backend=args.backend, threads=args.threads)
    test = args.test or (model.plan.get("data") or {}).get("test")
    if test is None:
        raise DataError("no test data: give --test FILE")
    note(model)
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    if args.sparse or args.dense:
        results = {("sparse" if args.sparse else "dense"): model.evaluate(test, sparse=args.sparse, metrics=metrics)}
    elif metrics:
        results = {"dense": model.evaluate(test, sparse=False, metrics=metrics)}
        from boltc.commands.run import is_sparse_output
        if is_sparse_output(model.plan):
            results["sparse"] = model.evaluate(test, sparse=True, metrics=metrics)
    else:
        results = evaluate_both(model, test)
    print(json.dumps(results, indent=1) if args.json else metrics_table(results))
    return 0
