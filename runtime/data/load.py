"""`load_dataset(source, plan) -> Dataset`: one entry point for every data source (CONTRACTS.md section 7).

Sources:
- a plan data entry `{"kind": "file", "path": ..., "format": "xc"|"svmlight"|"csv"|"tsv"|None}` or a
  plain path string (format guessed from the name, then from the first line); XC/svmlight entries may
  say `"normalize": "l2"` to scale every row to unit length;
- `{"kind": "synthetic", ...}` (runtime/data/synth.py; dimensions default to the plan's input and target);
- from Python (`as_dataset`): a Dataset, a scipy.sparse matrix or numpy array of inputs (labels apart),
  an `(X, Y)` tuple, or a list of strings for text models.
Every matrix is checked against the plan: more features or labels than the model has is a DataError
naming the source (fewer is fine: the matrix is widened).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from boltc import debug
from boltc.errors import BoltError, DataError, Location
from boltc.runtime.data import synth, xcformat
from boltc.runtime.data.csvfile import load_csv_dataset
from boltc.runtime.data.dataset import (Dataset, as_csr, checked_dataset,  # noqa: F401 (public here too)
                                        l2_normalize_rows)
from boltc.runtime.data.stream import open_streaming, should_stream
from boltc.runtime.data.text import featurize_strings

TABLE_FORMATS = ("csv", "tsv")


def _guess_format(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith((".svm", ".svmlight", ".libsvm")):
        return "svmlight"
    return xcformat.sniff_format(path)


def _inputs(plan: dict) -> list[dict]:
    return list(plan.get("inputs") or [])


def _target(plan: dict) -> dict:
    return plan.get("target") or {}


@debug.stage("read data", part="read")
def load_dataset(source, plan: dict, with_labels: bool = True, allow_stream: bool = False) -> Dataset:
    """`allow_stream`: the caller (training, evaluation) can take a runtime/data/stream.py StreamingDataset,
    returned for an XC/svmlight file that asks for it (`stream=true`) or is too large for memory."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        source = {"kind": "file", "path": str(source), "format": None}
    if not isinstance(source, dict):
        return as_dataset(source, plan)
    kind = source.get("kind", "file")
    if kind == "synthetic":
        return _synthetic(source, plan)
    if kind != "file":
        raise DataError(f"unknown data source kind {kind!r} (file or synthetic)")
    path = str(source["path"])
    if not Path(path).exists():
        raise DataError("data file not found", Location(path, 0))
    fmt = source.get("format") or _guess_format(path)
    if fmt in TABLE_FORMATS:        # text/categorical columns: runtime/data/csvfile.py (chunked, class names)
        return load_csv_dataset({**source, "path": path, "format": fmt}, plan, need_labels=with_labels)
    if fmt not in ("xc", "svmlight"):
        raise DataError(f"unknown data format {fmt!r} (xc, svmlight, csv, tsv)", Location(path, 0))
    sparse_inputs = [i for i in _inputs(plan) if i.get("kind") in ("sparse", "dense")]
    if len(sparse_inputs) != 1 or len(_inputs(plan)) != 1:
        raise DataError("an XC/svmlight file feeds a model with exactly one sparse or dense input",
                        Location(path, 0))
    inp = sparse_inputs[0]
    if allow_stream and with_labels:
        if should_stream(path, source.get("stream")):
            return open_streaming(path, fmt, plan, source)
    X, Y = xcformat.read_xc(path, fmt)
    norm = source.get("normalize", "none")
    if norm not in ("none", "l2", None):
        raise DataError(f"normalize must be l2 or none, not {norm!r}", Location(path, 0))
    if norm == "l2":
        X = l2_normalize_rows(X)
    return checked_dataset(X, Y, inp, plan, path)


