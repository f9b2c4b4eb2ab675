"""Accuracy of the automatic mode on the real data sets, against the tools a user would pick instead,
measured in one run (issue 15).

For each shipped real-data model (models/bibtex.bolt, delicious.bolt, news20.bolt, sst2.bolt,
20ng_nextword.bolt, and corel5k.bolt, which has no goal: it checks the automatic mode on a set nothing
was tuned for) and each seed: `boltc tune` with the model's budget (its `tune(budget=)`; scaled by
--budget-scale), which chooses on a validation split of the training data and then trains the winner;
the test set is read once, for the table. The peers (one-vs-rest ridge, TF-IDF + LinearSVC or LR,
napkinXC one-vs-rest and PLT, Omikuji, Vowpal Wabbit, fastText; the `peers` extra) run with
../shared/PEERS.md's settings in the same process, where they import; the reference points of PEERS.md
are printed beside them.

    python benchmarks/real_accuracy.py                       # every set, 3 seeds, full budgets
    python benchmarks/real_accuracy.py --only bibtex --seeds 1 --budget-scale 0.5 --tag quick

Prints one table and writes benchmarks/results/real_accuracy[_TAG].json. Sets missing from ../shared/data
are skipped, as are peers that do not import.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import boltc
from boltc.commands.common import evaluate_both
from boltc.commands.tune import settings
from boltc.errors import BoltError
from boltc.pipeline import load_model_source
from boltc.runtime.data.dataset import l2_normalize_rows
from boltc.runtime.data.xcformat import read_xc
from boltc.tune import tune

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"

# name -> model file, test metric, goal, reference points (../shared/PEERS.md, the table)
SETS = {
    "bibtex": ("bibtex.bolt", "precision@1", 66.0, "bibtex/xc_split",
               "ridge 65.45; SLEEC (published) 65.3; Omikuji/PECOS 63.78; napkinXC OVR 63.54"),
    "delicious": ("delicious.bolt", "precision@1", 69.6, "delicious/xc_split",
                  "napkinXC OVR 68.92; VW PLT 68.23; FastXML (published) 69.61"),
    "20newsgroups": ("news20.bolt", "accuracy", 87.0, "20newsgroups", "TF-IDF + LinearSVC 86.07; VW 81.31"),
    "sst2": ("sst2.bolt", "accuracy", 84.0, "sst2", "fastText autotuned 83.36; VW 83.09; TF-IDF + LR 82.92"),
    "20ng_nextword": ("20ng_nextword.bolt", "precision@1", 23.0, "20ng_nextword",
                      "next-word counts with back-off 20.18"),
    # no goal: the automatic mode on a set nothing was tuned for (models/corel5k.bolt is bibtex.bolt with
    # its shapes and paths changed), against the same peers as bibtex
    "corel5k": ("corel5k.bolt", "precision@1", None, "corel5k",
                "one-vs-rest ridge 37.0; cosine kNN(10) 37.4 (the data set's README)"),
}


# ------------------------------------------------------------------------------------------------ boltc
def run_boltc(name: str, seed: int, scale: float, workdir: Path, backend: str | None) -> dict:
    model_file = ROOT / "models" / SETS[name][0]
    _, plan = load_model_source(model_file)
    budget, trials = settings(plan, None, None)
    budget *= scale
    t0 = time.monotonic()
    res = tune(str(model_file), budget, workdir / f"{name}_seed{seed}.boltc", seed=seed, trials=trials,
               backend=backend, progress=False, log=lambda m: print(f"  [{name} seed {seed}] {m}", file=sys.stderr))
    total = time.monotonic() - t0
    metric = SETS[name][1]
    out = {"seed": seed, "budget_s": budget, "search_s": round(res.search_seconds, 1),
           "final_train_s": round(res.final_seconds, 1), "total_s": round(total, 1),
           "trials": len(res.trials), "complete": sum(r["state"] == "complete" for r in res.trials),
           "validation": round(res.best["value"], 2), "chosen": res.best["params"],
           "epochs": res.best["best_epoch"], "chosen_on_rows": res.best.get("rows"), "final_data": res.final_data,
           "dense": round(res.test["dense"][metric], 2)}
    if "sparse" in res.test:
        out["sparse"] = round(res.test["sparse"][metric], 2)
    out["tuned_bolt"] = res.bolt_path.read_text()
    # the finished trials, best first (values and validation): what an ensemble of the search's top
    # trials would draw on
    out["leaderboard"] = [{k: r[k] for k in ("trial", "value", "epochs", "params", "rows") if k in r}
                          for r in res.trials if r["state"] == "complete"][:20]
    return out


def run_untuned(name: str, seed: int, backend: str | None) -> dict:
    """The model as written, trained once without a search: each `auto` at its default, `epochs auto`
    stopping early on the validation split (best epoch kept), a written epoch count trained in full; the
    test set read once."""
    model_file = ROOT / "models" / SETS[name][0]
    m = boltc.compile(str(model_file), backend=backend, seed=seed)
    t0 = time.monotonic()
    hist = m.fit(progress=False)
    secs = time.monotonic() - t0
    res = evaluate_both(m, m.data_source("test"))
    metric = SETS[name][1]
    es = hist.get("early_stopping") or {}
    out = {"seed": seed, "mode": "as written, no search", "budget_s": 0.0, "search_s": 0.0,
           "final_train_s": round(secs, 1), "epochs": es.get("best_epoch", len(hist["epochs"])),
           "epochs_trained": es.get("epochs_trained", len(hist["epochs"])),
           "validation": es.get("best"), "dense": round(res["dense"][metric], 2)}
    if "sparse" in res:
        out["sparse"] = round(res["sparse"][metric], 2)
    return out


# ------------------------------------------------------------------------------------------------ peers
def _xc(name: str, split: str, normalize: bool = True):
    X, Y = read_xc(str(DATA / SETS[name][3] / f"{split}.txt.gz"), "xc")
    return (l2_normalize_rows(X) if normalize else X), Y


def _p_at_1(Y, top1) -> float:
    Y = Y.tocsr()
    hits = [int(p) in set(Y.indices[Y.indptr[i]:Y.indptr[i + 1]]) if p is not None else False
            for i, p in enumerate(top1)]
    return 100.0 * float(np.mean(hits))


def peer_napkinxc(name: str, workdir: Path) -> list[dict]:
    from napkinxc.models import OVR, PLT
    X, Y = _xc(name, "train")
    Xt, Yt = _xc(name, "test")
    labels = [[int(j) for j in Y.indices[Y.indptr[i]:Y.indptr[i + 1]]] for i in range(Y.shape[0])]
    out = []
    for label, cls in (("napkinXC one-vs-rest", OVR), ("napkinXC PLT", PLT)):
        t0 = time.monotonic()
        m = cls(str(workdir / f"nxc_{name}_{label.split()[-1]}"), threads=2)
        m.fit(X.astype(np.float32).tocsr(), labels)
        secs = time.monotonic() - t0
        pred = m.predict(Xt.astype(np.float32).tocsr(), top_k=1)
        out.append({"tool": label, "test": round(_p_at_1(Yt, [p[0] if p else None for p in pred]), 2),
                    "train_s": round(secs, 1)})
    return out


def _write_xc(path: Path, X, Y) -> None:
    with open(path, "w") as f:
        f.write(f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}\n")
        for i in range(X.shape[0]):
            lab = ",".join(map(str, Y.indices[Y.indptr[i]:Y.indptr[i + 1]]))
            feats = " ".join(f"{j}:{v:.6g}" for j, v in zip(X.indices[X.indptr[i]:X.indptr[i + 1]],
                                                             X.data[X.indptr[i]:X.indptr[i + 1]]))
            f.write(f"{lab} {feats}\n")


class _quiet_stderr:
    """File descriptor 2 to /dev/null (native libraries write there directly)."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)


