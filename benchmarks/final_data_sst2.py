"""Should `boltc tune` train the final model on the given validation data too? Measured on sst2 without
reading its test file: dev.tsv (872 sentences) is split into two seeded halves; each tuned model of a
real_accuracy run (its written-out values) trains on train.tsv alone and on train.tsv plus one half, and
is scored on the other half, both ways round.

    python benchmarks/final_data_sst2.py [--from benchmarks/results/real_accuracy_text_3seeds.json]

Prints a table and writes benchmarks/results/final_data_sst2.json.
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_json  # noqa: E402

import boltc  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / ".." / "shared" / "data" / "sst2"


def rows(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        next(f)
        return [line.rstrip("\n") for line in f if line.strip()]


def write(path: Path, lines: list[str]) -> str:
    path.write_text("label\tsentence\n" + "".join(line + "\n" for line in lines))
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", default=str(Path(__file__).parent / "results" / "real_accuracy_text_3seeds.json"))
    args = ap.parse_args()
    if not (DATA / "dev.tsv.gz").exists():
        print(f"skip: {DATA} is absent")
        return
    tuned = json.loads(Path(args.source).read_text())["results"]["sst2"]["boltc"]
    train, dev = rows(DATA / "train.tsv.gz"), rows(DATA / "dev.tsv.gz")
    perm = np.random.default_rng(123).permutation(len(dev))
    halves = [sorted(perm[: len(dev) // 2]), sorted(perm[len(dev) // 2:])]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_only = write(tmp / "train.tsv", train)
        for h in (0, 1):
            plus = write(tmp / f"plus{h}.tsv", train + [dev[i] for i in halves[h]])
            held = write(tmp / f"held{h}.tsv", [dev[i] for i in halves[1 - h]])
            for r in tuned:
                # the written-out model without its data block, every epoch trained (no holdout)
                text = r["tuned_bolt"].split("  data {")[0].replace("  train {", "  train {\n    holdout 0.0") + "}\n"
                for name, tr in (("train", train_only), ("train + half of dev", plus)):
                    m = boltc.compile(text, seed=r["seed"])
                    m.fit(tr, None, progress=False)
                    acc = m.evaluate(held)["accuracy"]
                    out.append({"held_half": h, "seed": r["seed"], "final_data": name, "accuracy": acc})
                    print(f"half {h}  seed {r['seed']}  {name:20s} {acc:.2f}", flush=True)
    print("\n| final data | accuracy on the other half of dev, mean of 6 |\n|---|---|")
    for name in ("train", "train + half of dev"):
        print(f"| {name} | {statistics.mean(o['accuracy'] for o in out if o['final_data'] == name):.2f} |")
    write_json("final_data_sst2", {"benchmark": "final_data_sst2", "source": args.source, "runs": out})


if __name__ == "__main__":
    main()