def _synthetic(source: dict, plan: dict) -> Dataset:
    opts = {k: v for k, v in source.items() if k not in ("kind", "loc")}
    ins = [i for i in _inputs(plan) if i.get("kind") in ("sparse", "dense")]
    if len(ins) != 1:
        raise DataError("synthetic data feeds a model with exactly one sparse or dense input")
    opts.setdefault("features", int(ins[0]["dim"]))
    if _target(plan):
        opts.setdefault("labels", int(_target(plan)["classes"]))
    spec = synth.SynthSpec.from_options(opts)
    X, Y = synth.generate(spec)
    where = "synthetic(" + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())) + ")"
    ds = checked_dataset(X, Y, ins[0], plan, where)
    ds.meta["synthetic"] = spec.as_dict()
    return ds


def as_dataset(obj, plan: dict, labels=None) -> Dataset:
    """Python objects -> Dataset: (X, Y) tuples, matrices/arrays of inputs, lists of strings (a Dataset or
    a runtime/data/stream.py StreamingDataset is passed through)."""
    if isinstance(obj, Dataset) or getattr(obj, "streaming", False):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_dataset(obj, plan)
    if isinstance(obj, tuple) and len(obj) == 2 and labels is None:
        obj, labels = obj
    if isinstance(obj, (list, dict)) and (isinstance(obj, dict) or (obj and isinstance(obj[0], (str, dict)))):
        ds = featurize_strings(obj, plan)
        if labels is not None:
            ds.labels = _labels_from(labels, plan, ds.rows)
        return ds
    ins = _inputs(plan)
    if len(ins) != 1 or ins[0].get("kind") not in ("sparse", "dense"):
        raise BoltError("this model has several or text inputs: pass a Dataset, a file, or strings")
    if sp.issparse(obj):
        X = as_csr(obj)
    else:
        arr = np.asarray(obj, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise BoltError(f"inputs must be a 2-D array or CSR matrix, got shape {arr.shape}")
        X = as_csr(arr)
    Y = _labels_from(labels, plan, X.shape[0]) if labels is not None else None
    return checked_dataset(X, Y, ins[0], plan, "<array>")


def _labels_from(labels, plan: dict, n: int) -> sp.csr_matrix:
    """Labels as CSR (rows, classes), a 1-D array of class ids, or a list of label-id lists."""
    classes = int(_target(plan).get("classes", 0))
    if sp.issparse(labels):
        Y = as_csr(labels)
    else:
        if isinstance(labels, list) and labels and isinstance(labels[0], (list, tuple, np.ndarray)):
            rows = np.repeat(np.arange(len(labels)), [len(l) for l in labels])
            cols = np.concatenate([np.asarray(l, dtype=np.int64) for l in labels]) if rows.size else np.zeros(0, int)
        else:
            cols = np.asarray(labels, dtype=np.int64).ravel()
            rows = np.arange(cols.size)
        if cols.size and (cols.min() < 0 or cols.max() >= max(classes, 1)):
            raise BoltError(f"label ids must be in [0, {classes})")
        Y = sp.csr_matrix((np.ones(cols.size, np.float32), (rows, cols)), shape=(len(labels), max(classes, 1)))
    if Y.shape[0] != n:
        raise BoltError(f"{Y.shape[0]} rows of labels for {n} rows of inputs")
    return as_csr(Y)


def read_rows_text(text: str, plan: dict) -> Dataset:
    """Rows typed by a user (stdin of `boltc predict`): XC/svmlight body lines without a header."""
    ins = [i for i in _inputs(plan) if i.get("kind") in ("sparse", "dense")]
    if len(ins) != 1:
        raise DataError("rows on stdin feed a model with exactly one sparse input; use --text for text models")
    # a line that is only 'f:v' pairs has no label field: give it the leading space the format expects
    body = "\n".join((" " + l) if ":" in l.split()[0] else l for l in text.splitlines() if l.strip())
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(body + "\n")
        name = f.name
    try:
        X, _ = xcformat.read_xc(name, "svmlight", n_features=int(ins[0]["dim"]), zero_based=True)
    except DataError as e:
        raise DataError(e.message, Location("<stdin>", e.location.line if e.location else 0)) from None
    finally:
        os.unlink(name)
    return checked_dataset(X, None, ins[0], plan, "<stdin>")
