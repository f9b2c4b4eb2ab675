"""Does `sparsity=auto` cost accuracy? For each real data set in ../shared/data: the same model trained
with its output layer dense and with `sparsity=auto` (whatever the choose_sparsity pass decides), both
measured on a validation split carved from the training file (seeded; the test file is never read).

Where the pass keeps the layer dense the two models are the same model: the script says so and trains it
once. Where it makes the layer sparse, both are trained and the table shows validation P@1 of the dense
model and of the auto-sparse one with dense and with sparse (LSH) inference. `--also S` adds the same
model at a hand-set output sparsity S (e.g. BOLT's table) for comparison.

    python benchmarks/auto_sparsity.py [--only bibtex,...] [--nextword-rows 200000] [--also 0.005]

Prints a table and writes benchmarks/results/auto_sparsity.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

import boltc
from boltc.runtime.data.load import load_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
VALIDATION_SHARE = 0.1          # of the training rows, seeded below
SPLIT_SEED = 15

# data set -> (model source, training file, its metric); shipped models where there is one
NEXTWORD = """
model nextword {
  input  features: sparse(149572)
  target labels:   label(37392)
  hidden = fc(features, 128, relu)
  scores = fc(hidden, 37392, softmax, sparsity=auto)
  loss    cross_entropy(scores, labels)
  metrics precision@1, precision@5
  train { optimizer adam(lr=0.001)  batch 256  epochs 1 }
}
"""
COREL = """
model corel5k {
  input  features: sparse(499)
  target labels:   multilabel(374)
  hidden = fc(features, 512, relu)
  scores = fc(hidden, 374, softmax, sparsity=auto)
  loss    cross_entropy(scores, labels)
  metrics precision@1, precision@3
  train { optimizer adam(lr=0.001)  batch 64  epochs 10 }
}
"""
SETS = {
    "bibtex": ("models/bibtex.bolt", "bibtex/xc_split/train.txt.gz"),
    "delicious": ("models/delicious.bolt", "delicious/xc_split/train.txt.gz"),
    "corel5k": (COREL, "corel5k/train.txt.gz"),
    "20newsgroups": ("models/news20.bolt", "20newsgroups/train.csv.gz"),
    "sst2": ("models/sst2.bolt", "sst2/train.tsv.gz"),
    "20ng_nextword": (NEXTWORD, "20ng_nextword/train.txt.gz"),
}


def model_text(spec: str) -> str:
    if "\n" in spec:
        return spec
    return (ROOT / spec).read_text()


def with_output_sparsity(text: str, output: str, value: str) -> str:
    """The model text with its output layer's sparsity set to `value` (auto, 1.0, 0.005, ...)."""
    pat = re.compile(rf"(^\s*{re.escape(output)}\s*=\s*fc\(([^()]|\([^()]*\))*)\)", re.M)
    m = pat.search(text)
    call = re.sub(r",\s*sparsity\s*=\s*[^,)]+", "", m.group(1))
    call = re.sub(r",\s*hash\s*=\s*(\w+\([^()]*\)|\w+)", "", call)
    return text[:m.start()] + f"{call}, sparsity={value})" + text[m.end():]


def output_of(text: str) -> str:
    return re.search(r"loss\s+\w+\(\s*(\w+)", text).group(1)


def split(ds, rows: int | None):
    """(train, validation): a seeded VALIDATION_SHARE of the training rows held out."""
    order = np.random.default_rng(SPLIT_SEED).permutation(ds.rows)
    if rows:
        order = order[:rows]
    n_val = max(1, int(round(VALIDATION_SHARE * order.size)))
    take = lambda idx: _subset(ds, np.sort(idx))                      # noqa: E731
    return take(order[n_val:]), take(order[:n_val])


def _subset(ds, idx):
    from boltc.runtime.data.dataset import Dataset
    b = ds.take(idx)
    return Dataset(inputs=b.inputs, labels=b.labels, class_names=ds.class_names, source=ds.source, meta={})


def run_one(text: str, train, val, threads: int) -> dict:
    # holdout 0: the validation split is carved here, once, for every model of the data set
    m = boltc.compile(text, backend="native", threads=threads, holdout=0.0)
    if train.class_names and not m.plan["target"].get("class_names"):
        m.plan["target"]["class_names"] = list(train.class_names)
    out = next(l for l in m.plan["layers"] if l["name"] == m.plan["output"])
    t0 = time.perf_counter()
    # epochs auto (the shipped models) stops on this validation split, for the dense and sparse alike
    m.fit(train, validation=val, progress=False)
    secs = time.perf_counter() - t0
    metric = "accuracy" if m.plan["target"]["kind"] == "binary" else "precision@1"
    res = {"sparsity": out["sparsity"], "active": out["active"], "labels": out["dim"], "train_seconds": secs,
           "dense_inference": m.evaluate(val, sparse=False, metrics=[metric])[metric]}
    if out.get("hash"):
        res["sparse_inference"] = m.evaluate(val, sparse=True, metrics=[metric])[metric]
        # the same model with BOLT's random fill of the inference active set (runtime/lsh/prior.py)
        out["hash"]["frequent_fill"] = False
        res["sparse_inference_random_fill"] = m.evaluate(val, sparse=True, metrics=[metric])[metric]
        out["hash"]["frequent_fill"] = True
    res["metric"] = metric
    return res


