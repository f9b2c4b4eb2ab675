"""Early stopping with the best epoch restored (issue 15): `epochs auto` or `patience N`.

After each epoch the trainer hands the validation record to `EarlyStopping.update`; it keeps a copy of
the weights (and LSH tables) of the best epoch so far, says when `patience` epochs have passed without a
better validation metric, and `restore` writes the best copy back into the live state at the end.

Decisions:
- The metric watched is the model's first metric (`metrics precision@1, ...` -> precision@1; the
  default list starts with precision@1; binary targets: accuracy), on dense inference when the trainer
  measures it, else on sparse inference. Every metric boltc reports is better when higher.
- With `blend ridge(weight > 0)` it watches the network's own ranking (the record's
  "validation_network"), not the blend's. Why: the blend's scores are the network's output plus a ridge
  regression fitted once before training, so the blended metric starts near the ridge's and, where the
  ridge's scores outweigh the network's (softmax probabilities of ~1/|labels| against ridge scores near
  0/1), moves little from epoch to epoch: patience ran out at epoch 1-2, before the network had learnt.
  Measured on delicious (3 folds of 10% of the training rows; epochs chosen on one half of each fold's
  validation rows, the blend scored on the other half), choosing the epoch by the network's metric
  ranked the blend as well or better in 7 of 12 runs x weights, by 0.15 points on average (docs/results.md,
  "One-vs-rest loss on multi-label data"): no worse, and without the stall. The model's validation value at the kept epoch (what `boltc tune` scores)
  stays the blended one: `summary()["validation_at_best"]`.
- Training never stops before MIN_EPOCHS epochs (or the cap, if lower). Why: a network can sit on a
  plateau at first (delicious with two hidden layers of 1,024: validation P@1 42.0, 42.0, 48.1, ... up
  to 71.7 at epoch 13; 42.0 is the most frequent label ranked first for every row), and with patience 2
  a flat start of three epochs would end it. The cost is at most MIN_EPOCHS - patience - 1 epochs of a
  run whose best epoch is the first; on the delicious curves measured it changed no kept epoch.
- Only a strictly higher value counts as better, so on a plateau the earliest epoch is kept.
- The copy reuses its arrays from one best epoch to the next (no fresh allocation per epoch), and it
  is restored in place (np.copyto into the same arrays, same LSH index objects), because a
  native executor holds pointers to those arrays.
- A checkpoint carries the best copy (`state_dict`), so a resumed run stops and restores exactly as
  an uninterrupted one.
"""
from __future__ import annotations

import numpy as np

from boltc.errors import BoltValidationError


MIN_EPOCHS = 5


def watched_metric(names) -> str:
    return str(list(names)[0])


class EarlyStopping:
    def __init__(self, patience: int, metric: str):
        self.patience, self.metric = int(patience), metric
        self.best: float | None = None
        self.best_epoch = 0
        self.model_best: float | None = None        # the model's (blended) value at best_epoch
        self.snapshot: dict | None = None

    def score(self, record: dict, watched: bool = True) -> float:
        """The watched value of an epoch (the network's own when it blends), or with watched=False the
        model's (blended) one."""
        val = ((record.get("validation_network") if watched else None) or record.get("validation")
               or record.get("validation_sparse"))
        if not val or self.metric not in val:
            raise BoltValidationError(f"early stopping watches validation {self.metric}, which this epoch did not "
                                      "measure: give validation data, or a holdout share > 0")
        return float(val[self.metric])

    def update(self, record: dict, state) -> bool:
        """Take epoch `record` (already carrying its validation metrics); True when training should stop."""
        s = self.score(record)
        if self.best is None or s > self.best:
            self.best, self.best_epoch = s, int(record["epoch"])
            self.model_best = self.score(record, watched=False)
            self.snapshot = _copy_state(state, into=self.snapshot)
        return self.done(int(record["epoch"]))

    def done(self, epochs: int) -> bool:
        """After `epochs` epochs: has the watched value not improved for `patience` epochs (and at least
        MIN_EPOCHS trained)?"""
        return bool(self.best_epoch) and epochs - self.best_epoch >= self.patience and epochs >= MIN_EPOCHS

    def restore(self, state) -> None:
        if self.snapshot is not None:
            _write_back(self.snapshot, state)

    def summary(self, epochs_trained: int, stopped: bool) -> dict:
        return {"metric": self.metric, "patience": self.patience, "best_epoch": self.best_epoch,
                "best": self.best, "validation_at_best": self.model_best,
                "epochs_trained": int(epochs_trained), "stopped_early": bool(stopped)}

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"metric": self.metric, "patience": self.patience, "best": self.best,
                "best_epoch": self.best_epoch, "model_best": self.model_best, "snapshot": self.snapshot}

    def load_state_dict(self, d: dict) -> None:
        self.best = None if d.get("best") is None else float(d["best"])
        self.best_epoch = int(d.get("best_epoch", 0))
        self.model_best = None if d.get("model_best") is None else float(d["model_best"])
        self.snapshot = d.get("snapshot")


def _copy_state(state, into: dict | None = None) -> dict:
    """A copy of the weights and hash tables, written into `into`'s arrays when their shapes match.
    Why reuse: a fresh copy of a 262,144 x 128 text layer per improving epoch page-faulted 134 MB each
    time, which took longer than that epoch's training steps on a loaded machine."""
    def copy(a, old):
        if old is not None and old.shape == a.shape and old.dtype == a.dtype and old.flags.writeable:
            np.copyto(old, a)
            return old
        return np.array(a, copy=True)
    old_p = (into or {}).get("params", {})
    old_l = (into or {}).get("lsh", {})
    return {"params": {n: {k: copy(a, old_p.get(n, {}).get(k)) for k, a in p.items()}
                       for n, p in state.params.items()},
            "lsh": {n: {"meta": idx.meta(),
                        "arrays": {k: copy(a, old_l.get(n, {}).get("arrays", {}).get(k))
                                   for k, a in idx.arrays().items()}}
                    for n, idx in state.lsh.items()}}


def _write_back(snap: dict, state) -> None:
    for n, p in snap["params"].items():
        for k, a in p.items():
            np.copyto(state.params[n][k], a)
    for n, st in snap.get("lsh", {}).items():
        idx = state.lsh[n]
        for k, a in st["arrays"].items():
            cur = getattr(idx, k)
            if cur.shape == a.shape:
                np.copyto(cur, a)
            else:                       # e.g. an SRP index's empty probe: nothing shares it
                setattr(idx, k, np.array(a, copy=True))
        meta = st["meta"]
        idx.seed, idx.builds, idx.frozen = int(meta["seed"]), int(meta["builds"]), bool(meta["frozen"])
