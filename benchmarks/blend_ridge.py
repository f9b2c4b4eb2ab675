"""What `blend ridge(weight, l2)` adds to the network's ranking, on validation data carved from the training
rows of the real sets (../shared/data; skipped when absent). Nothing here reads a test file.

For each data set and seed: the shipped model with its `auto` values fixed (--hidden, --dropout, --lr,
--batch; the others at their untuned defaults), trained with early stopping on the network's own
validation metric; then the ridge solved on the same training rows, and the validation metric of the
network + weight x ridge for each weight (weight 0 = the network alone; "ridge" = the ridge alone).

    python benchmarks/blend_ridge.py --data bibtex,delicious --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boltc  # noqa: E402
from benchmarks.bench_common import machine, table, write_json  # noqa: E402
from boltc.runtime.train import blend  # noqa: E402
from boltc.runtime.train.trainer import evaluate, metric_names  # noqa: E402

MODELS = {"bibtex": "bibtex.bolt", "delicious": "delicious.bolt", "news20": "news20.bolt", "sst2": "sst2.bolt"}
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)


def fixed_source(path: Path, hidden: int, dropout: float) -> str:
    text = path.read_text()
    for inp in ("features", "post", "sentence"):
        text = text.replace(f"fc({inp}, auto, relu)", f"fc({inp}, {hidden}, relu)")
    return text.replace("dropout(hidden, auto)", f"dropout(hidden, {dropout})")


def run(name: str, seed: int, args) -> dict:
    path = ROOT / "models" / MODELS[name]
    m = boltc.compile(fixed_source(path, args.hidden, args.dropout), lr=args.lr, batch=args.batch, seed=seed)
    m.file = str(path)
    m.plan["train"].pop("blend", None)                  # the network alone trains and stops early
    t0 = time.perf_counter()
    train = m.dataset(m.data_source("train"))
    if train.class_names and not m.plan["target"].get("class_names"):
        m.plan["target"]["class_names"] = list(train.class_names)
    val_src = m.data_source("validation")
    tr, va = m.validation_split(train, val_src)
    m.fit(tr, va, progress=False)
    fit_s = time.perf_counter() - t0
    metric = metric_names(m.plan)[0]
    t0 = time.perf_counter()
    w = blend.fit_ridge(tr.inputs[blend.input_name(m.plan)], tr.labels, args.l2)
    ridge_s = time.perf_counter() - t0
    row = {"data": name, "seed": seed, "metric": metric, "train_s": round(fit_s, 1), "ridge_s": round(ridge_s, 2)}
    m.state.blend["ridge"] = w
    for weight in WEIGHTS:
        m.plan["train"]["blend"] = {"kind": "ridge", "weight": weight, "l2": args.l2}
        row[f"w={weight:g}"] = round(evaluate(m.executor, va, [metric])[metric], 2)
    m.plan["train"]["blend"] = {"kind": "ridge", "weight": 1e6, "l2": args.l2}     # the ridge decides alone
    row["ridge"] = round(evaluate(m.executor, va, [metric])[metric], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="bibtex,delicious,news20,sst2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--l2", type=float, default=1.0)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    rows = []
    for name in args.data.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            r = run(name, seed, args)
            print(r, flush=True)
            rows.append(r)
    means = []
    for name in args.data.split(","):
        rs = [r for r in rows if r["data"] == name]
        if not rs:
            continue
        mean = {"data": name, "metric": rs[0]["metric"], "seeds": len(rs)}
        for k in [f"w={w:g}" for w in WEIGHTS] + ["ridge"]:
            v = [r[k] for r in rs]
            mean[k] = f"{np.mean(v):.2f} ± {np.std(v):.2f}"
        means.append(mean)
    cols = ["data", "metric", "seeds"] + [f"w={w:g}" for w in WEIGHTS] + ["ridge"]
    print(table(means, cols))
    out = write_json("blend_ridge" + (f"_{args.tag}" if args.tag else ""),
                     {"machine": machine(), "settings": vars(args), "runs": rows, "means": means})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
