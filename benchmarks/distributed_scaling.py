"""One process x 1 thread against 2 Ray workers x 1 thread, in one run, alternated and repeated.

    python benchmarks/distributed_scaling.py [--sets synth100k,nextword,delicious] [--repeats 2]
    python benchmarks/distributed_scaling.py --metrics --repeats 6 [--sets ...]     (metrics only)

For each set: examples/s of the training loop (one epoch, same global batch 256 and epochs), test
P@1 with dense and sparse inference, CPU seconds per update (one process; each worker's whole process),
the load average before and after each run, and for the workers the bytes moved per update, the bytes
of the rows a replica on another machine would fetch, and the time split (forward + input gradients,
exchange, update of the worker's rows, LSH upkeep incl. table inserts) in CPU and wall seconds per update
per worker. On a machine shared with other jobs the wall figures include waiting for a core (and, for
the synchronous workers, for each other); the CPU figures do not.
  synth100k  models/synth100k.bolt, SYNTHETIC, 20,000 training rows, 5,000 test rows
  nextword   ../shared/data/20ng_nextword (real): the first 100,000 training rows and 10,000 test rows,
             fc 256 relu -> fc 37,392 softmax; skipped when the data is absent
  delicious  ../shared/data/delicious (real): fc 512 relu -> fc 983 softmax at sparsity 0.2, 5 epochs
             (the model's fixed settings), all 12,920 training rows, the test file; skipped when absent
The wide outputs at sparsity 0.005 (BOLT's rule for wide layers: 500 and 187 active neurons), written here so
the measured shapes do not follow changes of the automatic choice.
Both runs of a pair start from the same initial state and draw batches with the same seed; repeat r
uses seed + r, so the spread of one process's metrics over repeats is the noise of the batch order.
The two configurations alternate (one process, then the workers, repeated), because the machine is
shared: compare within a pair, never across runs.
`--metrics`: P@1 only, one process against 2 workers in this process (the same protocol and bits as the
Ray workers, no Ray, no timing; one core is enough), for `--repeats` batch orders, with the mean
difference and its standard error: more batch orders than a timed run affords, for the metric goal.
Then a projection to 8, 32 and 64 machines on 10 Gbit/s links from the measured CPU seconds and bytes
(the model is in `project`; docs/distributed.md explains it). Writes benchmarks/results/distributed_scaling.json
(a run updates the sets it measured and keeps the others'). Examples/s count every epoch.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_common import RESULTS  # noqa: E402

import boltc  # noqa: E402
from boltc.runtime.data.load import load_dataset  # noqa: E402
from boltc.runtime.distributed.cluster import LOCAL_SYSTEM_CONFIG  # noqa: E402
from boltc.runtime.distributed.driver import train_distributed  # noqa: E402
from boltc.runtime.exec.executor import make_executor  # noqa: E402
from boltc.runtime.exec.state import ModelState  # noqa: E402
from boltc.runtime.train.trainer import Trainer, evaluate  # noqa: E402

NEXTWORD = ROOT.parent / "shared" / "data" / "20ng_nextword"
DELICIOUS = ROOT.parent / "shared" / "data" / "delicious" / "xc_split"
def xc_model(name: str, features: int, labels: int, hidden: int, sparsity: float, metrics: str, epochs: int) -> str:
    """A one-hidden-layer XC model with an LSH-sparse softmax output, Adam 1e-3, batch 256."""
    return f"""model {name} {{
  input  features: sparse({features})
  target labels:   multilabel({labels})
  hidden = fc(features, {hidden}, relu)
  scores = fc(hidden, {labels}, softmax, sparsity={sparsity})
  loss    cross_entropy(scores, labels)
  metrics {metrics}
  train {{
    optimizer adam(lr=0.001)
    batch     256
    epochs    {epochs}
  }}
}}"""


DELICIOUS_MODEL = xc_model("delicious", 500, 983, 512, 0.2, "precision@1, precision@3, precision@5", 5)
NEXTWORD_MODEL = xc_model("nextword", 149572, 37392, 256, 0.005, "precision@1, precision@5", 1)
SPARSITY = 0.005
LINK = 1.25e9          # 10 Gbit/s, bytes per second each way


def head_of_xc(src: Path, rows: int, dst: Path) -> str:
    """The first `rows` rows of a gzipped XC file as an uncompressed XC file (workers cut it by bytes)."""
    with gzip.open(src, "rt") as f:
        header = f.readline().split()
        lines = [f.readline() for _ in range(rows)]
    lines = [ln for ln in lines if ln]
    with open(dst, "w") as out:
        out.write(f"{len(lines)} {header[1]} {header[2]}\n")
        out.writelines(lines)
    return str(dst)


def sets(names, tmp: Path):
    out = {}
    if "synth100k" in names:
        source = (ROOT / "models" / "synth100k.bolt").read_text()
        plan = boltc.compile(source.replace("sparsity=auto", f"sparsity={SPARSITY}")).plan
        out["synth100k"] = (plan, dict(plan["data"]["train"], rows=20000),
                            load_dataset(dict(plan["data"]["test"], rows=5000), plan), "SYNTHETIC")
    if "nextword" in names:
        if not (NEXTWORD / "train.txt.gz").exists():
            print(f"nextword: {NEXTWORD} is absent, skipped")
        else:
            plan = boltc.compile(NEXTWORD_MODEL).plan
            train = head_of_xc(NEXTWORD / "train.txt.gz", 100_000, tmp / "nextword_train.txt")
            test = load_dataset(head_of_xc(NEXTWORD / "test.txt.gz", 10_000, tmp / "nextword_test.txt"), plan)
            out["nextword"] = (plan, train, test, "real (20ng_nextword)")
    if "delicious" in names:
        if not (DELICIOUS / "train.txt.gz").exists():
            print(f"delicious: {DELICIOUS} is absent, skipped")
        else:
            plan = boltc.compile(DELICIOUS_MODEL).plan
            out["delicious"] = (plan, str(DELICIOUS / "train.txt.gz"),
                                load_dataset(str(DELICIOUS / "test.txt.gz"), plan), "real (delicious)")
    return out


def rate(history: dict) -> dict:
    """Seconds and examples/s of the training loop over every epoch."""
    seconds = sum(e["seconds"] for e in history["epochs"])
    examples = sum(e["examples_per_s"] * e["seconds"] for e in history["epochs"])
    return {"seconds": seconds, "examples_per_s": examples / max(seconds, 1e-9)}


def p1(plan, state, test):
    ex = make_executor(plan, state, backend="native", threads=1)
    return {mode: evaluate(ex, test, ["precision@1"], sparse=mode == "sparse")["precision@1"]
            for mode in ("dense", "sparse")}


def one_process(plan, init, train):
    state = copy.deepcopy(init)
    ex = make_executor(plan, state, backend="native", threads=1)
    data = load_dataset(train, plan)
    load, c0 = os.getloadavg()[0], time.process_time()
    hist = Trainer(plan, state, ex, progress=False).fit(data)
    cpu = time.process_time() - c0
    updates = int(state.step)
    return state, {**rate(hist), "updates": updates, "cpu_seconds_per_update": cpu / max(1, updates),
                   "load": [load, os.getloadavg()[0]]}


def two_workers(plan, init, train):
    t0, load = time.perf_counter(), os.getloadavg()[0]
    res = train_distributed(plan, copy.deepcopy(init), train, workers=2, backend="native", threads_per_worker=1,
                            timeout=600)
    s = res.stats
    keep = ("bytes_sent_per_update_per_worker", "bytes_received_per_update_per_worker",
            "gradient_bytes_sent_per_update_per_worker", "row_bytes_sent_per_update_per_worker",
            "seconds_per_update", "cpu_seconds_per_update", "cpu_seconds_per_update_by_phase",
            "driver_wait_seconds", "updates", "facts_bytes_per_update", "shared_weights")
    return res.state, {**rate(res.history), "wall_with_startup": time.perf_counter() - t0,
                       "load": [load, os.getloadavg()[0]], **{k: s[k] for k in keep}}


def two_workers_in_process(plan, init, train):
    """The same protocol without Ray (the same bits as the Ray workers, tested): for metrics only."""
    return train_distributed(plan, copy.deepcopy(init), train, workers=2, backend="native", in_process=True).state


def metrics_over_seeds(name: str, plan, train, test, repeats: int) -> dict:
    """P@1 (dense, sparse) of one process and of 2 in-process workers for batch orders seed + r, r <
    repeats, and the mean difference with its standard error: whether the workers reach one process's
    metrics, against the noise of the batch order (speed is not measured here)."""
    init = ModelState.init(plan)
    rows = []
    for r in range(repeats):
        run_plan = copy.deepcopy(plan)
        run_plan["train"]["seed"] = int(plan["train"].get("seed", 0)) + r
        one = p1(plan, one_process(run_plan, init, train)[0], test)
        two = p1(plan, two_workers_in_process(run_plan, init, train), test)
        rows.append({"repeat": r, "one": one, "two": two})
        print(f"{name} [{r}] P@1 dense/sparse: one process {one['dense']:.2f} / {one['sparse']:.2f}, "
              f"2 workers {two['dense']:.2f} / {two['sparse']:.2f}", flush=True)
    out = {"runs": rows}
    for mode in ("dense", "sparse"):
        diff = np.array([x["two"][mode] - x["one"][mode] for x in rows])
        out[mode] = {"one": float(np.mean([x["one"][mode] for x in rows])),
                     "two": float(np.mean([x["two"][mode] for x in rows])), "diff": float(diff.mean()),
                     "se": float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else float("nan"),
                     "one_spread": float(np.ptp([x["one"][mode] for x in rows]))}
    return out


def project(one: dict, two: dict, plan: dict) -> list[dict]:
    """Speed-up of N machines over one process, per update of the same global batch B, from CPU
    seconds (what a dedicated machine spends; the shared machine's waiting left out) and bytes.

    Measured (2 workers, CPU seconds per worker and update): c = forward + input gradients of B/2
    examples, u = the owner's update of its half of the rows from the whole batch's factors, k = LSH
    upkeep (hashing, table refill and frozen inserts halved between the 2 workers of one machine, which
    share the tables); f = factor bytes a worker sends
    per example (to each other worker); U = bytes of the rows the global batch updates (2 x what one
    worker would send to a replica on another machine). One process: T1 CPU seconds per update.
    N machines (each its own replica of the weights; 10 Gbit/s full-duplex links, peer to peer):
      ZeRO-1 (built): c*2/N + u*2/N + 2k + link, link = (factors of B/N examples to N-1 peers and the
        owner's U/N rows to N-1 peers; the same amounts received) / 1.25 GB/s
      replicated update (not built): every machine applies the update of every row from every
        worker's factors (full moments everywhere, no rows on the link): c*2/N + 2u + 2k + factor link.
    The owner's update counted as shrinking with its share (u*2/N) leaves out the part of its
    inversion that reads every id of the whole batch (it sorts only its own), which does not shrink;
    on one machine the owners also compute the output's input gradient (in u), which workers on
    separate machines compute for their own examples (in c): a wash. The upkeep is the whole one, 2k, on every
    machine: replicas on separate machines each hash, refill and insert for every table (dividing it
    across machines would move codes and table shares over the link: not built).
    No overlap of compute and link time (the protocol is synchronous)."""
    B = plan["train"]["batch"]
    cp = two["cpu_seconds_per_update_by_phase"]
    c, u, k = cp["compute"], cp["update"], cp["upkeep"]
    f = two["gradient_bytes_sent_per_update_per_worker"] / (B / 2)      # per example, to one peer (N=2)
    U = 2 * two["row_bytes_sent_per_update_per_worker"]
    t1 = one["cpu_seconds_per_update"]
    rows = []
    for n in (2, 8, 32, 64):
        factors = f * B / n * (n - 1)
        link = (factors + U / n * (n - 1)) / LINK
        zero1 = {"compute": c * 2 / n, "update": u * 2 / n, "upkeep": 2 * k, "link": link}
        repl = {"compute": c * 2 / n, "update": 2 * u, "upkeep": 2 * k, "link": factors / LINK}
        rows.append({"machines": n, **{f"{key}_s": v for key, v in zero1.items()},
                     "bytes_per_worker": factors + U / n * (n - 1), "speedup": t1 / sum(zero1.values()),
                     "bound": max(zero1, key=zero1.get), "replicated_speedup": t1 / sum(repl.values()),
                     "replicated_bound": max(repl, key=repl.get)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="synth100k,nextword,delicious")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--metrics", action="store_true",
                    help="metrics only: one process against 2 workers in this process (no Ray, no timing), "
                         "per batch order; writes distributed_metrics.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="boltc_dist_bench_"))
    if args.metrics:
        return metrics_main(args, tmp)
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / "ray"),
             _system_config=LOCAL_SYSTEM_CONFIG)           # workers at the driver's priority, as boltc starts Ray
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)", "date": time.strftime("%Y-%m-%d"),
               "command": "python benchmarks/distributed_scaling.py " + " ".join(sys.argv[1:]), "sets": {}}
    try:
        for name, (plan, train, test, kind) in sets(args.sets.split(","), tmp).items():
            init = ModelState.init(plan)
            runs = []
            for r in range(args.repeats):
                # repeat r draws its batches in another order (train seed + r; same initial state), so the
                # spread of one process's metrics over repeats shows how much the order alone moves them
                run_plan = copy.deepcopy(plan)
                run_plan["train"]["seed"] = int(plan["train"].get("seed", 0)) + r
                for label, fn in (("one process x 1 thread", one_process), ("2 Ray workers x 1 thread", two_workers)):
                    state, m = fn(run_plan, init, train)
                    m.update({"config": label, "repeat": r, "p1": p1(plan, state, test)})
                    runs.append(m)
                    print(f"{name} [{r}] {label}: {m['examples_per_s']:.0f} ex/s, {m['cpu_seconds_per_update'] * 1e3:.1f} "
                          f"CPU ms per update, load {m['load'][0]:.1f}, P@1 dense {m['p1']['dense']:.2f} "
                          f"sparse {m['p1']['sparse']:.2f}", flush=True)
            pairs = [(runs[2 * r], runs[2 * r + 1]) for r in range(args.repeats)]
            speedups = [b["examples_per_s"] / a["examples_per_s"] for a, b in pairs]
            results["sets"][name] = {"data": kind, "runs": runs, "speedups": speedups,
                                     "projection": project(pairs[-1][0], pairs[-1][1], plan)}
    finally:
        ray.shutdown()
    report(results)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "distributed_scaling.json"
    if path.exists():                            # keep the sets this run did not measure
        kept = json.loads(path.read_text()).get("sets", {})
        results["sets"] = {**kept, **results["sets"]}
    path.write_text(json.dumps(results, indent=1))


def metrics_main(args, tmp: Path) -> None:
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)", "date": time.strftime("%Y-%m-%d"),
               "command": "python benchmarks/distributed_scaling.py " + " ".join(sys.argv[1:]), "sets": {}}
    for name, (plan, train, test, kind) in sets(args.sets.split(","), tmp).items():
        results["sets"][name] = dict(metrics_over_seeds(name, plan, train, test, args.repeats), data=kind)
    print(f"\n{results['command']}; {results['machine']}, {results['date']}")
    print("| set | inference | one process (mean) | 2 workers (mean) | difference | its standard error "
          "| one process's spread over batch orders |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results["sets"].items():
        for mode in ("dense", "sparse"):
            m = r[mode]
            print(f"| {name} | {mode} | {m['one']:.2f} | {m['two']:.2f} | {m['diff']:+.2f} | {m['se']:.2f} | {m['one_spread']:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "distributed_metrics.json"
    if path.exists():
        results["sets"] = {**json.loads(path.read_text()).get("sets", {}), **results["sets"]}
    path.write_text(json.dumps(results, indent=1))


def report(results):
    for name, r in results["sets"].items():
        print(f"\n{name} ({r['data']}); {results['machine']}, {results['date']}")
        print("| run | config | ex/s | vs one process | load avg | P@1 dense | P@1 sparse | CPU ms per update (per worker) "
              "| MB moved per update per worker | MB of rows for a remote replica | CPU ms compute / exchange / update / upkeep "
              "| wall ms compute / exchange / update / upkeep |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for i, m in enumerate(r["runs"]):
            w = "seconds_per_update" in m
            ratio = f"{r['speedups'][m['repeat']]:.2f}x" if i % 2 else ""
            fmt = lambda d: " / ".join(f"{d[k] * 1e3:.1f}" for k in ("compute", "exchange", "update", "upkeep"))  # noqa: E731
            print(f"| {m['repeat']} | {m['config']} | {m['examples_per_s']:.0f} | {ratio} | "
                  f"{m['load'][0]:.1f}-{m['load'][1]:.1f} | {m['p1']['dense']:.2f} | {m['p1']['sparse']:.2f} | "
                  f"{m['cpu_seconds_per_update'] * 1e3:.1f} | "
                  + (f"{m['bytes_sent_per_update_per_worker'] / 1e6:.2f} | {m['row_bytes_sent_per_update_per_worker'] / 1e6:.1f} | "
                     f"{fmt(m['cpu_seconds_per_update_by_phase'])} | {fmt(m['seconds_per_update'])} |" if w else "| | | |"))
        print("\nprojection to N machines, 10 Gbit/s links (CPU seconds of the last pair; see `project`)")
        print("| machines | compute s | update s | upkeep s | link s | MB per worker | speed-up (ZeRO-1, built) | bound by "
              "| speed-up (replicated update, not built) | bound by |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for p in r["projection"]:
            print(f"| {p['machines']} | {p['compute_s']:.4f} | {p['update_s']:.4f} | {p['upkeep_s']:.4f} | "
                  f"{p['link_s']:.4f} | {p['bytes_per_worker'] / 1e6:.1f} | {p['speedup']:.2f}x | {p['bound']} | "
                  f"{p['replicated_speedup']:.2f}x | {p['replicated_bound']} |")


if __name__ == "__main__":
    main()
