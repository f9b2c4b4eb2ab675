"""One data-parallel worker: a full model replica that trains on its own shard of the data.

Plain Python (no Ray here): `runtime/distributed/driver.py` runs it either in-process (tests, debugging) or as
a Ray actor. Every replica holds identical weights, optimizer state and LSH tables at the start of every
step, because every replica applies the same combined gradient with the same optimizer and rebuilds its
hash tables at the same global steps with the same seeds. That is what keeps active sets consistent
without shipping tables around.

A step is split in two so the driver can combine gradients in between:
    grads, n, loss_sum = worker.compute(step)      # forward + backward on the local batch, no update
    worker.apply(combined, lr)                     # identical optimizer update on every replica
The executor provides both halves when it has `gradients(batch, active)` / `apply_gradients(grads, lr)`;
otherwise `GradientProbe` recovers the gradient from the contract's `train_step` (see its docstring) and
runtime/exec/optim.py's lazy Adam / SGD is applied to the touched rows.

`label_count` (the output layer's count of how often each neuron was a label; not trained) is not a
gradient: workers send the label ids of their batch and every replica adds the whole global batch's.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import scipy.sparse as sp

from boltc.runtime.data.dataset import Batch, Dataset
from boltc.runtime.distributed.exchange import Key, RowGrad
from boltc.runtime.exec import optim
from boltc.runtime.exec.numpy_rules import NUMPY_RULES, ParamGrad
from boltc.runtime.lsh.index import LSHIndex, training_fill, training_reserve

NOT_TRAINED = ("label_count",)


def portable_state(state):
    """The state with LSH indexes rebuilt from their plain arrays (meta() + arrays()): an executor may
    attach native hash functions (ctypes) to an index, which can neither be pickled for Ray nor shared
    between replicas. Weights and moments are shared, not copied."""
    lsh = {n: LSHIndex.from_arrays(idx.meta(), {k: np.array(a) for k, a in idx.arrays().items()})
           for n, idx in (getattr(state, "lsh", {}) or {}).items()}
    return type(state)(params=state.params, m=state.m, v=state.v, step=int(state.step), lsh=lsh)


def missed_labels(index, x, labels) -> tuple[np.ndarray, np.ndarray]:
    """(label ids, their buckets (n, L)) of the labels that x's lookup did not retrieve: what
    `LSHIndex.select(insert_missed=True)` inserts, computed without inserting."""
    buckets = index.hash(x)
    cand = index.tables[np.arange(index.L)[None, :], buckets].reshape(buckets.shape[0], -1).astype(np.int64)
    lab = sp.csr_matrix(labels)
    lrows = np.repeat(np.arange(lab.shape[0], dtype=np.int64), np.diff(lab.indptr))
    lids = lab.indices.astype(np.int64)
    crow = np.repeat(np.arange(cand.shape[0], dtype=np.int64), cand.shape[1])
    ok = cand.ravel() >= 0
    missed = ~np.isin(lrows * index.dim + lids, crow[ok] * index.dim + cand.ravel()[ok])
    return lids[missed].astype(np.int32), np.ascontiguousarray(buckets[lrows[missed]])


def merge_facts(parts: list[dict]) -> dict:
    """Every worker's batch facts, concatenated in worker order."""
    inserts: dict = {}
    for p in parts:
        for name, (ids, b) in p.get("inserts", {}).items():
            inserts.setdefault(name, []).append((ids, b))
    return {"labels": np.concatenate([p["labels"] for p in parts]) if parts else np.zeros(0, np.int32),
            "inserts": {n: (np.concatenate([i for i, _ in v]), np.concatenate([b for _, b in v])) for n, v in inserts.items()}}


def facts_nbytes(facts: dict) -> int:
    return int(facts["labels"].nbytes + sum(i.nbytes + b.nbytes for i, b in facts.get("inserts", {}).values()))


PROBE_LR = float(2 ** 16)


def param_shapes(state) -> dict[Key, tuple[int, ...]]:
    return {(layer, name): arr.shape for layer, ts in state.params.items() for name, arr in ts.items()
            if name not in NOT_TRAINED}


