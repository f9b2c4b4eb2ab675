"""`boltc eval out.boltc --test F`: metrics of a saved model (dense, and sparse for LSH outputs);
`--confusion` adds the confusion matrix of a single-label or binary target, `--exclude-seen` leaves
each row's own ids out of the ranking."""
from __future__ import annotations

import json

from boltc.commands.run import add_backend_arguments, evaluate_both, load_from_args, metrics_table, note
from boltc.errors import BoltError, DataError
from boltc.runtime.train.metrics import METRIC_WORDS, parse_metric

HELP = "evaluate a saved model on labelled data"
# Decision: a full matrix is readable up to this many classes; wider targets list their most frequent
# (true, predicted) pairs instead (--json always holds every pair).
FULL_MATRIX_CLASSES = 20
TOP_PAIRS = 20


def add_arguments(p) -> None:
    p.add_argument("model", help="saved model (.boltc)")
    p.add_argument("--test", default=None, help="labelled data (default: the model's test set)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated, e.g. precision@1,recall@5,ndcg@5,accuracy,macro_f1")
    p.add_argument("--sparse", action="store_true", help="sparse (LSH) inference only")
    p.add_argument("--dense", action="store_true", help="dense inference only")
    p.add_argument("--exclude-seen", action="store_true",
                   help="leave each row's own feature ids out of the ranking (feature and label ids name the "
                        "same items)")
    p.add_argument("--confusion", action="store_true",
                   help="also print the confusion matrix (single-label and binary targets)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    add_backend_arguments(p)


def _metric_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise BoltError(f"--metrics: expected a comma-separated list of {METRIC_WORDS}")
    for n in names:
        try:
            parse_metric(n)
        except BoltError as e:
            raise BoltError(f"--metrics: {e.message}") from None
    return names


def confusion_text(pairs: list[dict], name) -> str:
    """The matrix (true class per row, predicted class per column) for narrow targets, else the most
    frequent pairs; `name(i)` maps a class id to its printed name."""
    classes = sorted({p["true"] for p in pairs} | {p["predicted"] for p in pairs if p["predicted"] >= 0})
    if len(classes) <= FULL_MATRIX_CLASSES:
        at = {(p["true"], p["predicted"]): p["count"] for p in pairs}
        labels = [name(c)[:10] for c in classes]
        width = max([6] + [len(s) for s in labels]) + 1
        lines = ["confusion (rows: true class, columns: predicted)",
                 " " * width + "".join(f"{s:>{width}}" for s in labels)]
        for c, s in zip(classes, labels):
            lines.append(f"{s:<{width}}" + "".join(f"{at.get((c, d), 0):>{width}}" for d in classes))
        return "\n".join(lines)
    lines = [f"most frequent (true -> predicted) pairs of {len(classes)} classes"]
    for p in pairs[:TOP_PAIRS]:
        lines.append(f"  {name(p['true'])} -> {name(p['predicted'])}: {p['count']}")
    return "\n".join(lines)


def run(args) -> int:
    model = load_from_args(args)
    test = args.test or (model.plan.get("data") or {}).get("test")
    if test is None:
        raise DataError("no test data: give --test FILE")
    metrics = _metric_list(args.metrics) if args.metrics is not None else None
    note(model)
    opts = {"metrics": metrics, "exclude_seen": args.exclude_seen, "confusion": args.confusion}
    try:
        if args.sparse or args.dense:
            results = {("sparse" if args.sparse else "dense"): model.evaluate(test, sparse=args.sparse, **opts)}
        else:
            results = evaluate_both(model, test, **opts)
    except BoltError as e:
        if args.confusion and "confusion" in e.message:
            raise BoltError(f"--confusion: {e.message}") from None
        raise
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    confusions = {mode: r.pop("confusion") for mode, r in results.items() if "confusion" in r}
    print(metrics_table(results))
    for mode, pairs in confusions.items():
        print(f"\n{mode} inference " + confusion_text(pairs, model.class_name))
    return 0