def peer_omikuji(name: str, workdir: Path) -> list[dict]:
    import omikuji
    X, Y = _xc(name, "train")
    Xt, Yt = _xc(name, "test")
    path = workdir / f"omikuji_{name}.txt"
    _write_xc(path, X, Y)
    t0 = time.monotonic()
    hp = omikuji.Model.default_hyper_param()          # Parabel-like, as PEERS.md
    with _quiet_stderr():                             # its progress bars would drown the table
        m = omikuji.Model.train_on_data(str(path), hp, n_threads=2)
    secs = time.monotonic() - t0
    top1 = []
    for i in range(Xt.shape[0]):
        feats = list(zip(Xt.indices[Xt.indptr[i]:Xt.indptr[i + 1]].tolist(),
                         Xt.data[Xt.indptr[i]:Xt.indptr[i + 1]].tolist()))
        p = m.predict(feats, top_k=1)
        top1.append(p[0][0] if p else None)
    return [{"tool": "Omikuji (Parabel-like)", "test": round(_p_at_1(Yt, top1), 2), "train_s": round(secs, 1)}]


def _text_rows(name: str, split: str):
    csv.field_size_limit(1 << 30)             # some 20newsgroups posts exceed the default 128 KiB field
    if name == "sst2":
        with gzip.open(DATA / "sst2" / f"{split}.tsv.gz", "rt", encoding="utf-8") as f:
            r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(r)
            return [(int(row[0]), row[1]) for row in r]
    with gzip.open(DATA / "20newsgroups" / f"{split}.csv.gz", "rt", encoding="utf-8") as f:
        return [(int(row["label"]), row["text"]) for row in csv.DictReader(f)]


