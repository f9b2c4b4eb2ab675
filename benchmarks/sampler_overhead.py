"""The samplers' own CPU cost per training step, without training: draws and observes with stand-in losses.

The wall-clock benchmark (sampler_wallclock.py) times the sampler inside training runs; on a loaded
shared machine its wall-clock share is inflated by time spent descheduled. This measures CPU time
(time.process_time) of `batches()` + `observe()` alone, per step, on an sst2-sized problem (62,349
rows, batch 128): the cost to compare with a training step's CPU time.

    python benchmarks/sampler_overhead.py
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from boltc.runtime.data.dataset import Dataset
from boltc.runtime.sampler.choose import make_sampler

RESULTS = Path(__file__).resolve().parent / "results"


def main(n: int = 62_349, batch: int = 128, epochs: int = 3) -> None:
    rng = np.random.default_rng(0)
    x = sp.random(n, 1000, density=0.01, format="csr", dtype=np.float32, random_state=0)
    y = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), rng.integers(0, 2, n))), shape=(n, 2))
    ds = Dataset(inputs={"x": x}, labels=y)
    loss = rng.gamma(0.3, size=n)            # stand-in losses: skewed, each example keeps its own
    out = {}
    print(f"{'sampler':10} {'epoch':>5} {'steps':>6} {'thinning':>8} {'CPU ms/step':>11}")
    for spec in ({"kind": "uniform"}, {"kind": "auto"}, {"kind": "nw_sketch"}):
        s = make_sampler(spec, ds, batch, 0)
        rows_out = []
        for e in range(epochs):
            c0, steps = time.process_time(), 0
            for rows, _ in s.batches(e):
                s.observe(rows, loss[rows] * rng.uniform(0.8, 1.2, rows.size))
                steps += 1
            ms = 1e3 * (time.process_time() - c0) / steps
            on = getattr(s, "thinning", False)
            rows_out.append({"epoch": e, "steps": steps, "thinning": bool(on), "cpu_ms_per_step": ms})
            print(f"{spec['kind']:10} {e:5} {steps:6} {str(bool(on)):>8} {ms:11.3f}")
        out[spec["kind"]] = rows_out
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sampler_overhead.json").write_text(json.dumps(
        {"command": "python benchmarks/sampler_overhead.py", "rows": n, "batch": batch,
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "samplers": out}, indent=1))


if __name__ == "__main__":
    main()
