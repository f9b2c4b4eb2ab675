"""`boltc predict out.boltc --input F --top-k 5`: top-k labels per row, one output line per input row:
`label:score label:score ...` (class names for text models); binary models print the predicted class,
a tab and P(positive). Rows come from --input (a data file), from
--text "..." (text models), or from stdin (`f:v f:v` rows for sparse models, one text per line for text
models)."""
from __future__ import annotations

import sys

from boltc.commands.run import add_backend_arguments, load_from_args, note
from boltc.errors import BoltError
from boltc.runtime.data.load import read_rows_text
from boltc.runtime.train.ranking import seen_input

HELP = "print the top-k predictions for rows from a file, stdin or --text"


def add_arguments(p) -> None:
    p.add_argument("model", help="saved model (.boltc)")
    p.add_argument("--input", default=None, help="data file (default: read rows from stdin)")
    p.add_argument("--text", action="append", default=None, help="a text to classify (text models; repeatable)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--sparse", action="store_true", help="sparse (LSH) inference")
    p.add_argument("--dense", action="store_true", help="dense inference")
    p.add_argument("--exclude-seen", action="store_true",
                   help="leave out of the ranking the labels whose ids are among the row's own feature ids "
                        "(feature and label ids name the same items, e.g. recommendation)")
    add_backend_arguments(p)


def run(args) -> int:
    model = load_from_args(args)
    if args.top_k < 1:
        raise BoltError("--top-k must be at least 1")
    if args.exclude_seen:
        seen_input(model.plan)
    text_model = any(i.get("kind") in ("text", "categorical") for i in model.plan.get("inputs", []))
    if args.text:
        if not text_model:
            raise BoltError("--text needs a model with a text input; this one reads sparse features")
        data = list(args.text)
    elif args.input:
        data = args.input
    else:
        raw = sys.stdin.read()
        data = [l for l in raw.splitlines() if l.strip()] if text_model else read_rows_text(raw, model.plan)
    note(model)
    sparse = True if args.sparse else (False if args.dense else None)
    ids, scores = model.predict(data, top_k=args.top_k, sparse=sparse, exclude_seen=args.exclude_seen)
    named = bool(model.plan["target"].get("class_names"))
    out = sys.stdout
    if model.plan["target"].get("kind") == "binary":
        # one probability per row: print the predicted class, a tab, P(positive)
        names = model.plan["target"].get("class_names") or ["0", "1"]
        for p in scores[:, 0].tolist():
            out.write(f"{names[1] if p >= 0.5 else names[0]}\t{p:.4g}\n")
        return 0
    for row_ids, row_scores in zip(ids.tolist(), scores.tolist()):
        out.write(" ".join(f"{model.class_name(i) if named else i}:{s:.4g}"
                           for i, s in zip(row_ids, row_scores) if i >= 0) + "\n")
    return 0
