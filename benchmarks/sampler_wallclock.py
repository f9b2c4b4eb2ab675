"""Does the adaptive sampler reach uniform sampling's validation metric sooner, in wall-clock time?

For each data set and seed, the same boltc pipeline (`boltc.compile(model.bolt)`: same model file,
executor, seed, learning-rate schedule, the trainer's loop body) is trained once per sampler:
`uniform`, `nw_sketch` (its defaults: thinning) and `auto`. The runs of a seed advance in lockstep (one
step of each in turn), because the machine is shared and noisy: a load spike then slows all alike.

- Validation is carved from the training file (a seeded share, the same rows for every sampler and
  seed); the validation metric is read four times per epoch of data walked, with the clock stopped.
- Each run's clock covers building its sampler (hashing every example) and its steps (draw, take,
  train_step, after_step, observe), so the sampler's overhead is included.
- The test set is read once per run, after its last epoch.

Reported per data set and sampler (means over seeds): uniform's best validation metric is the target of
its seed; the time each sampler needs to first reach it (interpolated between evaluations) as a share of
the time uniform needed (goal for nw_sketch <= 0.7 on 20ng_nextword and sst2); total training time as a
share of uniform's (goal for auto <= 1.02); final test metric (goal: nw_sketch >= uniform; auto >=
uniform - 0.3 points); the sampler's share of training time, the share of examples kept, and auto's
switches. Writes benchmarks/results/sampler_wallclock[_TAG].json and .png.

    python benchmarks/sampler_wallclock.py                             # all four sets, 3 seeds
    python benchmarks/sampler_wallclock.py --only sst2 --seeds 1       # one set, one seed
    python benchmarks/sampler_wallclock.py --spec '{"floor": 0.05}'    # nw_sketch overrides
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
# name: model file, epochs, data folder, metric, training rows used (None = all), test rows read (None =
# all), validation rows at most, validation reads per epoch. 20ng_nextword is cut to a seeded subset: a
# dense evaluation of its 37,392 outputs costs ~5 GFLOP per 1,000 rows, and three samplers x three seeds
# x the full 1M rows do not fit a shared 2-core machine's hour.
PROBLEMS = {
    "20ng_nextword": ("benchmarks/sampler_models/nextword.bolt", 3, "20ng_nextword", "precision@1", 50_000, 5_000, 2_000, 2),
    "sst2": ("benchmarks/sampler_models/sst2.bolt", 2, "sst2", "accuracy", None, None, 5_000, 4),
    "delicious": ("benchmarks/sampler_models/delicious.bolt", 8, "delicious", "precision@1", None, None, 5_000, 2),
    "bibtex": ("benchmarks/sampler_models/bibtex.bolt", 10, "bibtex", "precision@1", None, None, 5_000, 2),
}
VALIDATION_SHARE = 0.1
SPLIT_SEED = 20240
THREADS = 1


# -- data ------------------------------------------------------------------------------------------
def subset(ds, rows):
    from boltc.runtime.data.dataset import Dataset, _take
    rows = np.asarray(rows, dtype=np.int64)
    return Dataset(inputs={k: _take(v, rows) for k, v in ds.inputs.items()},
                   labels=_take(ds.labels, rows) if ds.labels is not None else None,
                   class_names=ds.class_names, source=ds.source, meta=dict(ds.meta))


def load(model, rows_cap, test_cap, val_max):
    """(train, validation, test): validation carved from the training file with a fixed seed; a seeded
    subset of the training rows / test rows when capped (said in the report)."""
    full = model.dataset(model.data_source("train"))
    rng = np.random.default_rng(SPLIT_SEED)
    order = rng.permutation(full.rows)
    if rows_cap and rows_cap < full.rows:
        order = order[:rows_cap]
    n_val = min(val_max, int(round(VALIDATION_SHARE * order.size)))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    test = model.dataset(model.data_source("test"))
    if test_cap and test_cap < test.rows:
        test = subset(test, np.sort(np.random.default_rng(SPLIT_SEED + 1).choice(test.rows, test_cap, replace=False)))
    return subset(full, train), subset(full, val), test, full.rows


# -- one run (a generator: one step per next()) ----------------------------------------------------
def run(model, spec, train, val, epochs, seed, metric, evals_per_epoch, out):
    """Train `model` with sampler `spec` as Trainer.fit does, yielding after every step; fills `out`."""
    from boltc.runtime.exec.optim import lr_at
    from boltc.runtime.sampler.choose import make_sampler
    from boltc.runtime.train.trainer import epoch_step, evaluate
    ex, cfg = model.executor, model.plan["train"]
    batch, base_lr = int(cfg["batch"]), float(cfg["lr"])
    bpe = -(-train.rows // batch)
    binary = model.plan["target"]["kind"] == "binary"
    upkeep = getattr(ex, "upkeep", None)
    if upkeep is not None and hasattr(upkeep, "set_label_frequency"):
        upkeep.set_label_frequency(np.bincount(train.labels.indices, minlength=train.labels.shape[1]))
    t0, c0 = time.perf_counter(), time.thread_time()
    sampler = make_sampler(spec, train, batch, seed)
    clock, cpu = time.perf_counter() - t0, time.thread_time() - c0
    curve, steps = [], 0

    def validate(walked):
        curve.append((clock, evaluate(ex, val, [metric], binary=binary)[metric], walked, cpu))

    for epoch in range(epochs):
        it = iter(sampler.batches(epoch))
        bi, mark = 0, 1
        while True:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                rows, weights = next(it)
            except StopIteration:
                clock += time.perf_counter() - t0
                cpu += time.thread_time() - c0
                break
            b = train.take(rows)
            if weights is not None:
                b.weights = np.asarray(weights, dtype=np.float32)
            lr = lr_at(base_lr, cfg.get("schedule"), epoch * bpe + epoch_step(sampler, bi, bpe), epochs * bpe, bpe)
            losses = ex.train_step(b, lr)
            ex.after_step(epoch, bi, bpe)
            sampler.observe(rows, losses)
            clock += time.perf_counter() - t0
            cpu += time.thread_time() - c0
            bi += 1
            steps += 1
            walked = getattr(sampler, "epoch_position", None)
            walked = min(train.rows, bi * batch) if walked is None else walked
            while mark < evals_per_epoch and walked >= mark * train.rows / evals_per_epoch:
                validate(epoch + walked / train.rows)
                mark += 1
            yield
        validate(epoch + 1.0)
    st = sampler.stats()
    overhead = float(st.get("overhead_s", 0.0)) + float(st.get("hash_s", 0.0))
    out.update(curve=curve, train_s=clock, cpu_s=cpu, steps=steps, sampler_s=overhead, share=overhead / clock,
               stats={k: v for k, v in st.items() if isinstance(v, (int, float, str, bool, type(None)))},
               switches=[list(s) for s in getattr(sampler, "switches", [])], backend=model.backend)


def warm_up(model_file, backend, train, val):
    """A few steps and an evaluation of a throwaway model, clock off: kernels that are built or loaded on
    first use are then in place for every timed run alike (otherwise the first run in the lockstep pays)."""
    import boltc
    from boltc.runtime.train.trainer import evaluate
    m = boltc.compile(str(ROOT / model_file), backend=backend, threads=THREADS)
    batch = int(m.plan["train"]["batch"])
    for i in range(3):
        m.executor.train_step(train.take(np.arange(i * batch, (i + 1) * batch) % train.rows), 1e-4)
        m.executor.after_step(0, i, 10)
    evaluate(m.executor, subset(val, np.arange(min(val.rows, 256))), [m.plan["metrics"][0]],
             binary=m.plan["target"]["kind"] == "binary")


def prefault(model):
    """Write every page of the weights and optimizer moments once, clock off. The moments start as untouched
    zero pages and lazy Adam first writes them over the first epoch, so a run whose pages came fresh from
    the OS paid page faults that a run reusing a freed model's memory did not (sst2: its first quarter
    epoch took 0.12 to 0.41 CPU seconds depending on that alone)."""
    for group in (model.state.params, model.state.m, model.state.v):
        for tensors in group.values():
            for a in tensors.values():
                if isinstance(a, np.ndarray) and a.size and a.flags.writeable:
                    a *= 1                      # unchanged values (finite or not), every page written


def run_seed(model_file, specs, seed, epochs, backend, metric, rows_cap, test_cap, val_max, evals):
    import boltc
    from boltc.runtime.train.trainer import evaluate
    # one thread per model: with several models stepping in turn on a shared machine, a step that waits
    # for a descheduled second thread doubled single runs' times at random
    models = {name: boltc.compile(str(ROOT / model_file), backend=backend, sampler=sp_, seed=seed, epochs=epochs,
                                  threads=THREADS)
              for name, sp_ in specs.items()}
    first = next(iter(models.values()))
    train, val, test, full_rows = load(first, rows_cap, test_cap, val_max)
    warm_up(model_file, backend, train, val)
    for m in models.values():
        prefault(m)
    outs = {name: {} for name in models}
    active = [run(models[n], specs[n], train, val, epochs, seed, metric, evals, outs[n]) for n in models]
    turn = 0
    while active:                      # lockstep: one step of each run in turn, the order rotating
        turn += 1
        for g in active[turn % len(active):] + active[:turn % len(active)]:
            try:
                next(g)
            except StopIteration:
                active.remove(g)
    binary = first.plan["target"]["kind"] == "binary"
    for name, m in models.items():     # the test set, read once per run
        outs[name]["test"] = evaluate(m.executor, test, [metric], binary=binary)[metric]
    sizes = {"train": train.rows, "validation": val.rows, "test": test.rows, "train_file_rows": full_rows}
    return outs, sizes


def child(args):
    model_file, epochs, _, metric, rows_cap, test_cap, val_max, evals = PROBLEMS[args.child]
    epochs = args.epochs or epochs
    rows_cap = args.rows if args.rows >= 0 else rows_cap
    specs = {"uniform": {"kind": "uniform"}, "nw_sketch": {"kind": "nw_sketch", **json.loads(args.spec)},
             "auto": {"kind": "auto", **json.loads(args.auto_spec)}}
    if args.specs:                     # exploration: any named set of sampler specs (uniform always first)
        specs = {"uniform": {"kind": "uniform"}, **json.loads(args.specs)}
    runs = {name: [] for name in specs}
    sizes = {}
    for seed in range(args.seeds):
        outs, sizes = run_seed(model_file, specs, seed, epochs, args.backend, metric, rows_cap, test_cap, val_max,
                               evals)
        for name, r in outs.items():
            runs[name].append(r)
            print(f"  {args.child} seed {seed} {name:9}: best val {max(c[1] for c in r['curve']):.2f} "
                  f"test {r['test']:.2f} in {r['train_s']:.1f}s ({r['steps']} steps)", file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps({"epochs": epochs, "metric": metric, "sizes": sizes, "specs": specs,
                                          "runs": runs}, default=float))


# -- the report ------------------------------------------------------------------------------------
def time_to_reach(curve, target, clock=0):
    """First time the validation curve reaches target, interpolated between evaluations; None if never.
    clock 0: wall-clock seconds; 3: the run's thread CPU seconds."""
    prev_t, prev_a = 0.0, None
    for point in curve:
        t, a = point[clock], point[1]
        if a >= target:
            if prev_a is None or a <= prev_a:
                return t
            return prev_t + (t - prev_t) * (target - prev_a) / (a - prev_a)
        prev_t, prev_a = t, a
    return None


