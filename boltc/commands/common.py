"""Helpers several commands share (run, tune, eval, predict): backend options and the metrics table."""
from __future__ import annotations

import argparse

from boltc.frontend.duration import parse_duration


def duration_argument(text: str) -> float:
    """argparse type of --budget: 90s, 10m, 1h."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_backend_arguments(p) -> None:
    p.add_argument("--backend", choices=("native", "numpy"), default=None,
                   help="kernels to run (default: native when available, else numpy)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (0 = all cores)")


def metrics_table(results: dict) -> str:
    cols = list(results)
    names = [k for k in results[cols[0]] if k != "examples_per_s"]
    head = f"{'metric':<14}" + "".join(f"{c + ' inference':>20}" for c in cols)
    lines = [head, "-" * len(head)]
    for n in names:
        lines.append(f"{n:<14}" + "".join(f"{results[c].get(n, float('nan')):>20.2f}" for c in cols))
    lines.append(f"{'examples/s':<14}" + "".join(f"{results[c].get('examples_per_s', 0):>20,.0f}" for c in cols))
    return "\n".join(lines)


def is_sparse_output(plan: dict) -> bool:
    out = next((l for l in plan["layers"] if l["name"] == plan["output"]), {})
    return bool(out.get("hash"))


def evaluate_both(model, data, metrics: list[str] | None = None, **options) -> dict:
    """{"dense": metrics, "sparse": metrics (LSH-sparse outputs only)}; `metrics` None = the model's;
    `options` go to Model.evaluate (exclude_seen, confusion)."""
    res = {"dense": model.evaluate(data, sparse=False, metrics=metrics, **options)}
    if is_sparse_output(model.plan):
        res["sparse"] = model.evaluate(data, sparse=True, metrics=metrics, **options)
    return res
