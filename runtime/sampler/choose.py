"""The sampler a train block's `sampler` spec asks for: uniform, the sketch's alias draws, thinning, or auto.

Its own module because the thinning samplers (thin.py) build on the sketch sampler (adaptive.py): the
choice imports both, neither imports it.
"""
from __future__ import annotations

from boltc.runtime.data.dataset import Dataset
from boltc.runtime.sampler.adaptive import NWSketchSampler, UniformSampler, resolve_spec
from boltc.runtime.sampler.thin import AutoSampler, ThinningSampler


def make_sampler(spec: dict | None, dataset: Dataset, batch: int, seed: int = 0):
    kind = (spec or {}).get("kind", "uniform")
    if kind == "uniform":
        resolve_spec(spec)
        return UniformSampler(dataset.rows, batch, seed)
    resolved = resolve_spec(spec, dataset.rows, batch)
    if resolved["kind"] == "auto" and dataset.rows < resolved["min_rows"]:
        # too small for thinning to pay (adaptive.py AUTO_DEFAULTS): the uniform sampler, the same draws
        # as auto's uniform phase, without watching the losses
        return UniformSampler(dataset.rows, batch, seed)
    if resolved["kind"] == "nw_sketch" and resolved["draw"] == "alias":
        return NWSketchSampler(resolved, dataset, batch, seed)
    return (AutoSampler if resolved["kind"] == "auto" else ThinningSampler)(resolved, dataset, batch, seed)
