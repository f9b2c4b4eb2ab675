"""Class weights (`class_weights balanced` or one weight per class in the train block).

Definition (scikit-learn's, so that results carry over): an example's loss is multiplied by the weight
of its class; `balanced` gives class c the weight n / (C * n_c), where n_c counts the training examples
of class c, n = sum_c n_c and C is the number of classes that occur. Binary targets have two classes,
negative (0) and positive (1). For a multilabel target n_c counts the examples carrying label c and an
example's weight is the mean of its labels' weights (an example without labels keeps weight 1).

How (decision): the weight goes into the per-example weight every loss rule already scales its gradient
by (Batch.weights, the adaptive sampler's importance weights, multiplied together), so the interpreter
and the native kernels apply it identically with no kernel of its own. The reported training loss stays
unweighted, like scikit-learn's.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltError


def n_classes(target: dict) -> int:
    return 2 if target.get("kind") == "binary" else int(target["classes"])


def resolve(spec, labels: sp.csr_matrix, target: dict) -> np.ndarray | None:
    """The per-class weights (float32, one per class) of `spec` ("balanced", a list, or None / "none")
    on the training labels."""
    if spec is None or (isinstance(spec, str) and spec == "none"):
        return None
    C = n_classes(target)
    if isinstance(spec, str):
        if spec != "balanced":
            raise BoltError(f"class_weights must be balanced, none or one number per class, not {spec!r}")
        counts = class_counts(labels, target)
        present = counts > 0
        w = np.ones(C, np.float64)
        w[present] = counts.sum() / (present.sum() * counts[present])
        return w.astype(np.float32)
    w = np.asarray(spec, dtype=np.float64).ravel()
    if w.size != C or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise BoltError(f"class_weights needs {C} numbers >= 0 (one per class), got {w.size}")
    return w.astype(np.float32)


def class_counts(labels: sp.csr_matrix, target: dict) -> np.ndarray:
    labels = sp.csr_matrix(labels)
    if target.get("kind") == "binary":
        pos = int((np.diff(labels.indptr) > 0).sum())
        return np.array([labels.shape[0] - pos, pos], np.float64)
    return np.bincount(labels.indices, minlength=n_classes(target)).astype(np.float64)


def example_weights(weights: np.ndarray, labels: sp.csr_matrix, target: dict) -> np.ndarray:
    """(B,) float32: each example's weight (see the module docstring)."""
    labels = sp.csr_matrix(labels)
    n_lab = np.diff(labels.indptr)
    if target.get("kind") == "binary":
        return weights[(n_lab > 0).astype(np.int64)].astype(np.float32)
    rows = np.repeat(np.arange(labels.shape[0]), n_lab)
    sums = np.bincount(rows, weights=weights[labels.indices].astype(np.float64), minlength=labels.shape[0])
    return np.where(n_lab > 0, sums / np.maximum(n_lab, 1), 1.0).astype(np.float32)
