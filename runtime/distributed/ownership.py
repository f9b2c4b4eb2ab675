"""Which rows of each trained tensor each worker owns (its optimizer moments and its share of the update).

Owners hold contiguous row ranges: the update kernels address a moment shard as if it held the whole
tensor (`runners.shifted`), and the driver assembles the single-machine moments by concatenating the
shards in worker order. Equal ranges (`row_ranges`) suit rows that a batch touches about evenly. The
rows of a sparse input's fc or embedding are its features, and real feature ids are often ordered by
frequency (20ng_nextword's: the previous words' ids by rank, then a bag of words): with equal ranges
the first owner got nearly every occurrence, and with them nearly the whole update of that layer,
while the other waited. Those tensors' ranges are cut so that each owner's expected work per update
is about equal (`balanced_ranges`), from the training set's feature counts (each worker counts its
shard's, the driver sums them, as it does the label counts). Any contiguous ranges give the same
weights and moments bit for bit: each row's update is the same sum over the global batch whoever
owns it (tested).
"""
from __future__ import annotations

import numpy as np

from boltc.lower.rules import reads_sparse_input
from boltc.ops.runners import ADAM_OPS
from boltc.runtime.distributed.shard import row_ranges  # owner r of n: rows [rows*r/n, rows*(r+1)/n)


def feature_cost(counts: np.ndarray, rows: int, batch: int) -> np.ndarray:
    """Expected work of each feature's row per update of `batch` examples drawn from `rows`: the
    optimizer's pass over the row when the batch touches it (probability 1 - (1 - p)^batch, p the
    share of rows holding the feature) plus one multiply-add pass per occurrence (batch * p), in units
    of one pass over a row (the width is the same for every row of a tensor)."""
    p = np.clip(np.asarray(counts, np.float64) / max(1, rows), 0.0, 1.0)
    return (1.0 - np.power(1.0 - p, batch)) * ADAM_OPS + batch * p


def balanced_ranges(cost: np.ndarray, n: int) -> list[tuple[int, int]]:
    """n contiguous ranges covering the rows of `cost`, cut where the running sum of the cost crosses
    each r/n of its total (each range about 1/n of the work); equal ranges when nothing costs."""
    rows = int(cost.size)
    total = float(cost.sum())
    if n <= 1 or total <= 0.0:
        return row_ranges(rows, n)
    run = np.cumsum(cost, dtype=np.float64)
    cuts = [0] + [int(np.searchsorted(run, total * r / n, side="left")) + 1 for r in range(1, n)] + [rows]
    cuts = np.minimum(np.maximum.accumulate(cuts), rows).tolist()
    return [(cuts[r], cuts[r + 1]) for r in range(n)]


def counted_inputs(plan: dict) -> dict[str, str]:
    """Layers whose W rows are a sparse input's features (in-major fc, embedding) -> that input's name."""
    inputs = {i["name"]: i for i in plan["inputs"]}
    return {l["name"]: l["inputs"][0] for l in plan["layers"]
            if l["op"] in ("fc", "embedding") and reads_sparse_input(l, inputs)
            and (l["op"] == "embedding" or l.get("layout") == "in_major")}


def ownership(plan: dict, shapes: dict, world: int, feature_counts: dict | None = None, rows: int = 0,
              batch: int = 1) -> dict:
    """(layer, tensor) -> every owner's (lo, hi): balanced for the feature rows of layers reading a
    sparse input whose counts are given (input name -> counts over its features), equal otherwise."""
    counted = counted_inputs(plan)
    out = {}
    for key, shape in shapes.items():
        layer, tensor = key
        counts = (feature_counts or {}).get(counted.get(layer)) if tensor == "W" else None
        if counts is not None and counts.size == shape[0] and world > 1:
            out[key] = balanced_ranges(feature_cost(counts, rows, batch), world)
        else:
            out[key] = row_ranges(shape[0], world)
    return out


def rebalanced(bounds: list[tuple[int, int]], seconds: list[float], damping: float = 0.5) -> list[tuple[int, int]]:
    """Contiguous ranges that even out the owners' measured work: each owner's `seconds` taken as
    spread evenly over its current range, the cuts moved `damping` of the way towards the rows where
    the running work crosses each r/n of the total (damped: one window's timings are noisy). Every
    owner keeps at least one row."""
    n = len(bounds)
    cuts = [lo for lo, _ in bounds] + [bounds[-1][1]]
    if n <= 1 or cuts[-1] - cuts[0] < n:
        return list(bounds)
    work = np.maximum(np.asarray(seconds, np.float64), 1e-9)
    run = np.concatenate([[0.0], np.cumsum(work)])
    target = np.interp(run[-1] * np.arange(1, n) / n, run, np.asarray(cuts, np.float64))
    old = np.asarray(cuts[1:-1], np.float64)
    inner = np.rint(old + damping * (target - old)).astype(np.int64)
    for r in range(n - 1):                       # at least one row each, in order
        inner[r] = min(max(inner[r], cuts[0] + r + 1), cuts[-1] - (n - 1 - r))
        if r:
            inner[r] = max(inner[r], inner[r - 1] + 1)
    new = [cuts[0]] + inner.tolist() + [cuts[-1]]
    return [(int(new[r]), int(new[r + 1])) for r in range(n)]
