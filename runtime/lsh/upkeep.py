"""When to rebuild and rehash the LSH tables of sparse layers (the upkeep schedule).

BOLT's schedule (DESIGN.md section 3): new hash functions every `rehash_every` epoch (0.25), tables
refilled from the current weights every `rebuild_every` epoch (0.01 on 100k+ rows, else 0.05), nothing
after `freeze_after` epochs (1); from then on a training lookup that misses a label inserts it into the
probed buckets (done by `LSHIndex.select(insert_missed=True)`).

BOLT pays 42-47% of its training time for this on a 100k-label problem. Ours keeps upkeep under a
budget (default 6% of training time, margin under the 10% goal) with a *deterministic* cost model computed from the plan alone, so
runs and resumed runs stay reproducible (a schedule driven by measured time would differ between runs):
    rebuild cost  ~ dim * (GATHER_WEIGHT * n_hashes * width + SORT_WEIGHT * L)
    batch cost    ~ 3 * B * sum over fc layers of active * inputs   (fwd GEMM + 2 bwd GEMMs)
where `inputs` is in_dim, or ASSUMED_NNZ for a sparse input (XC rows hold tens of features). The
rebuild interval is stretched to at least rebuild_cost / (budget * batch_cost) batches; the rehash
interval is kept at least as long. The weights are set so the model over-estimates the measured
rebuild/step time ratio of the NumPy interpreter on bibtex (0.075 measured, 0.14 modelled) and
delicious (0.23 measured, 0.24 modelled) on this machine class: the budget errs on the safe side.
`seconds` holds the measured upkeep time for the report.
"""
from __future__ import annotations

import math
import time

import numpy as np

from boltc.runtime.exec.state import neuron_rows
from boltc.runtime.lsh.index import FILL_REFRESH, training_fill

DEFAULT_BUDGET = 0.06
GATHER_WEIGHT = 6.0
SORT_WEIGHT = 60.0
ASSUMED_NNZ = 64


class LSHUpkeep:
    def __init__(self, plan: dict, state, budget: float = DEFAULT_BUDGET, gather_weight: float = GATHER_WEIGHT,
                 sort_weight: float = SORT_WEIGHT):
        # a backend with faster hashing (native kernels) passes its own weights, measured the same way
        self.plan, self.state, self.budget = plan, state, budget
        self.gather_weight, self.sort_weight = gather_weight, sort_weight
        self.layers = [l for l in plan["layers"] if l.get("hash") and l["name"] in state.lsh]
        self.seconds = 0.0
        self.rebuilds = 0
        self.rehashes = 0
        self._fills: dict = {}
        self.label_frequency = None        # the training set's label counts, when the trainer knows them

    def set_label_frequency(self, counts) -> None:
        """Weight the training fill by the training set's label counts (the trainer passes them for an
        in-memory set) instead of the counts of the labels trained on so far. Measured on the SYNTHETIC
        100k problem, 1 epoch: P@1 dense / sparse 0.634 / 0.633 against 0.613 / 0.618 with running
        counts, which also start near uniform and, under the adaptive sampler, count its skewed draws."""
        self.label_frequency = None if counts is None else np.asarray(counts, dtype=np.float32)
        self._fills.clear()

    def fill(self, layer: dict):
        """The layer's training fill table (lsh.training_fill), cached between refreshes. It is rebuilt at
        the first step after every FILL_REFRESH-th batch of an epoch and at every epoch start, points
        that depend only on (epoch, batch), so a run resumed from an epoch checkpoint draws exactly as
        an uninterrupted one."""
        name = layer["name"]
        if name not in self._fills:
            running = self.state.params.get(name, {}).get("label_count")
            counts = self.label_frequency if self.label_frequency is not None and running is not None else running
            self._fills[name] = training_fill(layer, counts)
        return self._fills[name]

    # -------------------------------------------------------- cost model
    def _batch_cost(self) -> float:
        B = self.plan.get("train", {}).get("batch", 256)
        cost = 0.0
        for l in self.plan["layers"]:
            if l["op"] in ("fc", "embedding"):
                inputs = min(ASSUMED_NNZ, l["in_dim"]) if l.get("input_sparse") else l["in_dim"]
                cost += l.get("active", l["dim"]) * inputs
        return 3.0 * B * max(cost, 1.0)

    def _rebuild_cost(self, layer) -> float:
        idx = self.state.lsh[layer["name"]]
        return layer["dim"] * (self.gather_weight * idx.idx.size + self.sort_weight * idx.L)

    def intervals(self, layer: dict, batches_per_epoch: int) -> tuple[int, int]:
        """(rebuild, rehash) intervals in batches for `layer`."""
        h = layer["hash"]
        bolt_rebuild = max(1, round(h.get("rebuild_every", 0.05) * batches_per_epoch))
        bolt_rehash = max(1, round(h.get("rehash_every", 0.25) * batches_per_epoch))
        budget_rebuild = math.ceil(self._rebuild_cost(layer) / (self.budget * self._batch_cost()))
        rebuild = max(bolt_rebuild, budget_rebuild)
        return rebuild, max(bolt_rehash, rebuild)

    # -------------------------------------------------------- schedule
    def frozen(self, layer: dict, epoch: int) -> bool:
        return epoch >= layer["hash"].get("freeze_after", 1)

    def after_step(self, epoch: int, batch_index: int, batches_per_epoch: int) -> None:
        t0 = time.perf_counter()
        done = batch_index + 1                 # batches finished in this epoch
        if done % FILL_REFRESH == 0 or done >= batches_per_epoch:
            self._fills.clear()
        for layer in self.layers:
            idx = self.state.lsh[layer["name"]]
            if self.frozen(layer, epoch):
                idx.frozen = True
                continue
            if done == batches_per_epoch and self.frozen(layer, epoch + 1):
                # the next batch starts the frozen epochs: one last refill from the trained weights, so
                # the frozen tables (and sparse inference) never hold the random initial hashing, even
                # when the budget stretched the interval past the epoch (wide layers, slow hashing)
                idx.build(neuron_rows(layer, self.state.params[layer["name"]]["W"]))
                self.rebuilds += 1
                idx.frozen = True
                continue
            rebuild, rehash = self.intervals(layer, batches_per_epoch)
            if done % rehash == 0:
                idx.rehash(idx.seed + 1)
                self.rehashes += 1
            elif done % rebuild != 0:
                continue
            idx.build(neuron_rows(layer, self.state.params[layer["name"]]["W"]))
            self.rebuilds += 1
        self.seconds += time.perf_counter() - t0
