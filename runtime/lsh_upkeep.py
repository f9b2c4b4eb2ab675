"""When to rebuild and rehash the LSH tables of sparse layers (the upkeep schedule).

BOLT's schedule (DESIGN.md section 3): new hash functions every `rehash_every` epoch (0.25), tables
refilled from the current weights every `rebuild_every` epoch (0.01 on 100k+ rows, else 0.05), nothing
after `freeze_after` epochs (1); from then on a training lookup that misses a label inserts it into the
probed buckets (done by `LSHIndex.select(insert_missed=True)`).

BOLT pays 42-47% of its training time for this on a 100k-label problem. Ours keeps upkeep under a
budget (default 8% of training time) with a *deterministic* cost model, so runs stay reproducible
(a schedule driven by measured time would differ from run to run):
    rebuild cost  ~ dim * (n_hashes * width) gathered values + dim * L sort keys
    batch cost    ~ B * sum over layers of (active * in_dim) multiply-adds, times 3 (fwd + 2 bwd GEMMs)
and the rebuild interval is stretched to at least  rebuild_cost / (budget * batch_cost)  batches, with
the units weighted by constants measured for the NumPy interpreter on this machine class (a gathered
value costs about 4 multiply-adds of GEMM time, a sort key about 40). The rehash interval is kept at
least as long as the rebuild interval. `seconds` holds the measured upkeep time for the report.
"""
from __future__ import annotations

import math
import time

GATHER_WEIGHT = 4.0
SORT_WEIGHT = 40.0


class LSHUpkeep:
    def __init__(self, plan: dict, state, budget: float = 0.08):
        self.plan, self.state, self.budget = plan, state, budget
        self.layers = [l for l in plan["layers"] if l.get("hash") and l["name"] in state.lsh]
        self.seconds = 0.0
        self.rebuilds = 0
        self.rehashes = 0

    # -------------------------------------------------------- cost model
    def _batch_cost(self) -> float:
        B = self.plan.get("train", {}).get("batch", 256)
        cost = 0.0
        for l in self.plan["layers"]:
            if l["op"] in ("fc", "embedding"):
                cost += l.get("active", l["dim"]) * l.get("in_dim", 1)
        return 3.0 * B * max(cost, 1.0)

    def _rebuild_cost(self, layer) -> float:
        idx = self.state.lsh[layer["name"]]
        return layer["dim"] * (GATHER_WEIGHT * idx.idx.size + SORT_WEIGHT * idx.L)

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
        for layer in self.layers:
            idx = self.state.lsh[layer["name"]]
            if self.frozen(layer, epoch):
                idx.frozen = True
                continue
            if done == batches_per_epoch and self.frozen(layer, epoch + 1):
                idx.frozen = True              # the next batch starts the frozen epochs: keep the tables
                continue
            rebuild, rehash = self.intervals(layer, batches_per_epoch)
            if done % rehash == 0:
                idx.rehash(idx.seed + 1)
                self.rehashes += 1
            elif done % rebuild != 0:
                continue
            from boltc.runtime.state import neuron_rows
            idx.build(neuron_rows(layer, self.state.params[layer["name"]]["W"]))
            self.rebuilds += 1
        self.seconds += time.perf_counter() - t0
