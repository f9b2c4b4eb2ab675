"""The Python API:

    m = boltc.compile("model.bolt")                  # or .bolt text; backend="native"|"numpy", threads=N
    m.fit(train, validation=None, epochs=None)       # files, scipy.sparse CSR, numpy arrays, (X, Y) tuples
    m.evaluate(test)                                  # {"precision@1": ..., ...} in percent
    ids, scores = m.predict(X, top_k=5)              # X: file, CSR, array, or list of strings (text models)
    m.save("model.boltc");  m = boltc.load("model.boltc")

Backend (decision): `backend=None` picks "native" when runtime/exec/native.py imports and builds, else the
NumPy interpreter, and says so once in `Model.backend_note` (the CLI prints it). Both compute the same
function (the interpreter is the specification).
Validation (decision, issue 15): `fit` measures per-epoch metrics, and `epochs auto` stops, on the
validation data given, else the data block's `validation`, else a seeded `holdout` share of the training
rows (train block, default 0.1; runtime/data/holdout.py). Never on the test set: that one is for `evaluate`.
Overrides: keyword arguments of `compile` that name train settings (lr, epochs, batch, seed, optimizer,
inference, schedule, sampler, ...) replace the .bolt file's train block, so scripts can tune without
editing the model file.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np

from boltc import debug
from boltc.errors import BackendError, BoltError, DataError
from boltc.frontend.blocks import OPTIONAL_TRAIN_KEYS
from boltc.ops import OPS
from boltc.pipeline import load_model_source, read_source
from boltc.plan.moments import choose, plan_param_sizes
from boltc.runtime import savefile
from boltc.runtime.data.holdout import split
from boltc.runtime.data.load import as_dataset, load_dataset
from boltc.runtime.data.text import apply_idf, fit_idf, idf_weights
from boltc.runtime.exec.executor import make_executor
from boltc.runtime.exec.state import ModelState
from boltc.runtime.savefile.artifact import StaleNativeCode, load_native
from boltc.runtime.train import blend, ensemble, ranking
from boltc.runtime.train.class_weights import n_classes
from boltc.runtime.train.metrics import parse_metric
from boltc.runtime.train.ranking import seen_input
from boltc.runtime.train.trainer import Trainer, evaluate, metric_names

BACKENDS = ("native", "numpy")


def _make_executor(plan: dict, state, backend: str | None, threads: int | None, kernels=None):
    threads = int(plan.get("train", {}).get("threads", 0) if threads is None else threads)
    if backend is None:
        try:
            return make_executor(plan, state, "native", threads, kernels=kernels), "native", None
        except (BackendError, ImportError, NotImplementedError) as e:
            note = f"note: using the numpy backend (native backend unavailable: {getattr(e, 'message', e)})"
            return make_executor(plan, state, "numpy", threads), "numpy", note
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r} (expected 'native' or 'numpy')")
    return make_executor(plan, state, backend, threads, kernels=kernels if backend == "native" else None), \
        backend, None


class Model:
    """A compiled model: the plan, its state (weights, hash tables) and training history."""

    def __init__(self, source: str, plan: dict, state=None, history: dict | None = None,
                 backend: str | None = None, threads: int | None = None, file: str | None = None,
                 native_members: dict | None = None, members: list | None = None):
        self.source, self.plan, self.file = source, plan, file
        # `ensemble N`: the states of members 1..N-1 (member 0 is `state`); runtime/train/ensemble.py
        self.members: list = list(members or [])
        self._member_executors: list | None = None
        # a compiled artifact's native/ members: its shipped object code runs (checksummed; rebuilt
        # from its bitcode on a CPU lacking features) instead of lowering the plan again
        self._native_members = native_members
        self._state = state
        self.history = history or {"epochs": []}
        self._backend_req, self.threads = backend, threads
        self._executor = None
        self.backend = backend
        self.backend_note: str | None = None

    # ------------------------------------------------------------ state and executor
    @property
    def state(self):
        if self._state is None:
            self._state = ModelState.init(self.plan)
        return self._state

    @property
    def executor(self):
        if self._executor is None:
            kernels = None
            stale = None
            if self._native_members and self._backend_req in (None, "native"):
                try:
                    kernels = load_native(self._native_members, self.file or "<model>")
                except StaleNativeCode as e:
                    stale = f"note: {self.file or 'the model'}: {e.message}; recompiled from its plan"
            with debug.stage("executor", part="init", quiet=True):
                self._executor, self.backend, self.backend_note = _make_executor(
                    self.plan, self.state, self._backend_req, self.threads, kernels)
            self.backend_note = self.backend_note or stale
        return self._executor

    def _set_state(self, state) -> None:
        self._state, self._executor = state, None

    def _member_executor(self, i: int, state):
        """Member i's executor: its own state and seed, the kernels of member 0 (the same plan but for
        the seed, which no kernel holds)."""
        first = self.executor                   # built first: it settles the backend
        kernels = getattr(first, "k", None) if self.backend == "native" else None
        ex, _, _ = _make_executor(ensemble.member_plan(self.plan, i), state, self.backend, self.threads, kernels)
        return ex

    @property
    def inference_executor(self):
        """What evaluate and predict rank with: the executor, or with `ensemble N` the mean of the N
        members' outputs."""
        if not self.members:
            return self.executor
        if self._member_executors is None or len(self._member_executors) != len(self.members):
            self._member_executors = [self._member_executor(i + 1, st) for i, st in enumerate(self.members)]
        return ensemble.EnsembleExecutor([self.executor] + self._member_executors)

    # ------------------------------------------------------------ data
    def dataset(self, data, labels=None, with_labels: bool = True, allow_stream: bool = False):
        """Any accepted input -> runtime Dataset (files, plan data entries, matrices, strings); with
        `allow_stream`, a large XC/svmlight file comes back as a runtime/data/stream.py StreamingDataset."""
        if data is None:
            raise DataError("no data given (and the model's data block names none)")
        is_text_model = any(i.get("kind") in ("text", "categorical") for i in self.plan.get("inputs", []))
        if isinstance(data, str) and is_text_model and not Path(data).exists():
            data = [data]                               # one raw text to classify
        if labels is None and (isinstance(data, (str, os.PathLike)) or (isinstance(data, dict) and "kind" in data)):
            return load_dataset(data, self.plan, with_labels=with_labels, allow_stream=allow_stream)
        return as_dataset(data, self.plan, labels)

    def data_source(self, split: str):
        return (self.plan.get("data") or {}).get(split)

    # ------------------------------------------------------------ training
    def fit(self, train=None, validation=None, epochs: int | None = None, *, labels=None,
            checkpoint: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
            callbacks=(), checkpoint_at_end: bool = True, epoch_lines: bool | None = None) -> dict:
        """Train; `train`/`validation` default to the data block's train and validation sets; with no
        validation data, a seeded `holdout` share of the training rows is held out for it (the test set is
        never used). With `checkpoint`, checkpoints are written at epoch ends as runtime/train/checkpoints.py
        decides (a wall-clock interval, `checkpoint N` epochs, the end unless `checkpoint_at_end=False`,
        Ctrl-C); `resume=True` continues from it."""
        train = train if train is not None else self.data_source("train")
        if train is None:
            raise DataError("no training data: pass it to fit() or name it in the model's data block")
        if validation is None:
            validation = self.data_source("validation")
        train_ds = self.dataset(train, labels, allow_stream=True)
        if train_ds.labels is None:
            raise DataError("the training data has no labels", None)
        # the class-name mapping comes from the training set and must be fixed before the validation
        # set is read: otherwise string labels could map to different ids in the two files
        if train_ds.class_names and not self.plan["target"].get("class_names"):
            self.plan["target"]["class_names"] = list(train_ds.class_names)
        train_ds, val_ds = self.validation_split(train_ds, validation)
        self._fit_idf(train_ds, val_ds)
        self._fit_blend(train_ds)
        saved = None
        if resume and checkpoint and Path(checkpoint).exists():
            saved = savefile.load_model(checkpoint)
            if saved.plan.get("layers") != self.plan.get("layers"):
                raise BoltError(f"checkpoint {checkpoint} is for a different model (its layers differ)")
            self._set_state(savefile.state_from_saved(saved, checkpoint))
            self.members = savefile.member_states(saved, checkpoint)
            self._member_executors = None
            self.plan["train"] = saved.plan.get("train", self.plan["train"])
        if saved is None and self.members:
            raise BoltError(f"this model is an ensemble of {len(self.members) + 1} trained networks; training it "
                            "further is not supported: train a new model (or resume its checkpoint)")
        trainer = Trainer(self.plan, self.state, self.executor, source=self.source, checkpoint=checkpoint,
                          progress=progress, checkpoint_at_end=checkpoint_at_end, epoch_lines=epoch_lines)
        if saved is not None:
            trainer.restore(saved)
        else:
            trainer.history = {"epochs": list(self.history.get("epochs", [])), "step": int(self.state.step)}
            trainer.epochs_done = 0
        e = epochs if epochs is not None else self.plan["train"].get("epochs", 1)
        if saved is None and self.history.get("epochs"):
            # a second fit() continues training: count epochs from here
            trainer.epochs_done = len(self.history["epochs"])
            e = trainer.epochs_done + int(e)
        self.history = trainer.fit(train_ds, val_ds, epochs=e, callbacks=callbacks)
        self._fit_members(trainer, train_ds, val_ds, e, callbacks)
        self.history["backend"] = self.backend
        self.history["train_source"] = train_ds.source
        self.history["validation_source"] = val_ds.source if val_ds is not None else None
        return self.history

    def _fit_members(self, first, train_ds, val_ds, epochs, callbacks) -> None:
        """`ensemble N`: members 1..N-1, each a fresh network from its own seed trained like member 0 on
        the same rows (runtime/train/ensemble.py). A member trains without checkpoints of its own; the
        checkpoint is rewritten after each one, so a resumed run keeps the members already trained and
        trains the rest from their start."""
        n = ensemble.size(self.plan)
        if n <= 1 or len(self.members) >= n - 1:
            return
        histories = first.history.setdefault("members", [])
        while len(self.members) < n - 1:
            i = len(self.members) + 1
            plan_i = ensemble.member_plan(self.plan, i)
            state = ModelState.init(plan_i)
            state.blend = self.state.blend               # one blend, added to the mean (blend.py)
            ex = self._member_executor(i, state)
            trainer = Trainer(plan_i, state, ex, source=self.source, checkpoint=None, progress=first.progress,
                              checkpoint_at_end=False, epoch_lines=first.epoch_lines)
            trainer.history, trainer.epochs_done = {"epochs": [], "step": 0}, 0
            if trainer.epoch_lines:
                trainer.log(f"ensemble member {i + 1} of {n} (train seed {plan_i['train']['seed']})")
            hist = trainer.fit(train_ds, val_ds, epochs=epochs, callbacks=callbacks)
            histories.append({k: hist[k] for k in ("epochs", "early_stopping", "step") if k in hist})
            self.members.append(state)
            self._member_executors = None
            if first.checkpoint is not None:
                first.members = self._saved_members()
                first.save_checkpoint()
        if val_ds is not None:
            names = metric_names(self.plan)
            kind = self.plan["target"].get("kind")
            first.history["ensemble_validation"] = evaluate(self.inference_executor, val_ds, names,
                                                           binary=kind == "binary")

    def _fit_idf(self, train_ds, val_ds=None) -> None:
        """TF-IDF inputs (`text(..., idf=true)`): document frequencies from the training rows (after the
        validation share is held out, so it stays unseen), kept in the plan so that evaluation,
        prediction and the saved model weight alike; the rows read before the counts existed (training
        and validation) are weighted here."""
        for entry in self.plan.get("inputs", []):
            if entry.get("kind") != "text" or not entry.get("idf") or entry.get("idf_df") is not None:
                continue                       # fitted ones weighted the rows as they were read
            name = entry["name"]
            if name not in train_ds.inputs:
                continue
            train_ds.inputs[name] = fit_idf(entry, train_ds.inputs[name])
            if val_ds is not None and name in getattr(val_ds, "inputs", {}):
                val_ds.inputs[name] = apply_idf(val_ds.inputs[name], idf_weights(entry),
                                                entry.get("normalize") or "l2")

    def _fit_blend(self, train_ds) -> None:
        """`blend ridge(...)`: the ridge weights from the training rows (the validation share held out),
        kept in the state, so checkpoints and the saved model carry them (runtime/train/blend.py)."""
        settings = blend.settings(self.plan)
        if settings is None or "ridge" in self.state.blend:
            return
        if getattr(train_ds, "streaming", False):
            raise DataError(f"{train_ds.source} is streamed (too large for memory): blend ridge(...) solves on "
                            "every training row at once; leave blend out for this data")
        x = train_ds.inputs[blend.input_name(self.plan)]
        self.state.blend["ridge"] = blend.fit_ridge(x, train_ds.labels, float(settings["l2"]))

    def validation_split(self, train_ds, validation=None):
        """(training Dataset, validation Dataset or None): `validation` read, or else the train block's
        `holdout` share carved from `train_ds` (runtime/data/holdout.py); a streamed training file cannot be
        carved, so it trains without per-epoch metrics unless validation data is given."""
        if validation is not None:
            return train_ds, self.dataset(validation, allow_stream=True)
        share = float(self.plan["train"].get("holdout", 0.0))
        if share <= 0.0:
            return train_ds, None
        if getattr(train_ds, "streaming", False):
            if self.plan["train"].get("patience"):
                raise DataError(f"{train_ds.source} is streamed (too large for memory, or stream=true), so no "
                                "validation share can be held out of it: give a validation file for "
                                "`epochs auto` / `patience`")
            return train_ds, None
        return split(train_ds, share, int(self.plan["train"].get("seed", 0)))

    # ------------------------------------------------------------ inference
    def _sparse_default(self, sparse):
        if sparse is not None:
            return bool(sparse)
        return self.plan.get("train", {}).get("inference", "dense") == "sparse"

    def evaluate(self, data=None, labels=None, *, sparse: bool | None = None, metrics=None,
                 exclude_seen: bool = False, confusion: bool = False) -> dict:
        """Metrics in percent. `exclude_seen`: labels whose ids are among the row's own feature ids are
        left out of the ranking (recommendation data). `confusion`: add "confusion", the counts of
        (true, predicted) class pairs (single-label and binary targets)."""
        names = list(metrics) if metrics else metric_names(self.plan)
        kind = self.plan["target"].get("kind")
        for n in names:
            m, _ = parse_metric(n)
            if kind == "binary" and m not in ("accuracy", "macro_f1"):
                raise BoltError(f"metric {n} needs a label or multilabel target; use accuracy or macro_f1 for binary")
        if kind == "multi" and (confusion or any(parse_metric(n)[0] == "macro_f1" for n in names)):
            raise BoltError("macro_f1 and the confusion matrix need a label(n) or binary target (one class per "
                            "example); this model's target is multilabel")
        if exclude_seen:
            seen_input(self.plan)                       # the model must have ids to compare: say so first
        data = data if data is not None else (self.data_source("test") or self.data_source("validation"))
        ds = self.dataset(data, labels, allow_stream=True)
        if ds.labels is None:
            raise DataError(f"{ds.source or 'the data'} has no labels to evaluate against")
        return evaluate(self.inference_executor, ds, names, sparse=self._sparse_default(sparse), binary=kind == "binary",
                        exclude_seen=exclude_seen, confusion=confusion)

    def predict(self, X, top_k: int = 5, *, sparse: bool | None = None, batch: int = 1024,
                exclude_seen: bool = False):
        """(ids (n, k) int32, scores (n, k) float32), best first. `exclude_seen`: a label whose id is one
        of the row's own feature ids is never ranked (feature and label ids name the same items)."""
        if top_k < 1:
            raise BoltError(f"top_k must be at least 1, not {top_k}")
        if exclude_seen:
            ranking.seen_input(self.plan)
        ds = self.dataset(X, with_labels=False)
        sparse = self._sparse_default(sparse)
        ids, scores = [], []
        ex = self.inference_executor
        for s in range(0, ds.rows, batch):
            b = ds.take(np.arange(s, min(s + batch, ds.rows)))
            b.labels = None
            i, sc = ranking.predict(ex, b, top_k, sparse=sparse, exclude_seen=exclude_seen,
                                    plan=self.plan)
            ids.append(i)
            scores.append(sc)
        if not ids:
            return np.zeros((0, top_k), np.int32), np.zeros((0, top_k), np.float32)
        return np.concatenate(ids), np.concatenate(scores)

    def class_name(self, i: int) -> str:
        names = self.plan["target"].get("class_names")
        return names[i] if names and 0 <= i < len(names) else str(i)

    # ------------------------------------------------------------ persistence
    def save(self, path) -> None:
        saved = savefile.state_to_saved(self.source, self.plan, self.state, self.history)
        saved.members = self._saved_members()
        savefile.save_model(path, saved)

    def _saved_members(self) -> list:
        return [savefile.member_to_saved(st) for st in self.members]

    def summary(self) -> dict:
        """What `boltc inspect` shows: graph, shapes, parameters, memory, sparsity and hashing, history."""
        layers = []
        params = self.state.params if self._state is not None else {}
        for l in self.plan["layers"]:
            p = params.get(l["name"])
            shapes = ({k: list(a.shape) for k, a in p.items() if k != "label_count"} if p is not None
                      else _planned_shapes(l))
            layers.append({"name": l["name"], "op": l["op"], "inputs": l["inputs"], "dim": l.get("dim"),
                           "in_dim": l.get("in_dim"), "activation": l.get("activation"), "shapes": shapes,
                           "parameters": int(sum(int(np.prod(v)) for v in shapes.values())),
                           "sparsity": l.get("sparsity"), "active": l.get("active"), "hash": l.get("hash")})
        if self._state is not None:
            lsh_bytes = sum(i.tables.nbytes + i.counts.nbytes for i in self._state.lsh.values())
            weight_bytes = sum(a.nbytes for p in params.values() for a in p.values())
        else:       # not built yet: what it will take (float32 weights; tables L * 2^range * reservoir int32)
            weight_bytes = 4 * sum(l["parameters"] for l in layers)
            lsh_bytes = sum(4 * h["tables"] * (1 << h["range_bits"]) * (h["reservoir"] + 1)
                            for h in (l.get("hash") for l in self.plan["layers"]) if h)
        # a TF-IDF input's document frequencies (one per feature) are data, not a setting: counted only
        inputs = [{**i, "idf_df": f"{len(i['idf_df'])} counts"} if i.get("idf_df") is not None else i
                  for i in self.plan.get("inputs") or []]
        return {"model": self.plan.get("model"), "inputs": inputs, "target": self.plan.get("target"),
                "layers": layers, "output": self.plan.get("output"), "loss": self.plan.get("loss"),
                "parameters": int(sum(l["parameters"] for l in layers)),
                "memory": {"weights_bytes": int(weight_bytes), "hash_table_bytes": int(lsh_bytes),
                           "planned": self.plan.get("memory")},
                "train": self.plan.get("train"), "history": self.history,
                "ensemble": 1 + len(self.members)}


