"""Does the adaptive NW-sketch sampler reach uniform sampling's accuracy sooner, in wall-clock time?

For each dataset (bibtex and delicious from ../shared/data, and the project's seeded synthetic set of
models/quickstart.bolt) and each of three seeds, the same boltc pipeline (`boltc.compile(model.bolt)` +
`Model.fit`: same model file, executor, trainer, seed) is trained twice, once with `sampler uniform` and
once with `sampler nw_sketch` (its defaults unless --spec says otherwise), for the same number of epochs
(an epoch is N draws either way). The two runs of a seed advance in lockstep (one step of each, in
turn), because these machines are shared and noisy: a load spike then slows both alike. Each run's
clock covers its own steps (draw, take, train_step, after_step, observe: the trainer's loop body) plus
building its sampler (hashing every example); test P@1 is read after every epoch with the clock stopped.

Reported per dataset: uniform's final P@1 (mean over seeds) = the target; the time each sampler's mean
curve (mean over seeds of time and P@1 after each epoch) needs to reach it, interpolated between epochs; the
ratio nw_sketch / uniform (goal <= 0.7); the sampler's share of training time; the rank correlation
between the sketch's predicted losses and the true losses of 512 random training rows (every 2 epochs)
and the free one (prediction at draw time vs loss observed). Writes benchmarks/results/
sampler_wallclock.json and .png.

Each dataset runs in a child process (a native-code crash in one cannot take the others down); when the
native backend fails there, that dataset is rerun on the NumPy backend and the table says so.

    python benchmarks/sampler_wallclock.py                     # full run
    python benchmarks/sampler_wallclock.py --quick             # 1 seed, fewer epochs (smoke run)
    python benchmarks/sampler_wallclock.py --spec '{"mix": 0.1}' --only delicious
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
PROBLEMS = {  # name: (model file, epochs, data needed)
    "bibtex": ("models/bibtex.bolt", 10, "bibtex"),
    "delicious": ("models/delicious.bolt", 8, "delicious"),
    "synthetic": ("models/quickstart.bolt", 5, None),
}


# -- one dataset (child process) -------------------------------------------------------------------
def true_losses(model, ds, rows):
    """Per-example cross entropy of the dense model on `rows` (the trainer's own measure)."""
    from boltc.runtime.train.trainer import true_losses as losses_of
    return losses_of(model.executor, model.plan, ds.take(rows))


def run_pair(model_file, specs, seed, epochs, backend):
    """Train one model per sampler spec in lockstep: step k of every model runs back to back, so the
    machine's load (shared, noisy) hits all of them alike. Each step is the trainer's own loop body
    (runtime/train/trainer.py): draw, take, train_step, after_step, observe."""
    import boltc
    from boltc.runtime.exec.optim import lr_at
    from boltc.runtime.sampler.adaptive import make_sampler
    from boltc.runtime.train.trainer import evaluate
    models = [boltc.compile(str(ROOT / model_file), backend=backend, sampler=sp_, seed=seed, epochs=epochs)
              for sp_ in specs]
    train = models[0].dataset(models[0].data_source("train"))
    test = models[0].dataset(models[0].data_source("test"))
    cfg = models[0].plan["train"]
    batch, base_lr = int(cfg["batch"]), float(cfg["lr"])
    bpe = -(-train.rows // batch)
    out = []
    for m, spec in zip(models, specs):
        ex = m.executor                                  # built (and compiled) before the clock starts
        # as Trainer.fit does: the negatives weighted by the training set's label counts
        ex.upkeep.set_label_frequency(np.bincount(train.labels.indices, minlength=train.labels.shape[1]))
        t0 = time.perf_counter()
        sampler = make_sampler(spec, train, batch, seed)
        out.append({"ex": ex, "sampler": sampler, "clock": time.perf_counter() - t0, "curve": [], "rank": []})
    probe = np.random.default_rng(seed + 99).choice(train.rows, min(512, train.rows), replace=False)
    for epoch in range(epochs):
        gens = [iter(o["sampler"].batches(epoch)) for o in out]
        for bi in range(bpe):
            lr = lr_at(base_lr, cfg.get("schedule"), epoch * bpe + bi, epochs * bpe, bpe)
            for o, g in zip(out, gens):
                t0 = time.perf_counter()
                rows, weights = next(g)
                b = train.take(rows)
                if weights is not None:
                    b.weights = np.asarray(weights, dtype=np.float32)
                losses = o["ex"].train_step(b, lr)
                o["ex"].after_step(epoch, bi, bpe)
                o["sampler"].observe(rows, losses)
                o["clock"] += time.perf_counter() - t0
        for o, m in zip(out, models):                     # clock stopped
            p1 = evaluate(o["ex"], test, ["precision@1"])["precision@1"] / 100.0
            o["curve"].append((o["clock"], p1))
            if epoch % 2 == 1 and hasattr(o["sampler"], "predict"):
                o["rank"].append(o["sampler"].rank_correlation(true_losses(m, train, probe), probe))
    results = []
    for o, m in zip(out, models):
        st = o["sampler"].stats()
        overhead = float(st.get("overhead_s", 0.0)) + float(st.get("hash_s", 0.0))
        results.append({"curve": o["curve"], "train_s": o["clock"], "sampler_s": overhead,
                        "share": overhead / o["clock"], "final": o["curve"][-1][1], "rank_correlation": o["rank"],
                        "observed_rank_correlation": st.get("observed_rank_correlation"), "backend": m.backend,
                        "stats": {k: v for k, v in st.items() if isinstance(v, (int, float, str, type(None)))}})
    return results


def child(args):
    model_file, epochs, _ = PROBLEMS[args.child]
    epochs = args.epochs or (max(2, epochs // 2) if args.quick else epochs)
    nw = {"kind": "nw_sketch", **json.loads(args.spec)}
    runs = {"uniform": [], "nw_sketch": []}
    for seed in range(1 if args.quick else args.seeds):
        pair = run_pair(model_file, [{"kind": "uniform"}, nw], seed, epochs, args.backend)
        for kind, r in zip(("uniform", "nw_sketch"), pair):
            runs[kind].append(r)
            print(f"  {args.child} seed {seed} {kind}: final P@1 {r['final']:.4f} in {r['train_s']:.1f}s",
                  file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps({"epochs": epochs, "runs": runs}, default=float))


# -- the report ------------------------------------------------------------------------------------
def time_to_reach(curve, target):
    """First time the curve reaches target, interpolated between epochs (from 0 at time 0); None if never."""
    prev_t, prev_a = 0.0, 0.0
    for t, a in curve:
        if a >= target:
            return prev_t + (t - prev_t) * ((target - prev_a) / (a - prev_a) if a > prev_a else 1.0)
        prev_t, prev_a = t, a
    return None


def mean_curve(runs):
    """Mean over seeds of (time, P@1) after each epoch."""
    return [tuple(x) for x in np.mean(np.array([r["curve"] for r in runs], dtype=np.float64), axis=0)]


def summarise(name, res, seeds):
    """Target = uniform's final P@1, mean over seeds. Time to target is read off each sampler's mean
    curve (mean time and mean P@1 after each epoch): a single seed's curve may never reach a mean."""
    runs = res["runs"]
    target = float(np.mean([r["final"] for r in runs["uniform"]]))
    entry = {"target_p_at_1": target, "epochs": res["epochs"], "runs": runs, "backend": res.get("backend")}
    for kind, rs in runs.items():
        reach = [time_to_reach(r["curve"], target) for r in rs]
        mean = mean_curve(rs)
        rc = [x for r in rs for x in r["rank_correlation"] if x is not None]
        orc = [r["observed_rank_correlation"] for r in rs if r.get("observed_rank_correlation") is not None]
        entry[kind] = {
            "final_p_at_1": float(np.mean([r["final"] for r in rs])),
            "mean_curve": mean,
            "time_to_target_s": time_to_reach(mean, target),
            "seeds_reaching_target": sum(t is not None for t in reach),
            "train_s": float(np.mean([r["train_s"] for r in rs])),
            "sampler_share": float(np.mean([r["share"] for r in rs])),
            "rank_correlation": float(np.mean(rc)) if rc else None,
            "observed_rank_correlation": float(np.mean(orc)) if orc else None,
        }
        e = entry[kind]
        tt = f"{e['time_to_target_s']:.2f}" if e["time_to_target_s"] is not None else "never"
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"
        print(f"{name:10} {kind:9} {e['final_p_at_1']:9.4f} {tt:>11} {e['train_s']:8.2f} "
              f"{100 * e['sampler_share']:8.1f}% {fmt(e['rank_correlation']):>9} {fmt(e['observed_rank_correlation']):>9}")
    u, a = entry["uniform"]["time_to_target_s"], entry["nw_sketch"]["time_to_target_s"]
    entry["time_ratio"] = (a / u) if (a is not None and u) else None
    ratio = "not reached" if entry["time_ratio"] is None else f"{entry['time_ratio']:.3f}"
    print(f"{name:10} nw_sketch / uniform time to reach P@1 {target:.4f}: {ratio}  [{res.get('backend')}]")
    return entry


TABLE_HEAD = (f"{'dataset':10} {'sampler':9} {'final P@1':>9} {'t->target':>11} {'train s':>8} "
              f"{'sampler':>9} {'rank corr':>9} {'observed':>9}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=0, help="override every dataset's epochs")
    ap.add_argument("--spec", default="{}", help="JSON overrides of nw_sketch's defaults")
    ap.add_argument("--only", default="", help="comma-separated dataset names")
    ap.add_argument("--backend", default="native")
    ap.add_argument("--child", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--from-json", default="", help="re-summarise the runs stored in a result file")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        print(TABLE_HEAD)
        for name, entry in report["datasets"].items():
            report["datasets"][name] = summarise(name, {"runs": entry["runs"], "epochs": entry["epochs"],
                                                        "backend": entry.get("backend")}, args.seeds)
        Path(args.from_json).write_text(json.dumps(report, indent=1, default=float))
        plot(report, Path(args.from_json).with_suffix(".png"))
        return None
    from boltc.runtime.sampler.adaptive import resolve_spec
    names = [n for n in PROBLEMS if not args.only or n in args.only.split(",")]
    report = {"spec": resolve_spec({"kind": "nw_sketch", **json.loads(args.spec)}), "datasets": {},
              "note": "synthetic = models/quickstart.bolt's seeded generator: SYNTHETIC figures",
              "command": " ".join(["python", "benchmarks/sampler_wallclock.py"] + sys.argv[1:])}
    done = {}
    for name in names:
        need = PROBLEMS[name][2]
        if need and not (DATA / need).exists():
            print(f"{name}: skipped ({DATA / need} not found)")
            continue
        for backend in dict.fromkeys([args.backend, "numpy"]):
            with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                cmd = [sys.executable, __file__, "--child", name, "--out", tmp.name, "--backend", backend,
                       "--seeds", str(args.seeds), "--spec", args.spec, "--epochs", str(args.epochs)]
                if args.quick:
                    cmd.append("--quick")
                if subprocess.run(cmd).returncode == 0:
                    done[name] = {**json.loads(Path(tmp.name).read_text()), "backend": backend}
                    break
                print(f"{name}: the {backend} backend failed; retrying on numpy", file=sys.stderr)
    print("\n" + TABLE_HEAD)
    for name, res in done.items():
        report["datasets"][name] = summarise(name, res, args.seeds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "sampler_wallclock" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1, default=float))
    plot(report, RESULTS / f"{stem}.png")


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
                t, a = zip(*([(0.0, 0.0)] + [tuple(p) for p in r["curve"]]))
                ax.plot(t, a, color=colour, alpha=0.7, marker=".", label=kind if i == 0 else None)
        ax.axhline(entry["target_p_at_1"], color="gray", ls="--", lw=0.8, label="uniform final (mean)")
        ax.set_ylim(max(0.0, entry["target_p_at_1"] - 0.25), min(1.0, entry["target_p_at_1"] + 0.08))
        ax.set_title(f"{name}{' (SYNTHETIC)' if name == 'synthetic' else ''} [{entry.get('backend')}]")
        ax.set_xlabel("training wall-clock (s)")
        ax.set_ylabel("test P@1")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
