"""Is `ensemble N` worth it? The validation metric of 1 to N averaged networks, never the test file.

For each data set, each model that `boltc tune` chose in a real_accuracy run (one per seed, read from its
JSON: every value written out) is trained with `ensemble N` on validation rows carved from the training
data (bibtex, delicious, 20newsgroups: disjoint 10% folds of the training rows, runtime/data/holdout.py;
sst2: its dev file, the validation data of models/sst2.bolt) for the tuned number of epochs, and the
validation metric of the first k members' mean output is recorded for k = 1..N (k = 1 is the model
without `ensemble`). Native backend, one thread; the metric does not depend on the machine's load.

    python benchmarks/ensemble_accuracy.py --data delicious --members 5 --tag delicious
    python benchmarks/ensemble_accuracy.py --data bibtex,news20,sst2 --members 5 --tag others

`--across-configs`: the tuned models of the run's seeds (different values: n-grams, widths, blend...)
averaged with one another, against the same number of networks of one model. Each model trains
networks 0..K (K = the number of tuned models) on the same validation split; network 0 is left out as
above. Per fold: one network alone (mean over models and networks 1..K), K networks of one model
averaged (mean over models), network 1 of each of the K models averaged, and each model's networks
1..K averaged, then the K models. A model's scores are its network's output plus its own blend.

    python benchmarks/ensemble_accuracy.py --data sst2,news20,bibtex --across-configs --tag across

Writes benchmarks/results/ensemble_accuracy_TAG.json. Every run prints its row as one JSON line;
`--from-log LOG` makes the table and the file from those lines (a run stopped before its end).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boltc  # noqa: E402
from boltc.runtime.data.holdout import split  # noqa: E402
from boltc.runtime.exec.topk import add_output, mask_never_seen, top_k_of  # noqa: E402
from boltc.runtime.train import blend, metrics  # noqa: E402
from boltc.runtime.train.ensemble import EnsembleExecutor  # noqa: E402
from boltc.runtime.train.trainer import evaluate, metric_names  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# data set -> (shipped model, the real_accuracy run whose tuned models are measured, its result key)
SETS = {"bibtex": ("bibtex", "real_accuracy_xc_3seeds.json", "bibtex"),
        "delicious": ("delicious", "real_accuracy_xc_3seeds.json", "delicious"),
        "news20": ("news20", "real_accuracy_news20_3seeds.json", "20newsgroups"),
        "sst2": ("sst2", "real_accuracy_sst2_3seeds.json", "sst2")}
DATA_BLOCK = re.compile(r"\n  data \{.*?\n  \}\n", re.S)


def tuned_models(name: str) -> list[tuple[int, str]]:
    _, run, key = SETS[name]
    path = RESULTS / run
    if not path.exists():
        sys.exit(f"{path} is missing: run benchmarks/real_accuracy.py first")
    runs = json.loads(path.read_text())["results"][key]["boltc"]
    return [(r["seed"], DATA_BLOCK.sub("\n", r["tuned_bolt"])) for r in runs]


def validation_pairs(name: str, model, folds: int):
    """[(train Dataset, validation Dataset)]: the shipped model's data block, read with the tuned
    model's featurisation."""
    shipped = boltc.compile(str(ROOT / "models" / f"{SETS[name][0]}.bolt"), backend="numpy")
    data = shipped.plan["data"]
    full = model.dataset(data["train"])
    if data.get("validation"):
        return [(full, model.dataset(data["validation"]))]
    return [split(full, 0.1, 0, f) for f in range(folds)]