def _planned_shapes(layer: dict) -> dict:
    """Parameter shapes a layer will have (CONTRACTS.md section 4), without allocating them."""
    op = OPS.get(layer["op"])
    return {t: list(s) for t, s in op.params(layer).items()} if op is not None else {}


def compile(source, backend: str | None = None, threads: int | None = None, **train_overrides) -> Model:  # noqa: A001
    """Parse, check and plan a .bolt file (a path or the text) into a trainable Model."""
    text, file = read_source(source)
    _, plan = load_model_source(source)
    plan = copy.deepcopy(plan)
    apply_overrides(plan, train_overrides)
    return Model(text, plan, backend=backend, threads=threads, file=file)


def apply_overrides(plan: dict, overrides: dict) -> None:
    train = plan.setdefault("train", {})
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in train and k not in ("schedule", "sampler", "inference", "seed", "threads") + OPTIONAL_TRAIN_KEYS:
            raise BoltError(f"unknown train setting {k!r} (the train block has: {', '.join(sorted(train))})")
        if k == "upkeep_budget" and not 0.0 < float(v) <= 1.0:
            raise BoltError(f"upkeep_budget must be a fraction in (0, 1], not {v!r}")
        if k == "label_smoothing" and not 0.0 <= float(v) < 1.0:
            raise BoltError(f"label_smoothing must be a share in [0, 1), not {v!r}")
        if k == "class_weights":
            if isinstance(v, str) and v not in ("balanced", "none"):
                raise BoltError(f"class_weights must be 'balanced', 'none' or one weight per class, not {v!r}")
            if not isinstance(v, str):
                v = [float(w) for w in np.asarray(v, dtype=np.float64).ravel()]
                if len(v) != n_classes(plan["target"]) or min(v) < 0:
                    raise BoltError(f"class_weights needs {n_classes(plan['target'])} weights >= 0 (one per "
                                    f"class), got {len(v)}")
            if v == "none":
                train.pop(k, None)
                continue
        if k == "ensemble" and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= 16):
            raise BoltError(f"ensemble must be a number of networks from 1 to 16, not {v!r}")
        if k == "checkpoint_interval" and not float(v) > 0.0:
            raise BoltError(f"checkpoint_interval must be a number of seconds > 0, not {v!r}")
        train[k] = v
    if "moments" in overrides or "optimizer" in overrides:
        # plan_memory resolved each tensor's moment storage from the file's setting: resolve it again
        try:
            train["moment_dtypes"] = choose(train.get("moments", "auto"), train.get("optimizer", "adam"),
                                            plan_param_sizes(plan))
        except ValueError as e:
            raise BoltError(str(e)) from None


def load(path, backend: str | None = None, threads: int | None = None) -> Model:
    """A saved model (.boltc) ready for evaluate / predict / more training."""
    saved = savefile.load_model(path)
    state = savefile.state_from_saved(saved, path)
    native = {k: v for k, v in (saved.extra or {}).items() if k.startswith("native/")} or None
    members = savefile.member_states(saved, path)
    return Model(saved.source, saved.plan, state=state, history=saved.history, backend=backend,
                 threads=threads, file=str(path), native_members=native, members=members)