def to_param_grads(grads: dict[Key, RowGrad]) -> dict:
    """RowGrads -> the optimizer's `{layer: {tensor: ParamGrad(rows, None, values)}}`."""
    out: dict = {}
    for (layer, name), g in grads.items():
        out.setdefault(layer, {})[name] = ParamGrad(g.rows, None, g.values)
    return out


def to_rowgrads(grads, shapes: dict[Key, tuple[int, ...]]) -> dict[Key, RowGrad]:
    """Normalise an executor's gradient dict ({layer: {tensor: ParamGrad | ndarray | RowGrad}}) to RowGrads.

    A ParamGrad block with a column subset (rows x cols) is widened to full rows: merging blocks whose
    column sets differ between workers is not worth the bookkeeping, and full rows are what lazy Adam
    updates anyway.
    """
    out: dict[Key, RowGrad] = {}
    for layer, ts in grads.items():
        for name, g in ts.items():
            shape = shapes[(layer, name)]
            if isinstance(g, RowGrad):
                out[(layer, name)] = g
            elif isinstance(g, np.ndarray):
                out[(layer, name)] = RowGrad(None, np.ascontiguousarray(g, np.float32))
            else:                                       # ParamGrad(rows, cols, value)
                rows, cols, val = g.rows, getattr(g, "cols", None), np.asarray(g.value, np.float32)
                if cols is not None:
                    width = shape[1]
                    full = np.zeros((val.shape[0], width), np.float32)
                    full[:, cols] = val
                    val = full
                if rows is None:
                    out[(layer, name)] = RowGrad(None, np.ascontiguousarray(val.reshape(shape)))
                else:
                    out[(layer, name)] = RowGrad(np.asarray(rows, np.int32), np.ascontiguousarray(val))
    return out


class GradientProbe:
    """The gradient of one batch from an executor that only has the contract's `train_step`.

    A second executor shares nothing with the real one: it runs on a scratch copy of the touched rows
    with plain SGD at lr = 2**16 and momentum 0, so `(W_before - W_after) / 2**16` is the gradient. The
    large power-of-two step makes the update dominate W, so rounding costs about one float32 ulp of the
    gradient itself (at lr = 1 a gradient below ulp(W) ~ 1e-9 would vanish, and Adam, which normalises
    by |g|, would turn that rounding into a visible weight change). Touched rows are known without scanning: the batch's
    feature ids for an `in_major` layer over a sparse input, the active ids for a sparse `out_major`
    layer (chosen here with `state.lsh` and passed as `active=`, so the same sets are used), all rows
    otherwise. Costs one extra forward pass per step; executors with `gradients()` skip all of this.
    """

    def __init__(self, plan: dict, state, make_executor):
        self.plan = plan
        sgd = copy.deepcopy(plan)
        sgd["train"] = {**sgd["train"], "optimizer": "sgd", "momentum": 0.0}
        # scratch replica: weights and zero moments (the native backend's fused kernels take moment
        # pointers even for plain SGD); no LSH tables, since active sets always come from outside
        params = copy.deepcopy(state.params)
        zeros = {n: {k: np.zeros_like(a) for k, a in p.items()} for n, p in params.items()}
        self.state = type(state)(params=params, m=zeros, v=copy.deepcopy(zeros), step=state.step, lsh={})
        self.ex = make_executor(sgd, self.state)
        self.shapes = param_shapes(state)
        self.layers = {l["name"]: l for l in plan["layers"]}

    def touched(self, batch: Batch, active: dict) -> dict[Key, np.ndarray | None]:
        rows: dict[Key, np.ndarray | None] = {}
        for (layer, name), shape in self.shapes.items():      # label_count is left out of shapes
            spec = self.layers[layer]
            r = None
            if spec.get("op") in ("fc", "embedding") and spec.get("layout") == "in_major" and spec.get("input_sparse") \
                    and name == "W":
                x = batch.inputs[spec["inputs"][0]]
                r = np.unique(x.indices).astype(np.int32)
            elif spec.get("op") == "fc" and spec.get("hash") and layer in active and len(shape) >= 1 \
                    and (name == "b" or spec.get("layout") == "out_major"):
                r = np.unique(active[layer]).astype(np.int32)
            rows[(layer, name)] = r
        return rows

    def gradients(self, state, batch: Batch, active: dict):
        touched = self.touched(batch, active)
        for (layer, name), r in touched.items():        # bring the scratch replica to the live weights
            src, dst = state.params[layer][name], self.state.params[layer][name]
            if r is None:
                dst[...] = src
            else:
                dst[r] = src[r]
        before = {k: (self.state.params[k[0]][k[1]].copy() if r is None else self.state.params[k[0]][k[1]][r].copy())
                  for k, r in touched.items()}
        self.state.step = state.step
        losses = self.ex.train_step(batch, PROBE_LR, active=active or None)
        out = {}
        for k, r in touched.items():
            after = self.state.params[k[0]][k[1]] if r is None else self.state.params[k[0]][k[1]][r]
            out[k] = RowGrad(r, ((before[k] - after) * np.float32(1.0 / PROBE_LR)).astype(np.float32))
        return np.asarray(losses, np.float32), out