def summarise(name, res):
    runs = res["runs"]
    entry = {k: res[k] for k in ("epochs", "metric", "sizes", "specs", "runs")}
    entry["backend"] = res.get("backend")
    n = len(runs["uniform"])
    for kind, rs in runs.items():
        ratios, time_shares, cpu_ratios, cpu_shares = [], [], [], []
        for s in range(n):
            u = runs["uniform"][s]
            target = max(c[1] for c in u["curve"])
            tu, tx = time_to_reach(u["curve"], target), time_to_reach(rs[s]["curve"], target)
            ratios.append(tx / tu if (tx is not None and tu) else None)
            time_shares.append(rs[s]["train_s"] / u["train_s"])
            cu, cx = time_to_reach(u["curve"], target, 3), time_to_reach(rs[s]["curve"], target, 3)
            cpu_ratios.append(cx / cu if (cx is not None and cu) else None)
            cpu_shares.append(rs[s]["cpu_s"] / u["cpu_s"])
        reached = [r for r in ratios if r is not None]
        reached_cpu = [r for r in cpu_ratios if r is not None]
        keep = [r["stats"].get("keep_fraction") for r in rs if r["stats"].get("keep_fraction") is not None]
        entry[kind] = {
            "time_to_uniform_best_ratio": float(np.mean(reached)) if len(reached) == n else None,
            "time_to_uniform_best_ratio_per_seed": ratios,
            "total_time_ratio": float(np.mean(time_shares)),
            "time_to_uniform_best_cpu_ratio": float(np.mean(reached_cpu)) if len(reached_cpu) == n else None,
            "time_to_uniform_best_cpu_ratio_per_seed": cpu_ratios,
            "total_cpu_ratio": float(np.mean(cpu_shares)),
            "best_validation_per_seed": [max(c[1] for c in r["curve"]) for r in rs],
            "best_validation": float(np.mean([max(c[1] for c in r["curve"]) for r in rs])),
            "final_test": float(np.mean([r["test"] for r in rs])),
            "final_test_per_seed": [r["test"] for r in rs],
            "train_s": float(np.mean([r["train_s"] for r in rs])),
            "cpu_s": float(np.mean([r["cpu_s"] for r in rs])),
            "sampler_share": float(np.mean([r["share"] for r in rs])),
            "keep_fraction_last_epoch": float(np.mean(keep)) if keep else None,
            "switches": [r["switches"] for r in rs],
        }
    return entry


