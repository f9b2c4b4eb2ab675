"""NumpyExecutor: the executable specification of a plan (CONTRACTS.md section 6).

It walks `plan["layers"]` in order applying `NUMPY_RULES[op]`, then the loss rule, then the rules'
backward passes in reverse, and hands the touched gradient blocks to the optimizer (lazy Adam / SGD).

Randomness is integers only and seeded: the active sets of a training step come from a generator seeded
by (train seed, state.step), so a run resumed from a checkpoint draws exactly what the uninterrupted run
drew; sparse inference uses a fixed generator, so the same batch always gets the same prediction.

Dense inference after sparse training (BOLT's collapse, PEERS.md: P@1 0.06 dense vs 0.32 sparse): with
softmax over the active set only, a neuron that is never a training label is never pushed *up*, and one
that is rarely drawn as a negative is never pushed *down* either; it keeps its random weights and its
score has no common scale with the trained ones, so in a dense argmax over 100k neurons such neurons win.
Decision: the output layer counts how often each neuron was a training label (`label_count`), and both
dense and sparse inference exclude neurons with a zero count (score -inf), once any label was counted.
A neuron that was never a label cannot be a correct prediction learnt from the data, so this loses no
precision, and it makes dense and sparse inference rank the same candidates. It costs no training time.
The second half of the fix is in training: a quarter of each output active set is kept for uniform
random negatives (`lsh.training_reserve`). With buckets alone deciding the negatives, frequent labels
that unrelated inputs' buckets rarely hold are never pushed down for those inputs and win a dense
argmax (delicious, 3 epochs: dense P@1 0.56 vs sparse 0.63 without the reserve; 0.62 vs 0.61 with it).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltValidationError
from boltc.ops.base import SPARSE_INFERENCE_SEED, RunContext, step_seed
from boltc.runtime.exec.numpy_rules import LOSS_RULES, NUMPY_RULES, loss_options
from boltc.runtime.exec.optim import make_optimizer
from boltc.runtime.exec.topk import mask_never_seen, top_k_of
from boltc.runtime.exec.gradients import RowGrad, sum_of_parts, to_param_grads, to_rowgrads
from boltc.runtime.lsh.index import missed_labels, training_reserve
from boltc.runtime.lsh.upkeep import DEFAULT_BUDGET, LSHUpkeep
from boltc.runtime.lsh.prior import candidate_counts, fill_with_frequent, frequency_order

_SPARSE_INFERENCE_SEED = SPARSE_INFERENCE_SEED


class NumpyExecutor:
    def __init__(self, plan: dict, state, threads: int = 0):
        self.plan, self.state, self.threads = plan, state, threads
        self.layers = plan["layers"]
        self.by_name = {l["name"]: l for l in self.layers}
        self.output = plan["output"]
        self.loss_kind = plan.get("loss", "cross_entropy")
        if self.output not in self.by_name:
            raise BoltValidationError(f"the plan's output {self.output!r} is not a layer")
        if self.loss_kind not in LOSS_RULES:
            raise BoltValidationError(f"unknown loss {self.loss_kind!r}")
        for l in self.layers:
            if l["op"] not in NUMPY_RULES:
                raise BoltValidationError(f"layer {l['name']!r}: op {l['op']!r} has no NumPy rule")
        train = plan.get("train", {})
        self.seed = int(train.get("seed", 0))
        self.stream = 0            # mixed into the training draws' seed when nonzero (a worker's rank)
        self.missed = None         # a dict: frozen tables' missed labels are collected, not inserted
        self.optimizer = make_optimizer(train)
        # train.upkeep_budget: the share of step work LSH table upkeep may take (default 0.06)
        self.upkeep = LSHUpkeep(plan, state, budget=float(train.get("upkeep_budget", DEFAULT_BUDGET)))

    @property
    def upkeep_seconds(self) -> float:
        return self.upkeep.seconds

    # ------------------------------------------------------------ forward
    def context(self, mode: str) -> RunContext:
        """The rules' context of a call made now (the same seed the native executor uses)."""
        return RunContext(mode, step_seed(self.seed, self.state.step, mode), int(self.state.step))

    def _run(self, batch, mode: str, active: dict | None, rng, insert_missed: bool = False, ctx=None):
        if mode not in ("train", "dense", "sparse"):
            raise ValueError(f"mode must be 'train', 'dense' or 'sparse', not {mode!r}")
        values = dict(batch.inputs)
        missing = [i["name"] for i in self.plan.get("inputs", []) if i["name"] not in values]
        if missing:
            raise BoltValidationError(f"the batch has no values for input(s) {', '.join(missing)}")
        caches = {}
        ctx = ctx or self.context(mode)
        for layer in self.layers:
            name = layer["name"]
            ins = [values[n] for n in layer["inputs"]]
            ids = None
            if active and name in active:
                ids = np.asarray(active[name], dtype=np.int32)
            elif layer.get("hash") and mode != "dense" and name in self.state.lsh:
                is_out = name == self.output
                labels = batch.labels if (mode == "train" and is_out) else None
                index = self.state.lsh[name]
                train = labels is not None
                ids = index.select(ins[0], labels, layer["active"], rng,
                                   insert_missed=insert_missed and is_out and index.frozen,
                                   reserve=training_reserve(layer) if train else 0,
                                   fill=self.upkeep.fill(layer) if train else None)
                if mode == "sparse" and is_out:
                    ids = self.inference_fill(layer, index, index.hash(ins[0]), ids)
            rule = NUMPY_RULES[layer["op"]]
            values[name], caches[name] = rule.forward(layer, self.state.params.get(name, {}), ins, ids,
                                                      name == self.output, ctx)
        return values, caches

    def inference_fill(self, layer, index, buckets, ids):
        """Sparse inference of the output: with the plan's `"frequent_fill": true` the slots past the
        bucket candidates hold the most frequent training labels (runtime/lsh/prior.py); otherwise, and
        when no label was counted yet, BOLT's random fill as selected."""
        if not layer.get("hash", {}).get("frequent_fill", False):
            return ids
        order = self._frequency_order(layer["name"])
        if order is None:
            return ids
        return fill_with_frequent(ids, candidate_counts(index.tables, buckets, ids.shape[1]), order)

    def _frequency_order(self, name):
        """frequency_order of the layer's label counts, cached until the next training step."""
        key = (name, int(self.state.step))
        cached = getattr(self, "_order_cache", None)
        if cached is None or cached[0] != key:
            cached = self._order_cache = (key, frequency_order(self.state.params.get(name, {}).get("label_count")))
        return cached[1]

    def forward(self, batch, mode: str = "dense", active: dict | None = None) -> dict:
        rng = np.random.default_rng([self.seed, self.state.step, 0xF0])
        if mode == "sparse":
            rng = np.random.default_rng([self.seed, _SPARSE_INFERENCE_SEED])
        return self._run(batch, mode, active, rng)[0]

    # ------------------------------------------------------------ training
    def train_step(self, batch, lr: float, active: dict | None = None) -> np.ndarray:
        loss, grads = self._gradients(batch, active, None, insert_missed=True)
        self.state.step += 1
        self.optimizer.apply(self.state, grads, lr)
        counts = self.state.params.get(self.output, {}).get("label_count")
        if counts is not None:
            lab = sp.csr_matrix(batch.labels)
            counts += np.bincount(lab.indices, minlength=counts.size).astype(np.float32)
        return loss

    # ------------------------------------------------------------ split training (data-parallel workers)
    def gradients(self, batch, active: dict | None = None, batch_size: int | None = None):
        """(per-example loss, {(layer, tensor): RowGrad}) without touching the state; the loss gradient
        is divided by `batch_size` (default the batch's rows). Frozen tables' missed labels go to
        `self.missed` when it is a dict, else are inserted as train_step does (the native executor's
        contract, runtime/exec/native.py)."""
        missed = getattr(self, "missed", None)
        loss, grads = self._gradients(batch, active, batch_size, insert_missed=missed is None)
        shapes = {(l, t): self.state.params[l][t].shape for l, ts in grads.items() for t in ts}
        return loss, to_rowgrads(grads, shapes)

    def apply_gradients(self, grads: dict, lr: float, target=None) -> None:
        """The optimizer on `grads` ((layer, tensor) -> RowGrad); state.step advances. `target` (.params,
        .m, .v; default the state) holds the arrays the rows index (a worker's row-range views)."""
        self.state.step += 1
        target = target or self.state
        view = SimpleNamespace(params=target.params, m=target.m, v=target.v, step=self.state.step)
        self.optimizer.apply(view, to_param_grads(grads), lr)

    def apply_parts(self, parts: dict, lr: float, target=None, copy_out: bool = False) -> dict:
        """As the native executor's: parts[key] = (rows or None, pos, values) summed in part order, one
        optimizer step; with copy_out, key -> the updated rows."""
        grads = {key: RowGrad(rows, sum_of_parts(rows, pos, vals)) for key, (rows, pos, vals) in parts.items()}
        self.apply_gradients(grads, lr, target)
        target = target or self.state
        if not copy_out:
            return {key: None for key in parts}
        return {(l, t): np.array(target.params[l][t] if g.rows is None else target.params[l][t][g.rows])
                for (l, t), g in grads.items()}

    def _gradients(self, batch, active, batch_size, insert_missed: bool):
        if batch.labels is None:
            raise BoltValidationError("training needs labels")
        rng = np.random.default_rng([self.seed, self.state.step] + ([self.stream] if self.stream else []))
        ctx = self.context("train")
        values, caches = self._run(batch, "train", active, rng, insert_missed=insert_missed, ctx=ctx)
        self.last_active = {n: c["active"] for n, c in caches.items() if isinstance(c, dict) and c.get("active") is not None}
        out_layer = self.by_name[self.output]
        missed = getattr(self, "missed", None)
        index = self.state.lsh.get(self.output)
        if missed is not None and index is not None and index.frozen and not (active and self.output in active):
            missed[self.output] = missed_labels(index, values[out_layer["inputs"][0]], batch.labels)
        oc = caches[self.output]
        loss, dz = LOSS_RULES[self.loss_kind](oc["z"], oc.get("active"), batch.labels, out_layer["dim"],
                                              **loss_options(self.plan))
        B = dz.shape[0]
        w = np.ones(B, dtype=dz.dtype) if batch.weights is None else np.asarray(batch.weights, dz.dtype)
        dz = dz * (w / (batch_size or B))[:, None]
        grads, value_grads = {}, {self.output: dz}
        for layer in reversed(self.layers):
            name = layer["name"]
            g = value_grads.pop(name, None)
            if g is None:
                continue                               # no path from this layer to the loss
            in_grads, pgrads = NUMPY_RULES[layer["op"]].backward(
                layer, self.state.params.get(name, {}), caches[name], g, (name == self.output), ctx)
            if pgrads:
                grads[name] = pgrads
            for src, dg in zip(layer["inputs"], in_grads):
                if dg is not None and src in self.by_name:
                    value_grads[src] = dg if src not in value_grads else value_grads[src] + dg
        return loss.astype(np.float32), grads

    def after_step(self, epoch: int, batch_index: int, batches_per_epoch: int) -> None:
        self.upkeep.after_step(epoch, batch_index, batches_per_epoch)

    # ------------------------------------------------------------ inference
    def _mask_unseen(self, ids: np.ndarray | None, scores: np.ndarray) -> np.ndarray:
        """-inf for neurons never seen as a training label (see the module docstring)."""
        return mask_never_seen(scores, self.state.params.get(self.output, {}).get("label_count"), ids)

    def predict(self, batch, top_k: int, sparse: bool = False):
        out = self.forward(batch, mode="sparse" if sparse else "dense")[self.output]
        if isinstance(out, tuple):
            ids, scores = out
        else:
            ids, scores = None, out
        scores = self._mask_unseen(ids, scores)
        pos, top = top_k_of(scores, top_k)             # positions in `scores` (-1 past its columns)
        if ids is not None:
            pos = np.where(pos >= 0, np.take_along_axis(ids, np.maximum(pos, 0), axis=1), -1).astype(np.int32)
        return pos, top
