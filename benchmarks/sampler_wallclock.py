"""Does the adaptive NW-sketch sampler reach uniform sampling's accuracy sooner, in wall-clock time?

For each dataset (bibtex and delicious from ../shared/data, plus a seeded synthetic set) and each of three
seeds, the same pipeline is trained twice, once drawing batches with `sampler uniform` and once with
`sampler nw_sketch` (defaults), for the same number of epochs (an epoch is N draws either way). P@1 on
the test set is measured after every epoch with the clock stopped; the clock covers everything training
does, including building the sampler (hashing every example) and every refresh.

Reported: uniform's final P@1 (mean over seeds), the time each sampler needs to reach it (interpolated
between epochs; mean over seeds), their ratio (goal <= 0.7), the sampler's share of training time and the
rank correlation between the sketch's predicted losses and true losses on a random subset of 512
training rows. Writes benchmarks/results/sampler_wallclock.json and sampler_wallclock.png.

The pipeline (until boltc's trainer is wired in here): a NumPy MLP, sparse input -> fc(hidden, relu) ->
fc(labels, softmax), cross entropy against the normalised multi-hot target, Adam, per-example losses fed to
the sampler's observe() exactly as the trainer does. Identical for both samplers; only the draws differ.

    python benchmarks/sampler_wallclock.py            # full run (about 10 minutes on 2 cores)
    python benchmarks/sampler_wallclock.py --quick    # one seed, fewer epochs (smoke run)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from boltc.runtime.dataset import Dataset, as_csr
from boltc.runtime.sampler import make_sampler, resolve_spec

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


# -- data ------------------------------------------------------------------------------------------
def load_xc(name: str):
    from boltc.runtime.xcformat import read_xc
    folder = DATA / name / "xc_split"
    if not folder.exists():
        return None
    xtr, ytr = read_xc(folder / "train.txt.gz")
    xte, yte = read_xc(folder / "test.txt.gz")
    d, c = max(xtr.shape[1], xte.shape[1]), max(ytr.shape[1], yte.shape[1])
    fix = lambda m, cols: as_csr(sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], cols)))
    return fix(xtr, d), fix(ytr, c), fix(xte, d), fix(yte, c)


def synthetic(rows=20000, test=4000, features=3000, labels=200, seed=0):
    """Power-law label frequencies; each label a sparse prototype; each example one label's prototype
    (a random 60% of its features) plus Zipf noise features; rows L2-normalised. SYNTHETIC."""
    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, labels + 1) ** 1.1
    freq /= freq.sum()
    protos = [rng.choice(features, 30, replace=False) for _ in range(labels)]
    noise_p = 1.0 / np.arange(1, features + 1)
    noise_p /= noise_p.sum()

    def make(n):
        y = rng.choice(labels, n, p=freq)
        indptr, idx = [0], []
        for lab in y:
            own = protos[lab][rng.random(30) < 0.6]
            idx.append(np.unique(np.concatenate([own, rng.choice(features, 15, p=noise_p)])))
            indptr.append(indptr[-1] + idx[-1].size)
        cols = np.concatenate(idx)
        x = sp.csr_matrix((np.ones(cols.size, np.float32), cols, indptr), shape=(n, features))
        x = sp.diags(1.0 / np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())) @ x
        yy = sp.csr_matrix((np.ones(n, np.float32), y, np.arange(n + 1)), shape=(n, labels))
        return as_csr(x), as_csr(yy)

    xtr, ytr = make(rows)
    xte, yte = make(test)
    return xtr, ytr, xte, yte


# -- the pipeline ----------------------------------------------------------------------------------
class MLP:
    """sparse x -> relu(x W1 + b1) -> softmax(h W2 + b2); Adam (beta 0.9/0.999, eps 1e-7)."""

    def __init__(self, d, hidden, classes, lr, seed):
        rng = np.random.default_rng(seed)
        self.p = {"W1": (rng.standard_normal((d, hidden)) * np.sqrt(2.0 / 64)).astype(np.float32),
                  "b1": np.zeros(hidden, np.float32),
                  "W2": (rng.standard_normal((hidden, classes)) * np.sqrt(1.0 / hidden)).astype(np.float32),
                  "b2": np.zeros(classes, np.float32)}
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.lr, self.t = lr, 0

    def forward(self, x):
        pre = np.asarray(x @ self.p["W1"]) + self.p["b1"]
        h = np.maximum(pre, 0)
        z = h @ self.p["W2"] + self.p["b2"]
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        prob = e / e.sum(axis=1, keepdims=True)
        return pre, h, prob

    @staticmethod
    def losses(prob, y):
        yn = sp.diags(1.0 / np.maximum(np.asarray(y.sum(1)).ravel(), 1)) @ y
        lp = np.log(np.maximum(prob, 1e-30))
        return -np.asarray(yn.multiply(lp).sum(1)).ravel(), yn

    def train_step(self, x, y, weights=None):
        pre, h, prob = self.forward(x)
        loss, yn = self.losses(prob, y)
        scale = np.full(x.shape[0], 1.0 / x.shape[0], np.float32)
        if weights is not None:
            scale *= weights
        dz = (prob - yn.toarray()) * scale[:, None]
        g = {"W2": h.T @ dz, "b2": dz.sum(0)}
        dh = (dz @ self.p["W2"].T) * (pre > 0)
        g["W1"] = np.asarray(x.T @ dh)
        g["b1"] = dh.sum(0)
        self.t += 1
        c1, c2 = 1 - 0.9 ** self.t, 1 - 0.999 ** self.t
        for k, gk in g.items():
            self.m[k] = 0.9 * self.m[k] + 0.1 * gk
            self.v[k] = 0.999 * self.v[k] + 0.001 * gk * gk
            self.p[k] -= (self.lr * (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + 1e-7)).astype(np.float32)
        return loss

    def p_at_1(self, x, y, chunk=4096):
        hits = 0
        for s in range(0, x.shape[0], chunk):
            top = self.forward(x[s:s + chunk])[2].argmax(1)
            hits += np.asarray(y[s:s + chunk][np.arange(top.size), top]).ravel().sum()
        return hits / x.shape[0]


def run(data, spec, seed, epochs, hidden, lr, batch):
    xtr, ytr, xte, yte = data
    model = MLP(xtr.shape[1], hidden, ytr.shape[1], lr, seed)
    ds = Dataset(inputs={"x": xtr}, labels=ytr)
    clock = 0.0
    t0 = time.perf_counter()
    sampler = make_sampler(spec, ds, batch, seed)
    clock += time.perf_counter() - t0
    curve = [(0.0, model.p_at_1(xte, yte))]
    rank = []
    probe = np.random.default_rng(seed + 99).choice(xtr.shape[0], min(512, xtr.shape[0]), replace=False)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for rows, weights in sampler.batches(epoch):
            losses = model.train_step(xtr[rows], ytr[rows], weights)
            sampler.observe(rows, losses)
        clock += time.perf_counter() - t0
        curve.append((clock, model.p_at_1(xte, yte)))        # clock stopped while evaluating
        if epoch % 2 == 1 and hasattr(sampler, "predict"):
            true = model.losses(model.forward(xtr[probe])[2], ytr[probe])[0]
            rank.append(sampler.rank_correlation(true, probe))
    st = sampler.stats()
    overhead = st["overhead_s"] + st.get("hash_s", 0.0)
    return {"curve": curve, "train_s": clock, "sampler_s": overhead, "share": overhead / clock,
            "rank_correlation": rank, "final": curve[-1][1], "stats": {k: v for k, v in st.items()}}


def time_to_reach(curve, target):
    """First time the curve reaches target, linearly interpolated between epochs; None if never."""
    for (t0, a0), (t1, a1) in zip(curve, curve[1:]):
        if a1 >= target:
            return t0 + (t1 - t0) * ((target - a0) / (a1 - a0) if a1 > a0 else 1.0) if a0 < target else t0
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--spec", default="{}", help="JSON overrides for nw_sketch, e.g. '{\"mix\": 0.3}'")
    ap.add_argument("--only", default="", help="comma-separated dataset names")
    args = ap.parse_args()
    seeds = 1 if args.quick else args.seeds
    nw = {"kind": "nw_sketch", **json.loads(args.spec)}
    problems = {  # name: (loader, epochs, hidden, lr, batch)
        "bibtex": (lambda: load_xc("bibtex"), 20, 256, 1e-3, 128),
        "delicious": (lambda: load_xc("delicious"), 10, 256, 1e-3, 128),
        "synthetic": (lambda: synthetic(), 8, 128, 1e-3, 128),
    }
    if args.only:
        problems = {k: v for k, v in problems.items() if k in args.only.split(",")}
    report = {"spec": resolve_spec(nw), "datasets": {}, "note": "synthetic = seeded generator (SYNTHETIC figures)"}
    print(f"{'dataset':10} {'sampler':9} {'final P@1':>9} {'t->target s':>11} {'train s':>8} "
          f"{'sampler %':>9} {'rank corr':>9}")
    for name, (load, epochs, hidden, lr, batch) in problems.items():
        data = load()
        if data is None:
            print(f"{name:10} skipped: {DATA / name} not found")
            continue
        if args.quick:
            epochs = max(2, epochs // 3)
        runs = {"uniform": [], "nw_sketch": []}
        for seed in range(seeds):
            for kind, spec in (("uniform", {"kind": "uniform"}), ("nw_sketch", nw)):
                runs[kind].append(run(data, spec, seed, epochs, hidden, lr, batch))
        target = float(np.mean([r["final"] for r in runs["uniform"]]))
        entry = {"target_p_at_1": target, "epochs": epochs, "rows": data[0].shape[0], "runs": runs}
        for kind, rs in runs.items():
            reach = [time_to_reach(r["curve"], target) for r in rs]
            entry[kind] = {
                "final_p_at_1": float(np.mean([r["final"] for r in rs])),
                "time_to_target_s": (float(np.mean(reach)) if all(t is not None for t in reach) else None),
                "reached": sum(t is not None for t in reach),
                "train_s": float(np.mean([r["train_s"] for r in rs])),
                "sampler_share": float(np.mean([r["share"] for r in rs])),
                "rank_correlation": [x for r in rs for x in r["rank_correlation"] if x is not None],
            }
            e = entry[kind]
            rc = np.mean(e["rank_correlation"]) if e["rank_correlation"] else float("nan")
            tt = f"{e['time_to_target_s']:.2f}" if e["time_to_target_s"] is not None else f"({e['reached']}/{seeds})"
            print(f"{name:10} {kind:9} {e['final_p_at_1']:9.4f} {tt:>11} {e['train_s']:8.2f} "
                  f"{100 * e['sampler_share']:8.1f}% {rc:9.3f}")
        u, a = entry["uniform"]["time_to_target_s"], entry["nw_sketch"]["time_to_target_s"]
        entry["time_ratio"] = (a / u) if (a is not None and u) else None
        print(f"{name:10} time ratio nw_sketch / uniform to reach P@1 {target:.4f}: "
              f"{entry['time_ratio'] if entry['time_ratio'] is None else round(entry['time_ratio'], 3)}")
        report["datasets"][name] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sampler_wallclock.json").write_text(json.dumps(report, indent=1, default=float))
    plot(report, RESULTS / "sampler_wallclock.png")


def plot(report, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install matplotlib): no PNG")
        return
    names = list(report["datasets"])
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        entry = report["datasets"][name]
        for kind, colour in (("uniform", "tab:blue"), ("nw_sketch", "tab:red")):
            for i, r in enumerate(entry["runs"][kind]):
                t, a = zip(*r["curve"])
                ax.plot(t, a, color=colour, alpha=0.8, label=kind if i == 0 else None)
        ax.axhline(entry["target_p_at_1"], color="gray", ls="--", lw=0.8, label="uniform final")
        ax.set_title(name + (" (synthetic)" if name == "synthetic" else ""))
        ax.set_xlabel("training wall-clock (s)")
        ax.set_ylabel("test P@1")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