def table(report):
    """Time columns: wall-clock ("wall") and the run's own thread CPU time ("cpu", what an unshared
    one-thread run's wall-clock would be), both as a share of uniform's in the same run."""
    fmt = lambda x: "never" if x is None else f"{x:.2f}"
    lines = [f"{'dataset':14} {'sampler':9} {'t->best wall':>12} {'t->best cpu':>11} {'per seed (cpu)':>17} "
             f"{'wall':>5} {'cpu':>5} {'best val':>8} {'test':>6} {'overhead':>8} {'kept':>5} {'switches':>8}"]
    for name, e in report["datasets"].items():
        for kind in e["runs"]:
            k = e[kind]
            per = ",".join(fmt(x) for x in k.get("time_to_uniform_best_cpu_ratio_per_seed", []))
            kept = "-" if k["keep_fraction_last_epoch"] is None else f"{k['keep_fraction_last_epoch']:.2f}"
            sw = sum(len(s) for s in k["switches"])
            lines.append(f"{name:14} {kind:9} {fmt(k['time_to_uniform_best_ratio']):>12} "
                         f"{fmt(k.get('time_to_uniform_best_cpu_ratio')):>11} {per:>17} "
                         f"{k['total_time_ratio']:5.2f} {k.get('total_cpu_ratio', float('nan')):5.2f} "
                         f"{k['best_validation']:8.2f} {k['final_test']:6.2f} "
                         f"{100 * k['sampler_share']:7.1f}% {kept:>5} {sw:>8}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=0, help="override every dataset's epochs")
    ap.add_argument("--rows", type=int, default=-1, help="training rows used (seeded subset; 0 = all)")
    ap.add_argument("--spec", default="{}", help="JSON overrides of nw_sketch's defaults")
    ap.add_argument("--auto-spec", default="{}", help="JSON overrides of auto's defaults")
    ap.add_argument("--specs", default="", help='JSON {"name": spec, ...}: samplers to compare with uniform')
    ap.add_argument("--only", default="", help="comma-separated dataset names")
    ap.add_argument("--backend", default="native")
    ap.add_argument("--child", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--from-json", default="", help="re-print the table of result files (comma-separated; "
                                                   "with --tag, merged into one JSON and PNG)")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.from_json:                 # re-print, or merge runs of different data sets into one report
        parts = [json.loads(Path(f).read_text()) for f in args.from_json.split(",")]
        merged = {**parts[0], "datasets": {k: v for r in parts for k, v in r["datasets"].items()},
                  "parts": [{k: r.get(k) for k in ("command", "date", "machine", "load_average")} for r in parts]}
        print(table(merged))
        if args.tag:
            stem = RESULTS / f"sampler_wallclock_{args.tag}"
            stem.with_suffix(".json").write_text(json.dumps(merged, indent=1, default=float))
            plot(merged, stem.with_suffix(".png"))
        return None
    names = [n for n in PROBLEMS if not args.only or n in args.only.split(",")]
    report = {"datasets": {}, "command": " ".join(["python", "benchmarks/sampler_wallclock.py"] + sys.argv[1:]),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, shared",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": list(os.getloadavg())}
    for name in names:
        if not (DATA / PROBLEMS[name][2]).exists():
            print(f"{name}: skipped ({DATA / PROBLEMS[name][2]} not found)")
            continue
        for backend in dict.fromkeys([args.backend, "numpy"]):
            with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                cmd = [sys.executable, __file__, "--child", name, "--out", tmp.name, "--backend", backend,
                       "--seeds", str(args.seeds), "--spec", args.spec, "--auto-spec", args.auto_spec,
                       "--epochs", str(args.epochs), "--rows", str(args.rows), "--specs", args.specs]
                if subprocess.run(cmd).returncode == 0:
                    res = {**json.loads(Path(tmp.name).read_text()), "backend": backend}
                    report["datasets"][name] = summarise(name, res)
                    break
                print(f"{name}: the {backend} backend failed; retrying on numpy", file=sys.stderr)
    report["load_average_end"] = list(os.getloadavg())
    print("\n" + table(report))
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
    palette = ["tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink"]
    for ax, name in zip(axes[0], names):
        entry = report["datasets"][name]
        for kind, colour in zip(entry["runs"], palette):
            for i, r in enumerate(entry["runs"][kind]):
                t, a = [c[0] for c in r["curve"]], [c[1] for c in r["curve"]]
                ax.plot(t, a, color=colour, alpha=0.6, marker=".", label=kind if i == 0 else None)
        best = entry["uniform"]["best_validation"]
        ax.axhline(best, color="gray", ls="--", lw=0.8, label="uniform best (mean)")
        lo = min(c[1] for r in entry["runs"]["uniform"] for c in r["curve"])
        ax.set_ylim(max(lo, best - 15), best + 3)
        sizes = entry["sizes"]
        ax.set_title(f"{name} ({sizes['train']:,} train rows) [{entry.get('backend')}]")
        ax.set_xlabel("training wall-clock (s), sampler included")
        ax.set_ylabel(f"validation {entry['metric']} (%)")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