class Worker:
    """A replica + a shard. `make_executor(plan, state)` builds the single-machine executor."""

    def __init__(self, plan: dict, state, shard: Dataset, rank: int, world: int, local_batch: int,
                 make_executor, seed: int = 0):
        self.plan, self.state, self.data = plan, state, shard
        self.rank, self.world, self.local_batch = rank, world, int(local_batch)
        self.ex = make_executor(plan, state)
        self.shapes = param_shapes(state)
        self.native_grads = hasattr(self.ex, "gradients") and hasattr(self.ex, "apply_gradients")
        self.probe = None if self.native_grads else GradientProbe(plan, state, make_executor)
        self.seed = seed
        self.optimizer = optim.make_optimizer(plan["train"])
        self.output = next((l for l in plan["layers"] if l["name"] == plan.get("output")), None)
        self.pending_inserts: dict = {}
        self.start_epoch(0)
        self.last_rows = np.zeros(0, np.int64)
        self.last_active: dict = {}
        self.compute_seconds = self.apply_seconds = self.upkeep_seconds = 0.0

    # ------------------------------------------------------------------ data
    def start_epoch(self, epoch: int) -> None:
        """Reseed from (seed, rank, epoch) so a run resumed at an epoch boundary replays the same batches."""
        self.epoch = int(epoch)
        self.rng = np.random.default_rng([self.seed, 7919, self.rank, self.epoch])
        self._order, self._pos, self._local_epoch = np.zeros(0, np.int64), 0, -1

    def _next_rows(self) -> np.ndarray:
        """The next `local_batch` rows of a shuffled pass over the shard (passes run back to back)."""
        take = []
        need = self.local_batch
        while need > 0:
            if self._pos >= self._order.size:
                self._local_epoch += 1
                order_rng = np.random.default_rng([self.seed, 104729, self.rank, self.epoch, self._local_epoch])
                self._order, self._pos = order_rng.permutation(self.data.rows).astype(np.int64), 0
                if self._order.size == 0:
                    break
            chunk = self._order[self._pos:self._pos + need]
            self._pos += chunk.size
            need -= chunk.size
            take.append(chunk)
        return np.concatenate(take) if take else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ one step
    def select_active(self, batch: Batch) -> dict:
        """Active sets of every LSH-sparse layer, chosen here so the probe can name the touched rows.

        Layers before the last sparse one are evaluated with the NumPy rules (the executable spec), which
        skips the output layer's forward that a full `executor.forward` would waste.
        """
        lsh = getattr(self.state, "lsh", {}) or {}
        hashed = [l["name"] for l in self.plan["layers"] if l.get("hash") and l["name"] in lsh]
        active, values = {}, dict(batch.inputs)
        for layer in self.plan["layers"]:
            if not hashed:
                break
            name = layer["name"]
            ins = [values[n] for n in layer["inputs"]]
            if name in hashed:
                labels = batch.labels if name == self.plan.get("output") else None
                # as the single-machine executor selects in training (random-fill reserve); missed labels
                # of frozen tables are collected here and inserted by every replica (see apply)
                reserve = training_reserve(layer) if labels is not None else 0
                index = lsh[name]
                fill = (training_fill(layer, self.state.params.get(name, {}).get("label_count"))
                        if labels is not None else None)
                active[name] = index.select(ins[0], labels, int(layer["active"]), self.rng, reserve=reserve,
                                            fill=fill)
                if labels is not None and getattr(index, "frozen", False):
                    self.pending_inserts[name] = missed_labels(index, ins[0], labels)
                hashed.remove(name)
            if hashed:
                values[name], _ = NUMPY_RULES[layer["op"]].forward(layer, self.state.params.get(name, {}), ins,
                                                                  active.get(name), False)
        return active

    def compute(self, step: int, record: bool = False):
        """Forward + backward on the next local batch: (row-sparse grads, examples, loss sum[, rows, active])."""
        t0 = time.perf_counter()
        rows = self._next_rows()
        batch = self.data.take(rows)
        active = self.select_active(batch)          # chosen here in every path: identical rules everywhere
        if self.native_grads:
            losses, grads = self.ex.gradients(batch, active=active or None)
            grads = to_rowgrads(grads, self.shapes)
        else:
            losses, grads = self.probe.gradients(self.state, batch, active)
        grads = {k: g for k, g in grads.items() if k[1] not in NOT_TRAINED}
        self.last_rows, self.last_active = rows, active
        self.compute_seconds += time.perf_counter() - t0
        out = (grads, int(rows.size), float(np.sum(losses)), self.batch_facts(batch))
        return out + ((rows, active) if record else ())

    def batch_facts(self, batch: Batch) -> dict:
        """What every replica needs from this batch besides the gradient: label ids (for label_count) and
        the labels frozen LSH tables missed (for BOLT's insertion), gathered since the last call."""
        labels = np.zeros(0, np.int32)
        if self.output is not None and "label_count" in self.state.params.get(self.output["name"], {}):
            labels = batch.labels.indices.astype(np.int32)
        facts, self.pending_inserts = {"labels": labels, "inserts": self.pending_inserts}, {}
        return facts

    def apply(self, grads: dict[Key, RowGrad], lr: float, facts: dict | None = None) -> None:
        """The same update on every replica: optimizer on the combined gradient, then the global batch's
        label counts and missed-label insertions (with a generator seeded by the step: same on all)."""
        t0 = time.perf_counter()
        if self.native_grads:
            self.ex.apply_gradients(to_param_grads(grads), lr)
        else:
            self.state.step += 1                 # optim's Adam expects the step to count this update
            self.optimizer.apply(self.state, to_param_grads(grads), lr)
        facts = facts or {}
        labels = facts.get("labels")
        if labels is not None and labels.size:
            np.add.at(self.state.params[self.output["name"]]["label_count"], labels, 1.0)
        for name, (ids, buckets) in sorted((facts.get("inserts") or {}).items()):
            if ids.size:
                self.state.lsh[name].insert(ids, buckets, np.random.default_rng([self.seed, int(self.state.step), 0x1D5]))
        self.apply_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ hash tables
    def after_update(self, epoch: int, index: int, updates_per_epoch: int) -> None:
        """The single-machine trainer's LSH upkeep (executor.after_step), counted in global updates: every
        replica rebuilds the same weights with the same seeds at the same step, so tables stay equal.

        Once tables freeze, BOLT inserts the labels a lookup missed into the probed buckets. A replica
        inserting only its own batch's labels would drift from the others, so workers report their
        missed labels (`batch_facts`) and every replica inserts the whole global batch's, in worker order
        with a step-seeded generator, after the update: tables stay identical.
        """
        t0 = time.perf_counter()
        if hasattr(self.ex, "after_step"):
            self.ex.after_step(epoch, index, updates_per_epoch)
        self.upkeep_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ state
    def get_state(self):
        return portable_state(self.state)

    def ping(self) -> int:
        return self.rank

    def timings(self) -> dict:
        """Seconds this worker spent on gradients, on optimizer updates and on LSH upkeep."""
        return {"gradient": self.compute_seconds, "update": self.apply_seconds, "upkeep": self.upkeep_seconds}