def measure(name: str, seed: int, text: str, members: int, folds: int) -> list[dict]:
    out = []
    probe = boltc.compile(text, backend="native", threads=1)
    for f, (tr, va) in enumerate(validation_pairs(name, probe, folds)):
        m = boltc.compile(text, backend="native", threads=1, ensemble=members, holdout=0.0)
        t0 = time.perf_counter()
        m.fit(tr, va, progress=False)
        seconds = time.perf_counter() - t0
        ens = m.inference_executor
        names = metric_names(m.plan)
        metric = names[0]
        kind = m.plan["target"].get("kind")

        def score(executors):
            ex = EnsembleExecutor(executors) if len(executors) > 1 else executors[0]
            return round(evaluate(ex, va, [metric], binary=kind == "binary")[metric], 2)
        alone = [score([ex]) for ex in ens.members]
        # member 0 is the tuned model on the rows its values were chosen on (where they were): its score
        # carries the search's luck, so the unbiased comparison leaves it out: members 1..k averaged
        # against the mean of members 1..N alone
        others = [score(ens.members[1:k + 1]) for k in range(1, members)]
        row = {"data": name, "tuned_seed": seed, "fold": f, "rows": [int(tr.rows), int(va.rows)],
               "metric": metric, "alone": alone, "others_by_members": others,
               "by_members": [alone[0]] + [score(ens.members[:k]) for k in range(2, members + 1)],
               "train_s": round(seconds, 1)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def network_scores(model, va) -> list[np.ndarray]:
    """Each network's (rows, classes) ranking scores on `va`: its output plus the model's blend (the
    blend's own scoring, runtime/train/blend.py), labels never seen -inf."""
    plan, ens = model.plan, model.inference_executor
    settings = blend.settings(plan)
    if settings:
        w = model.state.blend["ridge"]
        return [blend.scores(ex, va, False, settings, w) for ex in ens.members]
    counts = model.state.params.get(plan["output"], {}).get("label_count")
    return [mask_never_seen(add_output(np.zeros((va.rows, ens.classes), np.float32),
                                       ex.forward(va, mode="dense")[plan["output"]]), counts)
            for ex in ens.members]


def measure_across(name: str, models: list[tuple[int, str]], folds: int) -> list[dict]:
    k = len(models)
    scores, labels, metric = {}, {}, None
    for seed, text in models:
        probe = boltc.compile(text, backend="native", threads=1)
        for f, (tr, va) in enumerate(validation_pairs(name, probe, folds)):
            m = boltc.compile(text, backend="native", threads=1, ensemble=k + 1, holdout=0.0)
            m.fit(tr, va, progress=False)
            metric = metric_names(m.plan)[0]
            scores[seed, f], labels[f] = network_scores(m, va), va.labels
    seeds = [s for s, _ in models]

    def score(matrix, f):
        ids, top = top_k_of(matrix, 5)
        return round(metrics.compute([metric], ids, labels[f], top)[metric], 2)
    rows = []
    for f in sorted(labels):
        nets = {s: scores[s, f][1:] for s in seeds}           # network 0 left out (the search's luck)
        row = {"data": name, "fold": f, "models": seeds, "metric": metric,
               "alone": round(float(np.mean([score(x, f) for s in seeds for x in nets[s]])), 2),
               "one_model_k": round(float(np.mean([score(np.mean(nets[s], 0), f) for s in seeds])), 2),
               "k_models": score(np.mean([nets[s][0] for s in seeds], 0), f),
               "k_models_k_networks": score(np.mean([np.mean(nets[s], 0) for s in seeds], 0), f)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def across_table(rows: list[dict], names: list[str]) -> dict:
    cols = ("alone", "one_model_k", "k_models", "k_models_k_networks")
    print(f"\n{'data':<10} {'folds':>5} " + " ".join(f"{c:>20}" for c in cols))
    summary = {}
    for name in names:
        mine = [r for r in rows if r["data"] == name]
        means = {c: round(float(np.mean([r[c] for r in mine])), 2) for c in cols}
        summary[name] = {"folds": len(mine), **means}
        print(f"{name:<10} {len(mine):>5} " + " ".join(f"{means[c]:>20.2f}" for c in cols))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="bibtex,delicious,news20,sst2")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--folds", type=int, default=3, help="validation folds where no validation file is given")
    ap.add_argument("--tag", default="")
    ap.add_argument("--from-log", default="", help="summarise the rows printed by an earlier run instead")
    ap.add_argument("--across-configs", action="store_true",
                    help="the tuned models of the run's seeds averaged with one another (see above); each "
                         "trains networks 0..K, K the number of tuned models, so --members is not used")
    a = ap.parse_args(argv)
    names = [n for n in a.data.split(",") if n]
    bad = [n for n in names if n not in SETS]
    if bad:
        ap.error(f"unknown data set {bad[0]!r} (expected one of {', '.join(SETS)})")
    if a.members < 2:
        ap.error(f"--members must be at least 2 (one network against their mean), not {a.members}")
    if a.folds < 1:
        ap.error(f"--folds must be at least 1, not {a.folds}")
    if a.from_log and not Path(a.from_log).is_file():
        ap.error(f"--from-log: {a.from_log} is not a file")
    rows = []
    if a.from_log:
        # the rows a run printed (one JSON object a line): its table and file, e.g. of a run stopped early
        rows = [json.loads(line) for line in Path(a.from_log).read_text().splitlines() if line.startswith("{")]
        names = [n for n in names if any(r["data"] == n for r in rows)]
    else:
        for name in list(names):
            train_file = boltc.compile(str(ROOT / "models" / f"{SETS[name][0]}.bolt"), backend="numpy").plan["data"]["train"]
            path = train_file["path"] if isinstance(train_file, dict) else str(train_file)
            if not Path(path).exists():
                print(f"{name}: skipped ({path} is not present)")
                names.remove(name)
                continue
            if a.across_configs:
                rows.extend(measure_across(name, tuned_models(name), a.folds))
                continue
            for seed, text in tuned_models(name):
                rows.extend(measure(name, seed, text, a.members, a.folds))
    if a.across_configs or (rows and "k_models" in rows[0]):
        return write(a, argv, rows, across_table(rows, names))
    ks = range(1, a.members)
    print("\nmembers 1..k averaged (member 0, the tuned run itself, left out), against one network alone")
    print(f"{'data':<10} {'runs':>4} {'alone':>7} " + " ".join(f"{f'k={k}':>7}" for k in ks)
          + " " + " ".join(f"{f'gain {k}':>7}" for k in ks if k > 1))
    summary = {}
    for name in names:
        mine = [r for r in rows if r["data"] == name]
        alone = float(np.mean([np.mean(r["alone"][1:]) for r in mine]))
        others = np.array([r["others_by_members"] for r in mine]).mean(axis=0)
        summary[name] = {"runs": len(mine), "alone": round(alone, 2),
                         "others_by_members": [round(float(v), 2) for v in others],
                         "first_k_by_members": [round(float(v), 2) for v in
                                                np.array([r["by_members"] for r in mine]).mean(axis=0)]}
        print(f"{name:<10} {len(mine):>4} {alone:7.2f} " + " ".join(f"{v:7.2f}" for v in others) + " "
              + " ".join(f"{others[k - 1] - alone:+7.2f}" for k in ks if k > 1))
    return write(a, argv, rows, summary)


def write(a, argv, rows: list[dict], summary: dict) -> int:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ensemble_accuracy_{a.tag or int(time.time())}.json"
    path.write_text(json.dumps({"benchmark": "ensemble_accuracy", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                "command": "benchmarks/ensemble_accuracy.py " + " ".join(argv or sys.argv[1:]),
                                "runs": rows, "summary": summary}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
