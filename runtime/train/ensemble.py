"""`ensemble N`: N networks of the same model, each trained from its own seed, outputs averaged.

Why: networks started from different random weights (and shuffled differently) err differently, and
the mean of their output probabilities ranks better than any one of them: the classic variance
reduction of bagging, which the tree tools get from several trees (Parabel, FastXML, Omikuji). It costs
N times the training and inference time, so it is a setting the user writes, not a default.

Decisions:
- Member i (0-based) is the model trained with train seed `seed + SEED_STRIDE * i`: member 0 is exactly
  the model without `ensemble`, and the members of seed s never coincide with those of seed s + 1 (so
  runs over seeds 0, 1, 2 stay independent).
- Every member trains on the same rows and is measured on the same validation rows (Model.fit carves
  the split once, from the train seed), each with its own early stopping; a `blend` is fitted once and
  added to the averaged output (runtime/train/blend.py reads it from member 0's state).
- Inference averages the output activation of every member (softmax probabilities, or sigmoids), the
  mean computed in a fixed order, so it is the same for any thread count wherever one member's output
  is. Under sparse inference a member's inactive neurons count 0, as in the blend.
- Labels never seen in training are masked as for one network (every member saw the same labels).
"""
from __future__ import annotations

import copy

import numpy as np

from boltc.runtime.data.dataset import Dataset
from boltc.runtime.exec.topk import add_output, mask_never_seen, top_k_of

SEED_STRIDE = 7919                 # a prime: member seeds of nearby train seeds do not collide
CHUNK_ENTRIES = 1 << 24            # rows x classes of one averaged score block (64 MB of float32)


def size(plan: dict) -> int:
    return int((plan.get("train") or {}).get("ensemble", 1) or 1)


def member_seed(seed: int, i: int) -> int:
    return int(seed) + SEED_STRIDE * int(i)


def member_plan(plan: dict, i: int) -> dict:
    """The plan member `i` trains with: the same, with its own seed."""
    p = copy.deepcopy(plan)
    p["train"]["seed"] = member_seed(plan["train"].get("seed", 0), i)
    return p


class EnsembleExecutor:
    """The inference half of the Executor protocol (runtime/exec/executor.py) over the members'
    executors: `forward` gives the averaged output, `predict` its top k."""

    def __init__(self, executors: list):
        self.members = list(executors)
        self.plan = self.members[0].plan
        self.state = self.members[0].state          # label counts and the blend's weights
        self.output = self.plan["output"]
        self.classes = next(int(l["dim"]) for l in self.plan["layers"] if l["name"] == self.output)

    def _mean_output(self, batch, mode: str) -> np.ndarray:
        """(B, classes) float32: the members' output activations, averaged."""
        total = np.zeros((int(batch.size), self.classes), np.float32)
        for ex in self.members:
            add_output(total, ex.forward(batch, mode=mode)[self.output])
        return total / np.float32(len(self.members))

    def _blocks(self, batch):
        """The batch in row blocks small enough for one (rows, classes) score matrix each."""
        n = int(batch.size)
        step = max(1, CHUNK_ENTRIES // max(self.classes, 1))
        if n <= step:
            yield batch
            return
        whole = Dataset(inputs=batch.inputs, labels=batch.labels)
        for s in range(0, n, step):
            yield whole.take(np.arange(s, min(s + step, n)))

    def forward(self, batch, mode: str = "dense", active: dict | None = None) -> dict:
        if mode == "train" or active is not None:
            raise ValueError("an ensemble is trained member by member (Model.fit), not through forward()")
        return {self.output: np.concatenate([self._mean_output(b, mode) for b in self._blocks(batch)])}

    def predict(self, batch, top_k: int, sparse: bool = False):
        counts = self.state.params.get(self.output, {}).get("label_count")
        ids, scores = [], []
        for b in self._blocks(batch):
            mean = mask_never_seen(self._mean_output(b, "sparse" if sparse else "dense"), counts)
            i, s = top_k_of(mean, top_k)
            ids.append(i)
            scores.append(s)
        return np.concatenate(ids), np.concatenate(scores)

    @property
    def upkeep_seconds(self) -> float:
        return float(sum(getattr(ex, "upkeep_seconds", 0.0) for ex in self.members))
