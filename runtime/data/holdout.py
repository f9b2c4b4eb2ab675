"""The validation split carved from the training data when no validation data is given (issue 15).

`split(ds, share, seed) -> (train_part, validation_part)`: a seeded random `share` of the rows is held
out. Decisions:
- The rows are drawn by a generator of its own, seeded by (train seed, HOLDOUT_STREAM), so the split is
  the same for every run with that seed and independent of every other random stream (the sampler's
  order, active sets, hashing).
- Both parts keep the original row order; they are disjoint and together are exactly the input's rows
  (tests/test_holdout.py checks this against the row ids).
- At least one row is held out for any share > 0, and at least one row stays for training.
- A streamed training file (runtime/data/stream.py) cannot be split in memory: it needs a validation file
  (the caller says so, or trains without per-epoch metrics when nothing asks for them).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from boltc.errors import DataError
from boltc.runtime.data.dataset import Dataset, take_rows

HOLDOUT_STREAM = 0x4F1D


def holdout_rows(n: int, share: float, seed: int, fold: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training row ids, validation row ids), each sorted, disjoint, covering range(n). `fold` f holds out
    the f-th block of `share` of the same seeded permutation (fold 0 is the plain holdout), so the
    validation parts of folds 0, 1, ... are disjoint (boltc tune's folds on small training sets)."""
    if n < 2:
        raise DataError(f"cannot hold out a validation share of {n} training row(s): give validation data "
                        "or set `holdout 0`")
    k = min(max(1, int(round(share * n))), n - 1)
    if (fold + 1) * k > n - 1:
        raise DataError(f"cannot hold out fold {fold + 1} of {100 * share:g}% of {n} training rows")
    perm = np.random.default_rng([int(seed), HOLDOUT_STREAM]).permutation(n)
    val = perm[fold * k:(fold + 1) * k]
    return np.sort(np.concatenate([perm[:fold * k], perm[(fold + 1) * k:]])), np.sort(val)


def subset(ds: Dataset, rows: np.ndarray, source: str) -> Dataset:
    def pick(v):
        return np.ascontiguousarray(v[rows]) if isinstance(v, np.ndarray) else take_rows(v, rows)
    return replace(ds, inputs={k: pick(v) for k, v in ds.inputs.items()},
                   labels=take_rows(ds.labels, rows) if ds.labels is not None else None,
                   source=source, meta={**ds.meta, "rows_of": ds.source, "row_ids": rows})


def split(ds: Dataset, share: float, seed: int, fold: int = 0) -> tuple[Dataset, Dataset]:
    train_rows, val_rows = holdout_rows(ds.rows, share, seed, fold)
    pct = f"{100 * share:g}%" + (f" (fold {fold + 1})" if fold else "")
    return (subset(ds, train_rows, f"{ds.source} (training part: {pct} held out, seed {seed})"),
            subset(ds, val_rows, f"{ds.source} (validation: {pct} held out, seed {seed})"))