def _vw_text(t: str) -> str:
    return " ".join(w for w in "".join(c.lower() if c.isalnum() else " " for c in t).split())


def peer_vw(name: str, workdir: Path) -> list[dict]:
    """Vowpal Wabbit one-against-all: sst2 with its defaults, 20newsgroups with `--ngram 2`, 5 passes
    (PEERS.md)."""
    import vowpalwabbit
    train, test = _text_rows(name, "train"), _text_rows(name, "test")
    classes = 2 if name == "sst2" else 20
    data = workdir / f"vw_{name}.txt"
    order = np.random.default_rng(0).permutation(len(train))      # the files are sorted by label; VW is online
    with open(data, "w") as f:
        for y, t in (train[i] for i in order):
            f.write(f"{y + 1} | {_vw_text(t)}\n")
    model = workdir / f"vw_{name}.model"
    args = f"--oaa {classes} --quiet -d {data} -f {model}"
    if name == "20newsgroups":
        args += f" --ngram 2 --passes 5 -c -k --cache_file {workdir / 'vw_cache'}"
    t0 = time.monotonic()
    vw = vowpalwabbit.Workspace(args)
    vw.finish()                      # the passes run to the end and the model is written
    secs = time.monotonic() - t0
    vw = vowpalwabbit.Workspace(f"-i {model} -t --quiet")
    right = sum(int(vw.predict(f"| {_vw_text(t)}")) == y + 1 for y, t in test)
    vw.finish()
    label = "Vowpal Wabbit --oaa" + (" --ngram 2, 5 passes" if name == "20newsgroups" else "")
    return [{"tool": label, "test": round(100.0 * right / len(test), 2), "train_s": round(secs, 1)}]


def peer_ridge(name: str, workdir: Path) -> list[dict]:
    """One-vs-rest ridge regression (lambda 1) on L2-normalised rows, as the data READMEs' baseline."""
    from sklearn.linear_model import Ridge
    X, Y = _xc(name, "train")
    Xt, Yt = _xc(name, "test")
    t0 = time.monotonic()
    m = Ridge(alpha=1.0).fit(X, Y.toarray())
    secs = time.monotonic() - t0
    top1 = np.asarray(m.predict(Xt)).argmax(axis=1)
    return [{"tool": "one-vs-rest ridge", "test": round(_p_at_1(Yt, top1), 2), "train_s": round(secs, 1)}]


def peer_linear_text(name: str, workdir: Path) -> list[dict]:
    """The data READMEs' linear baselines: 20newsgroups TF-IDF (sublinear, min_df=2) + LinearSVC; sst2
    TF-IDF of 1-2-grams (sublinear) + LogisticRegression(C=4)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC
    train, test = _text_rows(name, "train"), _text_rows(name, "test")
    t0 = time.monotonic()
    if name == "sst2":
        vec, clf, label = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), \
            LogisticRegression(C=4, max_iter=1000), "TF-IDF + LR"
    else:
        vec, clf, label = TfidfVectorizer(sublinear_tf=True, min_df=2), LinearSVC(), "TF-IDF + LinearSVC"
    clf.fit(vec.fit_transform([t for _, t in train]), [y for y, _ in train])
    secs = time.monotonic() - t0
    pred = clf.predict(vec.transform([t for _, t in test]))
    right = float(np.mean(np.asarray(pred) == np.array([y for y, _ in test])))
    return [{"tool": label, "test": round(100.0 * right, 2), "train_s": round(secs, 1)}]


def _ft_text(t: str) -> str:
    return _vw_text(t).replace("\n", " ")


def peer_fasttext(name: str, workdir: Path) -> list[dict]:
    """fastText as PEERS.md: sst2 autotuned on the dev file for 60 s; 20newsgroups lr 1, 25 epochs,
    bigrams. Predictions go through the binding's own predict (its numpy wrapper needs numpy < 2)."""
    import fasttext
    train, test = _text_rows(name, "train"), _text_rows(name, "test")
    order = np.random.default_rng(0).permutation(len(train))
    data = workdir / f"ft_{name}.txt"
    data.write_text("".join(f"__label__{train[i][0]} {_ft_text(train[i][1])}\n" for i in order))
    t0 = time.monotonic()
    with _quiet_stderr():
        if name == "sst2":
            dev = workdir / "ft_sst2_dev.txt"
            dev.write_text("".join(f"__label__{y} {_ft_text(t)}\n" for y, t in _text_rows(name, "dev")))
            m = fasttext.train_supervised(input=str(data), autotuneValidationFile=str(dev), autotuneDuration=60,
                                          verbose=0)
            label = "fastText autotuned on dev (60 s)"
        else:
            m = fasttext.train_supervised(input=str(data), lr=1.0, epoch=25, wordNgrams=2, verbose=0)
            label = "fastText lr 1, 25 epochs, bigrams"
    secs = time.monotonic() - t0
    right = 0
    for y, t in test:
        (_, top), = m.f.predict(_ft_text(t) + "\n", 1, 0.0, "strict")
        right += top == f"__label__{y}"
    return [{"tool": label, "test": round(100.0 * right / len(test), 2), "train_s": round(secs, 1)}]


