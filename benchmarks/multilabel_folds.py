"""Multi-label loss and early-stopping choices on validation folds (delicious, bibtex): never the test file.

Each run trains one fixed configuration (`--loss`, `--hidden`, `--dropout`, `--sparsity`, `--lr`, ...)
with early stopping (`--patience`) on each of three disjoint 10% folds of the training rows (train seed
0; runtime/data/holdout.py folds, as `boltc tune` scores small sets), native backend, one thread. After
every epoch it records the network's validation P@1/3/5 and the P@1 of the blend with a ridge regression
(`blend ridge`, fitted on the fold's training part) at each `--weights` value, and which validation rows
each ranking got right at rank 1 (hex-packed bits), so that early-stopping rules can be compared after
the fact. Prints the per-fold curves and the mean over the folds of each ranking's best epoch, and writes
benchmarks/results/multilabel_folds_TAG.json.

    python benchmarks/multilabel_folds.py --tag bce_dense --loss binary_cross_entropy --sparsity 1 --lr 0.001
    python benchmarks/multilabel_folds.py --analyze benchmarks/results/multilabel_folds_bce_dense.json

`--analyze FILES`: which per-epoch criterion picks the better epoch for the blend. For each fold the
validation rows are split in two halves; the epoch is chosen on one half (by the network's P@1, or by the
blend's own P@1, each with early stopping at patience P and a minimum of M epochs) and the blend's P@1 at
that epoch is scored on the other half, then the halves swap; the table shows the mean.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

import boltc
from boltc.runtime.data.holdout import split
from boltc.runtime.train import blend
from boltc.runtime.train.metrics import hits

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"

SETS = {"delicious": (500, 983), "bibtex": (1836, 159)}
TEMPLATE = """model d {{
  input  features: sparse({dim}, normalize={norm})
  target labels:   multilabel({classes})
{layers}
  loss    {loss}(scores, labels)
  metrics precision@1, precision@3, precision@5
  train {{
    optimizer adam(lr={lr}, weight_decay={wd})
    batch     {batch}
    epochs    {epochs}
    patience  {patience}
    seed {seed}
    {extra}
  }}
}}
"""

def layers(a):
    act = "sigmoid" if a.loss == "binary_cross_entropy" else "softmax"
    out, prev = [], "features"
    for i, w in enumerate(a.hidden):
        out.append(f"  h{i} = fc({prev}, {w}, relu)"); prev = f"h{i}"
        if a.dropout > 0:
            out.append(f"  d{i} = dropout({prev}, {a.dropout})"); prev = f"d{i}"
    sp_ = f", sparsity={a.sparsity}" + (", hash=none" if a.sparsity >= 1 else "")
    out.append(f"  scores = fc({prev}, {SETS[a.data][1]}, {act}{sp_})")
    return "\n".join(out)

def row_hits(scores, labels):
    top = np.argmax(scores, axis=1)[:, None]
    return hits(top.astype(np.int32), labels)[:, 0]

def p_at(scores, labels, k=1):
    return 100 * row_hits(scores, labels).mean()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loss", default="cross_entropy")
    ap.add_argument("--hidden", type=int, nargs="+", default=[2048])
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=0.004)
    ap.add_argument("--wd", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--norm", default="l2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--smoothing", type=float, default=0.0)
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 1, 2])
    ap.add_argument("--l2", type=float, default=1.0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--data", default="delicious", choices=sorted(SETS))
    ap.add_argument("--analyze", nargs="+", metavar="JSON", help="compare early-stopping rules on saved runs")
    a = ap.parse_args()
    if a.analyze:
        return report(a.analyze)
    extra = f"label_smoothing {a.smoothing}" if a.smoothing else ""
    TRAIN = DATA / a.data / "xc_split" / "train.txt.gz"
    if not TRAIN.exists():
        print(f"{TRAIN} is absent: nothing to measure")
        return
    text = TEMPLATE.format(dim=SETS[a.data][0], classes=SETS[a.data][1], norm=a.norm, layers=layers(a), loss=a.loss, lr=a.lr, wd=a.wd, batch=a.batch,
                           epochs=a.epochs, patience=a.patience, seed=0, extra=extra)
    res = {"args": vars(a), "folds": []}
    t0 = time.time()
    for f in a.folds:
        m = boltc.compile(text, backend="native", threads=1)
        full = m.dataset(str(TRAIN))
        tr, va = split(full, 0.1, 0, f)
        x = va.inputs["features"]
        w = blend.fit_ridge(tr.inputs["features"], tr.labels, a.l2)
        ridge = blend.linear_scores(x, w)
        curve = []
        def cb(trainer, rec):
            out = np.asarray(trainer.ex.forward(va, mode="dense")[m.plan["output"]], np.float32)
            row = {"epoch": rec["epoch"], "net": rec["validation"]["precision@1"],
                   "p3": rec["validation"]["precision@3"], "p5": rec["validation"]["precision@5"]}
            row["hits_net"] = np.packbits(row_hits(out, va.labels)).tobytes().hex()
            for wt in a.weights:
                h = row_hits(out + wt * ridge, va.labels)
                row[f"b{wt}"] = round(100 * h.mean(), 2)
                row[f"hits_b{wt}"] = np.packbits(h).tobytes().hex()
            curve.append(row)
        m.fit(tr, va, progress=False, callbacks=[cb])
        res["folds"].append({"fold": f, "n": int(va.rows), "ridge": round(p_at(ridge, va.labels), 2), "curve": curve})
        best = max(curve, key=lambda r: r["net"])
        print(f"fold {f}: ridge {res['folds'][-1]['ridge']:.2f} best net {best['net']:.2f} @ {best['epoch']} "
              + " ".join(f"{k}={max(r[k] for r in curve):.2f}" for k in best if k.startswith("b")), flush=True)
        for k in [k for k in best if k.startswith("b")]:
            print(f"   {k} curve:", " ".join(f"{r[k]:.1f}" for r in curve), flush=True)
        print("   net curve:", " ".join(f"{r['net']:.1f}" for r in curve), flush=True)
    # summary: mean over folds of the best network epoch, and of each blend weight's best epoch
    keys = [k for k in res["folds"][0]["curve"][0] if k == "net" or k.startswith("b")]
    summ = {k: round(float(np.mean([max(r[k] for r in fd["curve"]) for fd in res["folds"]])), 2) for k in keys}
    summ["p5_at_best_net"] = round(float(np.mean([max(fd["curve"], key=lambda r: r["net"])["p5"] for fd in res["folds"]])), 2)
    res["summary"] = summ
    res["seconds"] = round(time.time() - t0, 1)
    print("SUMMARY", a.tag, json.dumps(summ), f"{res['seconds']}s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"multilabel_folds_{a.tag or int(t0)}.json", "w") as fh:
        json.dump(res, fh)


def unpack(bits, n):
    raw = np.frombuffer(bytes.fromhex(bits), np.uint8) if isinstance(bits, str) else np.array(bits, np.uint8)
    return np.unpackbits(raw)[:n].astype(bool)


def stop_epoch(vals, patience, min_epochs):
    best, be = -1, 0
    for i, v in enumerate(vals):
        if v > best:
            best, be = v, i
        if i + 1 >= min_epochs and i - be >= patience:
            break
    return be


def analyze(path, patience=3, min_epochs=1):
    r = json.load(open(path))
    weights = [k[1:] for k in r["folds"][0]["curve"][0] if k.startswith("b") and not k.startswith("hits")]
    out = {}
    for w in weights:
        for crit in ("net", f"b{w}"):
            scores = []
            for fd in r["folds"]:
                n = fd["n"]
                H = {k: np.array([unpack(c[f"hits_{k}"], n) for c in fd["curve"]]) for k in ("net", f"b{w}")}
                perm = np.random.default_rng(fd["fold"]).permutation(n)
                halves = [perm[: n // 2], perm[n // 2:]]
                for a, b in ((0, 1), (1, 0)):
                    sel = H[crit][:, halves[a]].mean(1)
                    e = stop_epoch(sel, patience, min_epochs)
                    scores.append(H[f"b{w}"][e, halves[b]].mean() * 100)
            out[(w, crit)] = np.mean(scores)
    return out


def report(paths):
    for p in sorted(paths):
        r = json.load(open(p))
        if "hits_net" not in r["folds"][0]["curve"][0]:
            continue
        print(Path(p).name, {k: round(v, 2) for k, v in r["summary"].items()})
        for pat, mn in ((3, 1), (3, 5), (6, 1), (100, 1)):
            o = analyze(p, pat, mn)
            print(f"  patience {pat} min {mn}: " + "  ".join(f"w{w}: net->{o[(w,'net')]:.2f} blend->{o[(w,'b'+w)]:.2f}" for w, _ in list(o)[::2]))


if __name__ == "__main__":
    main()
