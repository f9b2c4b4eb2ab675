"""Model.predict's (ids, scores) -> the JSON answers of the two predict routes."""
from __future__ import annotations

import math

import numpy as np

# OIP tensors are fixed-shape and JSON has no -inf: a missing candidate is id -1 with float32's lowest
MISSING_SCORE = float(np.finfo(np.float32).min)


def oip_outputs(served, ids: np.ndarray, scores: np.ndarray) -> list[dict]:
    n, k = ids.shape
    ok = (ids >= 0) & np.isfinite(scores)
    ids = np.where(ok, ids, -1)
    scores = np.where(ok, scores, MISSING_SCORE)
    out = [{"name": "ids", "datatype": "INT32", "shape": [n, k], "data": ids.ravel().tolist()},
           {"name": "scores", "datatype": "FP32", "shape": [n, k], "data": scores.ravel().tolist()}]
    if served.class_names:
        out.append({"name": "labels", "datatype": "BYTES", "shape": [n, k],
                    "data": [served.model.class_name(i) if i >= 0 else "" for i in ids.ravel().tolist()]})
    return out


def v1_predictions(served, ids: np.ndarray, scores: np.ndarray, top_k: int, exclude=None) -> list[dict]:
    """One entry per row: ids, scores (and labels) of the candidates it has (id >= 0, finite score),
    without the row's `exclude` ids, at most top_k; a binary model: its label and probability."""
    names = served.class_names
    if served.binary:
        labels = names or ["0", "1"]
        return [{"label": labels[1] if p >= 0.5 else labels[0], "probability": p} for p in scores[:, 0].tolist()]
    preds = []
    for r, (row_ids, row_scores) in enumerate(zip(ids.tolist(), scores.tolist())):
        skip = exclude[r] if exclude else ()
        kept = [(i, s) for i, s in zip(row_ids, row_scores) if i >= 0 and math.isfinite(s) and i not in skip][:top_k]
        p = {"ids": [i for i, _ in kept], "scores": [s for _, s in kept]}
        if names:
            p["labels"] = [served.model.class_name(i) for i, _ in kept]
        preds.append(p)
    return preds