PEERS = {"bibtex": (peer_ridge, peer_napkinxc, peer_omikuji), "delicious": (peer_ridge, peer_napkinxc, peer_omikuji),
         "20newsgroups": (peer_linear_text, peer_vw, peer_fasttext), "sst2": (peer_linear_text, peer_vw, peer_fasttext),
         "20ng_nextword": (), "corel5k": (peer_ridge, peer_napkinxc, peer_omikuji)}


def run_peers(name: str, workdir: Path) -> list[dict]:
    out = []
    for fn in PEERS[name]:
        try:
            out += fn(name, workdir)
        except ImportError as e:
            print(f"  skip {fn.__name__} for {name}: {e} (pip install 'boltc[peers]')", file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------------ report
def spread(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} +- {statistics.stdev(xs):.2f}"


def goal(name: str) -> str:
    return f">= {SETS[name][2]}" if SETS[name][2] is not None else "none (a check of the automatic mode)"


def table(results: dict) -> str:
    head = ("| data | metric | boltc tune, test (dense) | sparse | goal | seeds | budget | search + final train s "
            "| peers, same run | reference (PEERS.md) |")
    lines = [head, "|" + "---|" * 10]
    for name, r in results.items():
        runs = r["boltc"]
        if not runs:
            lines.append(f"| {name} | {SETS[name][1]} | not measured: {r.get('failed', [{}])[0].get('error', '')} "
                         f"| | {goal(name)} | 0 | | | | {SETS[name][4]} |")
            continue
        dense = [x["dense"] for x in runs]
        sparse = [x["sparse"] for x in runs if "sparse" in x]
        secs = [x["search_s"] + x["final_train_s"] for x in runs]
        peers = "; ".join(f"{p['tool']} {p['test']:.2f} ({p['train_s']:.1f} s)" for p in r["peers"]) or "-"
        mode = "" if "mode" not in runs[0] else f" ({runs[0]['mode']})"
        lines.append(f"| {name}{mode} | {SETS[name][1]} | {spread(dense)} | {spread(sparse)} | {goal(name)} | "
                     f"{len(runs)} | {runs[0]['budget_s']:.0f} s | {statistics.mean(secs):.0f} | {peers} | "
                     f"{SETS[name][4]} |" if runs else f"| {name} | - | - | - | - | 0 | - | - | {peers} | - |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=list(SETS), help="these sets only (repeatable)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply each model's tuning budget")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--untuned", action="append", default=[], choices=list(SETS),
                    help="train this set once as written, without a search (each auto at its default; repeatable)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    names = args.only or list(SETS)
    results = {}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="real_accuracy_") as tmp:
        workdir = Path(tmp)
        for name in names:
            if not (DATA / SETS[name][3]).exists():
                print(f"skip {name}: {DATA / SETS[name][3]} not present", file=sys.stderr)
                continue
            r = {"peers": [] if args.no_peers else run_peers(name, workdir), "boltc": []}
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                try:
                    r["boltc"].append(run_untuned(name, seed, args.backend) if name in args.untuned else
                                      run_boltc(name, seed, args.budget_scale, workdir, args.backend))
                except BoltError as e:          # e.g. a budget too small for one trial on a loaded machine
                    print(f"{name} seed {seed}: {e.message}", file=sys.stderr)
                    r.setdefault("failed", []).append({"seed": seed, "error": e.message})
                    continue
                print(f"{name} seed {seed}: {json.dumps({k: v for k, v in r['boltc'][-1].items() if k != 'tuned_bolt'})}",
                      file=sys.stderr, flush=True)
            results[name] = r
            RESULTS.mkdir(parents=True, exist_ok=True)
            out = RESULTS / f"real_accuracy{'_' + args.tag if args.tag else ''}.json"
            out.write_text(json.dumps({"benchmark": "real_accuracy", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                       "machine": f"{os.cpu_count()} cores", "command": " ".join(sys.argv),
                                       "load_average": {"start": load_start, "now": os.getloadavg()},
                                       "results": results}, indent=1))
    print(table(results))
    print(f"wrote {out}" if results else "nothing measured (no data sets present)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
