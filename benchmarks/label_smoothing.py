"""Does label smoothing help? The shipped text and XC models trained with `label_smoothing` 0 and E on
the validation split of benchmarks/auto_sparsity.py (10% of the training file, seed 15; the test file
is not read); validation accuracy / P@1 of each.

    python benchmarks/label_smoothing.py [--only sst2,20newsgroups] [--smoothing 0.1]

Prints a table and writes benchmarks/results/label_smoothing.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time

import boltc
from boltc.runtime.data.load import load_dataset

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from auto_sparsity import DATA, RESULTS, SETS, model_text, split  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="sst2,20newsgroups,bibtex")
    ap.add_argument("--smoothing", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    rows = []
    for name in args.only.split(","):
        spec, train_file = SETS[name]
        path = DATA / train_file
        if not path.exists():
            print(f"{name}: {path} not found, skipped", file=sys.stderr)
            continue
        text = re.sub(r"\n\s*data\s*\{[^}]*\}", "\n", model_text(spec))
        probe = boltc.compile(text, holdout=0.0)
        train, val = split(load_dataset(str(path), probe.plan), None)
        metric = "accuracy" if "accuracy" in probe.plan["metrics"] else "precision@1"
        row = {"data": name, "metric": metric, "train_rows": train.rows, "validation_rows": val.rows}
        for e in (0.0, args.smoothing):
            m = boltc.compile(text, backend="native", threads=args.threads, holdout=0.0,
                              **({"label_smoothing": e} if e else {}))
            if train.class_names and not m.plan["target"].get("class_names"):
                m.plan["target"]["class_names"] = list(train.class_names)
            t0 = time.perf_counter()
            m.fit(train, validation=val, progress=False)
            row[str(e)] = {"validation": m.evaluate(val, metrics=[metric])[metric],
                           "epochs": len(m.history["epochs"]), "seconds": time.perf_counter() - t0}
            print(f"{name} smoothing {e}: {row[str(e)]}", file=sys.stderr, flush=True)
        rows.append(row)
    head = f"{'data':<14}{'metric':<13}{'smoothing 0':>13}{f'smoothing {args.smoothing:g}':>15}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['data']:<14}{r['metric']:<13}{r['0.0']['validation']:>13.2f}{r[str(args.smoothing)]['validation']:>15.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "label_smoothing.json").write_text(json.dumps(
        {"machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows},
        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
