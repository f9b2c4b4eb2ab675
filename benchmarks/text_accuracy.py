"""Text classifiers trained from raw CSV/TSV by boltc: test accuracy, training time, batch-1 latency.

    python benchmarks/text_accuracy.py [--seeds 1] [--backend auto|native|numpy] [--only news20|sst2]

For models/news20.bolt (20newsgroups, 20 classes) and models/sst2.bolt (SST-2, binary sentences):
featurise the files (runtime/data/csvfile.py + runtime/data/text.py), train with boltc.compile(...).fit, evaluate on
the test file, save the model, load it back and time `predict([one text])` one row at a time (batch 1,
featurisation included) over test texts. The `boltc predict model.boltc --text ...` command line is run
once to show the answer by class name. Each (model, seed) runs in a child process, so a crash of one
backend is reported (and the run retried on the NumPy interpreter with backend=auto) instead of ending
the benchmark. Real data; the baselines are the linear TF-IDF figures measured in the data READMEs
(../shared/data/*/README.md), not re-measured here (no scikit-learn on these machines).

Prints a markdown table and writes benchmarks/results/text_accuracy.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {
    "news20": {"bolt": ROOT / "models" / "news20.bolt", "data": DATA / "20newsgroups", "goal": 85.0,
               "baseline": 86.07, "baseline_name": "TF-IDF + LinearSVC (README)"},
    "sst2": {"bolt": ROOT / "models" / "sst2.bolt", "data": DATA / "sst2", "goal": 82.0,
             "baseline": 82.92, "baseline_name": "TF-IDF 1-2-grams + LogisticRegression (README)"},
}
LATENCY_ROWS = 300


def run_one(name: str, seed: int, backend: str | None) -> dict:
    """Train, evaluate, save, reload and time one model (in this process)."""
    import boltc
    spec = MODELS[name]
    m = boltc.compile(str(spec["bolt"]), backend=backend, seed=seed)
    t0 = time.perf_counter()
    train = m.dataset(m.data_source("train"))
    m.plan["target"]["class_names"] = list(train.class_names)      # test labels map through train's names
    test = m.dataset(m.data_source("test"))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hist = m.fit(train, progress=False)        # per-epoch metrics on the model's validation data, never on test
    fit_wall = time.perf_counter() - t0
    train_s = sum(e["seconds"] for e in hist["epochs"])
    acc = m.evaluate(test)["accuracy"]

    # saved model -> load -> batch-1 predict on raw strings, answered with class names
    from boltc.runtime.data.csvfile import load_csv_dataset  # noqa: F401  (the reader the model uses)
    texts = _test_texts(m, LATENCY_ROWS)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.boltc"
        m.save(path)
        loaded = boltc.load(str(path), backend=backend)
        loaded.predict(texts[:5], top_k=1)                          # warm-up (native code, caches)
        lat = []
        for t in texts:
            t1 = time.perf_counter()
            loaded.predict([t], top_k=3)
            lat.append(time.perf_counter() - t1)
        ids_a, _ = m.predict(texts[:50], top_k=1)
        ids_b, _ = loaded.predict(texts[:50], top_k=1)
        cli = subprocess.run([sys.executable, "-m", "boltc.cli", "predict", str(path), "--text", texts[0],
                              "--top-k", "2", "--backend", m.backend], capture_output=True, text=True, timeout=300)
    lat_ms = np.array(lat) * 1e3
    return {"model": name, "seed": seed, "backend": m.backend, "test_accuracy": round(acc, 2),
            "epoch_accuracy": [round(e.get("validation", {}).get("accuracy", float("nan")), 2) for e in hist["epochs"]],
            "epochs": len(hist["epochs"]), "train_rows": train.rows, "test_rows": test.rows,
            "load_featurize_s": round(load_s, 2), "train_s": round(train_s, 2), "fit_wall_s": round(fit_wall, 2),
            "featurize_s": round(train.meta.get("featurize_seconds", 0.0) + test.meta.get("featurize_seconds", 0.0), 2),
            "latency_batch1_ms": {"median": round(float(np.median(lat_ms)), 3),
                                  "p99": round(float(np.percentile(lat_ms, 99)), 3), "rows": len(lat_ms)},
            "reload_same_predictions": bool(np.array_equal(ids_a, ids_b)),
            "cli_predict": {"returncode": cli.returncode, "stdout": cli.stdout.strip()[:200],
                            "stderr": cli.stderr.strip()[-300:]},
            "class_names": train.class_names}


def _test_texts(m, n: int) -> list[str]:
    """The first n texts of the test file's text column, in a shuffled order (the files are sorted)."""
    import csv
    import gzip
    src = m.data_source("test")
    col = next(i["column"] for i in m.plan["inputs"] if i["kind"] == "text")
    delim = "\t" if src.get("format") == "tsv" else ","
    csv.field_size_limit(2**31 - 1)
    with gzip.open(src["path"], "rt", encoding="utf-8", newline="") as f:
        r = csv.reader(f, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL)
        header = next(r)
        names = src.get("names")
        if names:
            header = names.split(",")
        i = header.index(col)
        rows = [row[i] for row in r]
    order = np.random.default_rng(0).permutation(len(rows))[:n]
    return [rows[j] for j in order]