def _reused_dense(path, name: str, train_rows: int, val_rows: int):
    if not path:
        return None
    for r in json.loads(Path(path).read_text())["rows"]:
        if r["data"] == name and r["train_rows"] == train_rows and r["validation_rows"] == val_rows and r["dense"]:
            return r["dense"]
    return None


def choice_reason(text: str) -> tuple[float, str]:
    from boltc.pipeline import load_model_source
    g, plan = load_model_source(text)
    out = plan["output"]
    ch = [c for c in g.graph["choices"] if c.node == out and c.key == "sparsity"]
    return (ch[0].value, ch[0].reason) if ch else (None, "set by hand")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None)
    ap.add_argument("--nextword-rows", type=int, default=200_000,
                    help="training rows drawn from 20ng_nextword (its validation share comes out of them)")
    ap.add_argument("--also", default="", help="comma-separated hand-set output sparsities to add")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dense-from", default=None,
                    help="a JSON this script wrote: reuse its dense row of a data set with the same split "
                         "(same rows) instead of training the dense model again")
    ap.add_argument("--train-dense", action="store_true",
                    help="also train the sets where auto keeps the output dense (the same model either way)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(SETS)
    rows = []
    for name in names:
        spec, train_file = SETS[name]
        path = DATA / train_file
        if not path.exists():
            print(f"{name}: {path} not found, skipped", file=sys.stderr)
            continue
        base = model_text(spec)
        base = re.sub(r"\n\s*data\s*\{[^}]*\}", "\n", base)           # the data block: not used here
        output = output_of(base)
        auto_text = with_output_sparsity(base, output, "auto")
        dense_text = with_output_sparsity(base, output, "1.0")
        value, reason = choice_reason(auto_text)
        probe = boltc.compile(dense_text, holdout=0.0)
        ds = load_dataset(str(path), probe.plan)
        train, val = split(ds, args.nextword_rows if name == "20ng_nextword" else None)
        print(f"{name}: {train.rows} train / {val.rows} validation rows; auto: {value} ({reason})",
              file=sys.stderr, flush=True)
        row = {"data": name, "labels": int(probe.plan["target"]["classes"]), "train_rows": train.rows,
               "validation_rows": val.rows, "auto_sparsity": value,
               "auto_reason": reason}
        alsos = [x for x in filter(None, args.also.split(",")) if float(x) < 1.0 and float(x) != value]
        if (value is None or value >= 1.0) and not alsos and not args.train_dense:
            # auto keeps the layer dense: the auto model is the dense model, nothing to compare
            row["dense"] = None
            rows.append(row)
            continue
        reuse = _reused_dense(args.dense_from, name, train.rows, val.rows)
        row["dense"] = reuse or run_one(dense_text, train, val, args.threads)
        if reuse:
            row["dense_from"] = args.dense_from
        print(f"  dense: {row['dense']}", file=sys.stderr, flush=True)
        if value is not None and value < 1.0:
            row["auto"] = run_one(auto_text, train, val, args.threads)
            print(f"  auto: {row['auto']}", file=sys.stderr, flush=True)
        for x in alsos:
            row[f"sparsity {x}"] = run_one(with_output_sparsity(base, output, x), train, val, args.threads)
            print(f"  {x}: {row[f'sparsity {x}']}", file=sys.stderr, flush=True)
        rows.append(row)
    print(table(rows))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"auto_sparsity{('_' + args.tag) if args.tag else ''}.json"
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "date": time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime()), "validation_share": VALIDATION_SHARE, "split_seed": SPLIT_SEED,
        "rows": rows}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def table(rows: list[dict]) -> str:
    head = (f"{'data':<14}{'labels':>8}{'auto':>10}{'dense P@1':>11}{'auto, dense inf':>17}"
            f"{'auto, sparse inf':>18}{'gap':>7}  other")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["dense"] is None:
            lines.append(f"{r['data']:<14}{r['labels']:>8}{'dense':>10}{'':>11}{'= dense (the same model)':>35}"
                         f"{0.0:>7.2f}")
            continue
        d = r["dense"]["dense_inference"]
        a = r.get("auto")
        if a is None:
            cells = f"{'= dense':>17}{'':>18}{0.0:>7.2f}"
        else:
            worst = min(a["dense_inference"], a.get("sparse_inference", a["dense_inference"]))
            cells = f"{a['dense_inference']:>17.2f}{a.get('sparse_inference', float('nan')):>18.2f}{d - worst:>7.2f}"
            if "sparse_inference_random_fill" in a:
                cells += f"  (random fill: {a['sparse_inference_random_fill']:.2f})"
        other = "; ".join(f"{k}: {v['dense_inference']:.2f}/{v.get('sparse_inference', float('nan')):.2f}"
                          for k, v in r.items() if k.startswith("sparsity "))
        auto = "dense" if (r["auto_sparsity"] or 1.0) >= 1.0 else f"{r['auto_sparsity']:.4g}"
        lines.append(f"{r['data']:<14}{r['labels']:>8}{auto:>10}{d:>11.2f}{cells}  {other}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
