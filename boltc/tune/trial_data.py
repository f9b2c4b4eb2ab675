"""The training and validation rows each trial of `boltc tune` trains and is scored on: the split (or
folds of a small set), cached per featurisation, and a row rung's samples of them."""
from __future__ import annotations

import json

import numpy as np

from boltc.errors import DataError
from boltc.runtime.data.holdout import split, subset

ROW_STREAM = 0x5A3C        # the rung samples' own random stream (independent of the holdout's)
# Small training sets: a trial is scored on FOLDS disjoint held-out shares (holdout.py folds), each trained
# from scratch on the rest, and its value is their mean. Why: bibtex's 10% is 488 rows, where P@1 has a
# standard error of about 2 points, so one split ranks trials mostly by chance (in one 6-minute search
# on it, 9 of 16 finished trials tied at 65.16). Three folds cut that by sqrt(3) for 3x the training,
# affordable where an epoch takes a second. Pruning watches fold 1's curve; the epoch count is the
# median of the folds' best epochs. Above SMALL_ROWS the 10% share holds 1,000 rows or more (standard
# error of P@1 at most about 1.5 points) and three times fewer trials would cost more than the noise.
FOLDS = 3
SMALL_ROWS = 10_000


class TrialData:
    """Training and validation Datasets for a trial's plan, cached by the plan's inputs (text inputs
    with tuned n-grams or dims are featurised again; every other trial reuses the same matrices)."""

    def __init__(self, train, validation, share: float, seed: int):
        self.train_src, self.val_src, self.share, self.seed = train, validation, share, seed
        self.cache: dict[str, tuple] = {}
        self.full: dict[str, object] = {}               # the whole training set (small sets: for folds)
        self.more_folds: dict[str, list] = {}           # folds 2.. of a small set, split once per key
        self.rows: tuple[int, int] | None = None       # (training, validation) rows of the current rung
        self.samples: dict = {}

    def get(self, model):
        key = json.dumps(model.plan["inputs"], sort_keys=True)
        if key not in self.cache:
            if len(self.cache) >= 2:             # featurised text matrices are large: keep the last two
                old = next(iter(self.cache))
                self.cache.pop(old)
                self.full.pop(old, None)
                self.more_folds.pop(old, None)
            full = model.dataset(self.train_src)
            if full.labels is None:
                raise DataError(f"{full.source} has no labels to tune on")
            if self.val_src is not None:
                if full.class_names and not model.plan["target"].get("class_names"):
                    model.plan["target"]["class_names"] = list(full.class_names)
                pair = (full, model.dataset(self.val_src))
            else:
                pair = split(full, self.share, self.seed)
                if full.rows <= SMALL_ROWS:
                    self.full[key] = full
            self.cache[key] = pair
        pair = self.cache[key]
        if pair[0].class_names and not model.plan["target"].get("class_names"):
            model.plan["target"]["class_names"] = list(pair[0].class_names)
        if self.rows is None:
            return pair
        return self.sample(pair, key)

    def folds(self, model) -> list:
        """[(train, validation)] of every fold: FOLDS of them for a small training set split here, else
        the one pair `get` returns."""
        first = self.get(model)
        key = json.dumps(model.plan["inputs"], sort_keys=True)
        if self.rows is not None or key not in self.full:
            return [first]
        if key not in self.more_folds:
            self.more_folds[key] = [split(self.full[key], self.share, self.seed, f) for f in range(1, FOLDS)]
        return [first] + self.more_folds[key]

    def sample(self, pair, key):
        """The current rung's seeded row samples of (train, validation); a smaller rung's rows are a subset
        of a larger one's (one permutation), so a promoted trial sees its old rows and more."""
        n_rows, n_val = self.rows
        skey = (key, n_rows, n_val)
        if skey not in self.samples:
            self.samples.clear()                 # one rung at a time
            tr, va = pair
            rng = np.random.default_rng([self.seed, ROW_STREAM])
            tr_rows = np.sort(rng.permutation(tr.rows)[:n_rows])
            va_rows = np.sort(rng.permutation(va.rows)[:n_val])
            self.samples[skey] = (subset(tr, tr_rows, f"{tr.source}, {n_rows:,} rows sampled"),
                                  subset(va, va_rows, f"{va.source}, {n_val:,} rows sampled"))
        return self.samples[skey]
