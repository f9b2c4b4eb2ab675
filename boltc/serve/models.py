"""A served model: a loaded `boltc.Model` plus what a request needs to know about its inputs.

Reloads (decision): the new file is loaded, checked and warmed (its native code built, one row run
dense and sparse) in a loader thread beside the serving model, then swapped in with one assignment.
Requests already queued hold the old `ServedModel` and finish on it. A file that does not load, or
whose inputs or label count differ from the serving model's (clients' requests would change meaning),
is refused with the reason and the old model keeps serving.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import boltc
from boltc.errors import BoltError

TEXT_KINDS = ("text", "categorical")


class LoadRefused(Exception):
    """A model file that cannot be served; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class InputSchema:
    """What a row must look like: one sparse or dense vector of `dim`, or text columns."""
    kind: str                      # "sparse" | "dense" | "text"
    name: str
    dim: int = 0
    columns: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        if self.kind == "text":
            return {"name": self.name, "kind": "text", "columns": self.columns}
        return {"name": self.name, "kind": self.kind, "dim": self.dim}


@dataclass
class ServedModel:
    name: str
    path: str
    model: object                  # boltc.api.Model
    schema: InputSchema
    version: int
    sha256: str
    load_seconds: float
    loaded_at: float

    @property
    def classes(self) -> int:
        return int(self.model.plan["target"].get("classes", 0))

    @property
    def class_names(self) -> list[str] | None:
        return self.model.plan["target"].get("class_names")

    @property
    def binary(self) -> bool:
        return self.model.plan["target"].get("kind") == "binary"

    @property
    def has_sparse_inference(self) -> bool:
        out = next((l for l in self.model.plan["layers"] if l["name"] == self.model.plan["output"]), {})
        return bool(out.get("hash"))

    supports_exclude_seen: bool = False      # Model.predict(exclude_seen=True) works (checked at load)
    exclude_seen_refusal: str = ""           # why not, in the model's words

    @property
    def sparse_default(self) -> bool:
        return self.model.plan.get("train", {}).get("inference", "dense") == "sparse"

    def metadata(self) -> dict:
        return {"name": self.name, "version": self.version, "file": Path(self.path).name,
                "sha256": self.sha256, "input": self.schema.describe(), "classes": self.classes,
                "class_names": bool(self.class_names), "binary": self.binary,
                "inference": "sparse" if self.sparse_default else "dense",
                "sparse_inference": self.has_sparse_inference, "exclude_seen": self.supports_exclude_seen,
                "backend": self.model.backend}


def input_schema(plan: dict) -> InputSchema:
    ins = plan.get("inputs", [])
    text = [i for i in ins if i.get("kind") in TEXT_KINDS]
    vec = [i for i in ins if i.get("kind") in ("sparse", "dense")]
    if text and not vec:
        cols = [i.get("column") or i["name"] for i in text]
        return InputSchema("text", text[0]["name"] if len(text) == 1 else "text", columns=cols)
    if len(vec) == 1 and not text:
        return InputSchema(vec[0]["kind"], vec[0]["name"], int(vec[0]["dim"]))
    kinds = ", ".join(f"{i['name']}: {i.get('kind')}" for i in ins)
    raise LoadRefused(f"its inputs ({kinds}) are not servable: boltc serve takes models with one sparse or "
                      "dense input, or only text/categorical inputs")


def empty_rows(schema: InputSchema):
    """One all-zero row (or empty text) in the form Model.predict takes: used to warm a model up."""
    if schema.kind == "text":
        return [{c: "" for c in schema.columns}] if len(schema.columns) > 1 else [""]
    if schema.kind == "dense":
        return np.zeros((1, schema.dim), np.float32)
    return sp.csr_matrix((1, schema.dim), dtype=np.float32)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_served(name: str, path: str, version: int, *, backend=None, threads=None) -> ServedModel:
    """Load, check and warm one model file; LoadRefused with the reason when it cannot serve."""
    t0 = time.perf_counter()
    if not Path(path).is_file():
        raise LoadRefused(f"{path}: no such file")
    try:
        digest = file_digest(path)
        model = boltc.load(path, backend=backend, threads=threads)
        schema = input_schema(model.plan)
        served = ServedModel(name, str(path), model, schema, version, digest, 0.0, time.time())
        model.predict(empty_rows(schema), top_k=1, sparse=False)
        if served.has_sparse_inference:
            model.predict(empty_rows(schema), top_k=1, sparse=True)
        try:                          # the model says itself whether its feature ids name its labels
            model.predict(empty_rows(schema), top_k=1, sparse=False, exclude_seen=True)
            served.supports_exclude_seen = True
        except BoltError as e:
            served.exclude_seen_refusal = e.message
    except LoadRefused:
        raise
    except BoltError as e:
        raise LoadRefused(e.message if str(path) in e.message else f"{path}: {e.message}") from None
    except Exception as e:           # a damaged archive can fail in zipfile/numpy/json: still the file's fault
        raise LoadRefused(f"{path}: not a loadable model file ({type(e).__name__}: {e})") from None
    served.load_seconds = time.perf_counter() - t0
    return served


def incompatibility(old: ServedModel, new: ServedModel) -> str | None:
    """Why `new` cannot replace `old` for the same clients, or None."""
    if old.schema != new.schema:
        return (f"its input {new.schema.describe()} differs from the serving model's "
                f"{old.schema.describe()}")
    if old.classes != new.classes:
        return f"it has {new.classes} classes, the serving model has {old.classes}"
    if old.binary != new.binary:
        return "its target kind differs from the serving model's"
    return None


class ModelSet:
    """Name -> ServedModel; reloads are serialized per set (one compile at a time)."""

    def __init__(self, backend=None, threads=None):
        self.backend, self.threads = backend, threads
        self.models: dict[str, ServedModel] = {}
        self._reload_lock = threading.Lock()

    def add(self, name: str, path: str) -> ServedModel:
        if name in self.models:
            raise BoltError(f"two models are named {name!r}: give one as name=path")
        try:
            served = load_served(name, path, 1, backend=self.backend, threads=self.threads)
        except LoadRefused as e:
            raise BoltError(f"cannot serve {path}: {e.reason}") from None
        self.models[name] = served
        return served

    def reload(self, name: str) -> ServedModel:
        """Load the model's file again beside the serving one and swap it in (LoadRefused if not)."""
        with self._reload_lock:
            old = self.models[name]
            new = load_served(name, old.path, old.version + 1, backend=self.backend, threads=self.threads)
            why = incompatibility(old, new)
            if why:
                raise LoadRefused(f"{old.path}: {why}")
            self.models[name] = new            # one assignment: the swap; queued requests keep `old`
            return new


def parse_model_args(specs: list[str]) -> list[tuple[str, str]]:
    """`path` or `name=path` -> (name, path); the name defaults to the file's stem."""
    out = []
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep:
            name, path = Path(s).stem, s
        if not name:
            raise BoltError(f"model {s!r}: the name before '=' is empty")
        if any(name == n for n, _ in out):
            raise BoltError(f"two models are named {name!r}: give one as name=path")
        out.append((name, path))
    return out