def child(name: str, seed: int, backend: str) -> dict | None:
    cmd = [sys.executable, __file__, "--child", name, "--seed", str(seed), "--backend", backend]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        print(f"  {name} seed {seed} backend {backend}: failed (exit {p.returncode}); "
              f"{p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--backend", default="auto", choices=("auto", "native", "numpy"))
    ap.add_argument("--only", choices=tuple(MODELS))
    ap.add_argument("--child", choices=tuple(MODELS), help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = run_one(args.child, args.seed, None if args.backend == "auto" else args.backend)
        print(json.dumps(res))
        return 0
    runs, failures = [], []
    for name in ([args.only] if args.only else list(MODELS)):
        if not MODELS[name]["data"].exists():
            print(f"skipped {name}: {MODELS[name]['data']} not present")
            continue
        for seed in range(args.seeds):
            res = child(name, seed, args.backend)
            if res is None and args.backend == "auto":
                failures.append({"model": name, "seed": seed, "backend": "native (default)"})
                res = child(name, seed, "numpy")
            if res is None:
                failures.append({"model": name, "seed": seed, "backend": args.backend})
                continue
            runs.append(res)
            print(f"  {name} seed {seed}: {res['test_accuracy']:.2f}% ({res['backend']}), "
                  f"train {res['train_s']} s, latency {res['latency_batch1_ms']['median']} ms", file=sys.stderr)

    print("\n## Text classifiers from raw CSV/TSV (real data, ../shared/data)\n")
    print("| data set (model file) | backend | test accuracy % (seeds) | goal | linear baseline | epochs | "
          "train s | featurise s (train+test) | batch-1 predict median / p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for name in MODELS:
        rs = [r for r in runs if r["model"] == name]
        if not rs:
            continue
        accs = [r["test_accuracy"] for r in rs]
        spec = MODELS[name]
        summary[name] = {"mean_accuracy": round(float(np.mean(accs)), 2), "min_accuracy": min(accs),
                         "goal": spec["goal"], "meets_goal": min(accs) >= spec["goal"]}
        r0 = rs[0]
        print(f"| {name} (models/{spec['bolt'].name}) | {r0['backend']} | {np.mean(accs):.2f} "
              f"({', '.join(f'{a:.2f}' for a in accs)}) | >= {spec['goal']:.0f} | {spec['baseline']} "
              f"{spec['baseline_name']} | {r0['epochs']} | {np.mean([r['train_s'] for r in rs]):.1f} | "
              f"{np.mean([r['featurize_s'] for r in rs]):.2f} | "
              f"{np.mean([r['latency_batch1_ms']['median'] for r in rs]):.3f} / "
              f"{np.mean([r['latency_batch1_ms']['p99'] for r in rs]):.3f} |")
    for r in [next(r for r in runs if r["model"] == n) for n in MODELS if any(r["model"] == n for r in runs)]:
        print(f"\n`boltc predict {r['model']}.boltc --text ...` -> exit {r['cli_predict']['returncode']}: "
              f"{r['cli_predict']['stdout'] or r['cli_predict']['stderr']}")
    if failures:
        print(f"\nfailed runs: {failures}")
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "text_accuracy", "data": "real (20newsgroups bydate, SST-2 with labelled test)",
           "command": "python benchmarks/text_accuracy.py " + " ".join(sys.argv[1:]), "runs": runs,
           "summary": summary, "failures": failures, "cpu_count": os.cpu_count(),
           "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (RESULTS / "text_accuracy.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'text_accuracy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
