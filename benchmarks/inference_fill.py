"""Sparse inference fill of the output layer: BOLT's random fill (the default) against the opt-in
`frequent_fill` (runtime/lsh/prior.py), on the SYNTHETIC 100k-label problem of models/synth100k.bolt.

One model is trained (20,000 rows, one epoch, output sparsity 0.005 as BOLT's table gives), then
sparse inference is evaluated with each fill on a validation draw of the same synthetic task (seed 3;
the file's test draw, seed 2, is not read). Prints a table and writes results/inference_fill.json.

    python benchmarks/inference_fill.py [--rows 20000] [--seeds 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import boltc                                     # noqa: E402
from bench_common import table, write_json       # noqa: E402

MODEL = Path(__file__).parents[1] / "models" / "synth100k.bolt"


def model_source(rows: int, seed: int) -> str:
    src = MODEL.read_text().replace("sparsity=auto", "sparsity=0.005")
    src = src.replace("rows=50000, features=100000, labels=100000, seed=1",
                      f"rows={rows}, features=100000, labels=100000, seed=1")
    src = src.replace("rows=5000, features=100000, labels=100000, seed=2",
                      "rows=5000, features=100000, labels=100000, seed=3")
    return src.replace("epochs    1", f"epochs    1\n    seed      {seed}")


def set_fill(model, on: bool) -> None:
    for plan in {id(p): p for p in (model.plan, getattr(model.executor, "plan", model.plan))}.values():
        for layer in plan["layers"]:
            if layer["name"] == "scores":
                layer.setdefault("hash", {})["frequent_fill"] = on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "fill.bolt"
            path.write_text(model_source(args.rows, seed))
            m = boltc.compile(str(path))
            m.fit(progress=False)
            row = {"seed": seed, "dense P@1": m.evaluate()["precision@1"]}
            for name, on in (("random fill P@1", False), ("frequent fill P@1", True)):
                set_fill(m, on)
                row[name] = m.evaluate(sparse=True)["precision@1"]
            rows.append(row)
            print(row, flush=True)
    cols = ["seed", "dense P@1", "random fill P@1", "frequent fill P@1"]
    print(table(rows, cols))
    print("wrote", write_json("inference_fill", {"rows": args.rows, "sparsity": 0.005, "results": rows}))


if __name__ == "__main__":
    main()
