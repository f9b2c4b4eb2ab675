"""Shared set-up for the native-backend benchmarks: the XC model plan at a given shape, a state built
without the (slow) NumPy table build, synthetic data from runtime/data/synth.py, peak RSS.

Every figure these scripts print is on SYNTHETIC data (runtime/data/synth.py), shaped like the XC sets.
"""
from __future__ import annotations

import json
import math
import platform
import resource
import time
from pathlib import Path

import numpy as np

from boltc.runtime.data.dataset import Batch, as_csr
from boltc.runtime.exec.state import ModelState, init_params, make_lsh, neuron_rows, zero_moments

RESULTS = Path(__file__).parent / "results"


def bolt_sparsity(dim: int) -> float:
    for limit, s in ((450, 1.0), (900, 0.2), (1800, 0.1), (4000, 0.05), (10000, 0.02), (20000, 0.01)):
        if dim < limit:
            return s
    return 0.005


def bolt_dwta(dim: int, sparsity: float) -> dict:
    K = int(min(8, max(2, round(math.log2(128 / sparsity) / 3))))
    rb = 3 * K
    L = max(1, round(sparsity * (1 << rb)))
    res = 4 * max(dim // (1 << rb), 1)
    return {"family": "dwta", "hashes": K, "range_bits": rb, "tables": L, "reservoir": res, "bin_size": 8,
            "rehash_every": 0.25, "rebuild_every": 0.01, "freeze_after": 1}


def xc_plan(features: int, labels: int, hidden: int = 256, batch: int = 256, lr: float = 1e-4,
            sparsity: float | None = None) -> dict:
    s = bolt_sparsity(labels) if sparsity is None else sparsity
    active = max(1, int(math.floor(s * labels)))
    h = bolt_dwta(labels, s) if active < labels else None
    return {"format": 1, "model": f"xc{labels}",
            "inputs": [{"name": "features", "kind": "sparse", "dim": features}],
            "target": {"name": "labels", "kind": "multi", "classes": labels, "column": None},
            "layers": [
                {"name": "hidden", "op": "fc", "inputs": ["features"], "in_dim": features, "dim": hidden,
                 "activation": "relu", "bias": True, "input_sparse": True, "layout": "in_major",
                 "sparsity": 1.0, "active": hidden, "hash": None},
                {"name": "scores", "op": "fc", "inputs": ["hidden"], "in_dim": hidden, "dim": labels,
                 "activation": "softmax", "bias": True, "input_sparse": False, "layout": "out_major",
                 "sparsity": s, "active": active, "hash": h}],
            "output": "scores", "loss": "cross_entropy", "metrics": ["precision@1"],
            "train": {"optimizer": "adam", "lr": lr, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
                      "momentum": 0.0, "batch": batch, "epochs": 1, "schedule": {"kind": "constant"},
                      "sampler": {"kind": "uniform"}, "threads": 0, "seed": 0, "checkpoint_every": 1,
                      "inference": "sparse"},
            "data": {}, "memory": {}}


def fresh_state(plan: dict, seed: int = 0) -> ModelState:
    """ModelState.init without building the LSH tables (the caller builds them once an executor has
    installed its hashing: the NumPy build of 670k rows takes minutes)."""
    params = {l["name"]: init_params(l, seed) for l in plan["layers"]}
    out = plan["layers"][-1]
    if out.get("hash"):
        params[out["name"]]["label_count"] = np.zeros(out["dim"], np.float32)
    state = ModelState(params=params, m=zero_moments(plan, params), v=zero_moments(plan, params))
    if out.get("hash"):
        state.lsh[out["name"]] = make_lsh(out, seed)
    return state


def build_tables(plan: dict, state: ModelState) -> float:
    t = time.perf_counter()
    for l in plan["layers"]:
        if l["name"] in state.lsh:
            state.lsh[l["name"]].build(neuron_rows(l, state.params[l["name"]]["W"]))
    return time.perf_counter() - t


def synth_data(rows: int, features: int, labels: int, seed: int = 1, task: int = 0):
    from boltc.runtime.data.synth import SynthSpec, generate
    X, Y = generate(SynthSpec(rows=rows, features=features, labels=labels, seed=seed, task=task))
    return as_csr(X, features), as_csr(Y, labels)


def batches(X, Y, batch: int):
    for s in range(0, X.shape[0] - batch + 1, batch):
        yield Batch(inputs={"features": X[s:s + batch]}, labels=Y[s:s + batch])


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine() -> dict:
    import os
    import llvmlite.binding as llvm
    return {"cpu": llvm.get_host_cpu_name(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform()}


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": machine(), "synthetic": True, **payload}
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def table(rows: list[dict], cols: list[str]) -> str:
    widths = [max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in cols]
    line = lambda vals: "| " + " | ".join(f"{v}".ljust(w) for v, w in zip(vals, widths)) + " |"
    out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line([r.get(c, "") for c in cols]) for r in rows]
    return "\n".join(out)
