"""Data-parallel training on a Ray cluster with a sparse gradient exchange (issue 8; docs/distributed.md).

    result = train_distributed(plan, state, train_source, validation, workers=4, address="auto")

Scheme (synchronous; every replica identical at every step):
  1. Shards: the driver cuts the training file into `workers` byte ranges aligned to line starts
     (runtime/distributed_shard.py); each worker reads only its range. Synthetic sources are cut by row
     range (each worker generates only its rows); other sources are read once by the driver and sliced.
  2. Each update, worker i takes B_i = B / workers rows of its shard (the global batch B of the plan is
     kept: same total batch as one process), computes forward + backward without updating, and sends
     only the touched rows of each gradient (row ids + values; distributed_exchange.py). With
     `exchange_every=k` a worker accumulates k local batches first (one update per k*B examples).
  3. The driver sums them weighted by example counts (= the mean over the global batch) and broadcasts
     the combined row-sparse gradient once through the Ray object store; every replica applies the same
     lazy Adam update and runs the same LSH upkeep (same seeds, same weights -> same tables).
  `exchange="dense"` sends every gradient tensor whole instead (the dense all-reduce baseline; replicas
  then recover touched rows as the nonzero ones, so both modes train identically and only bytes differ).

Faults: every wait on a worker has a timeout (`timeout`, seconds). A worker that dies or stops answering
makes the run restart all workers from the last epoch-boundary state (at most `max_restarts` times; the
per-epoch reseeding makes the replay identical) or, when restarts are used up, fail with a
DistributedError that names the worker, the step and the checkpoint to resume from. Never a hang.

Ray is optional (`pip install boltc[distributed]`); without it `require_ray` raises DependencyError.
Tested with ray 2.60.0 on Python 3.11.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from boltc.errors import BoltError, DataError, DependencyError, Location
from boltc.runtime.dataset import Dataset
from boltc.runtime.distributed_exchange import combine, densify, grads_nbytes
from boltc.runtime.distributed_shard import (read_shard, row_ranges, shard_ranges, slice_dataset,
                                             svmlight_one_based)
from boltc.runtime.distributed_worker import Worker

INSTALL_HINT = "pip install boltc[distributed]"
EXCHANGES = ("sparse", "dense", "factors")     # touched rows | whole tensors (baseline) | sufficient factors


class DistributedError(BoltError):
    """A distributed run could not go on (worker died or timed out, cluster unreachable)."""


def require_ray():
    try:
        import ray
    except ImportError:
        raise DependencyError("distributed training (--workers / distributed(...)) needs Ray, which is not "
                              f"installed: {INSTALL_HINT}") from None
    return ray


# ---------------------------------------------------------------------------------------------- shards
def plan_shards(source, plan: dict, workers: int) -> list[dict]:
    """One shard description per worker; small, sent to the worker, which loads the rows itself."""
    if isinstance(source, (str, os.PathLike)):
        source = {"kind": "file", "path": str(source), "format": None}
    if isinstance(source, dict) and source.get("kind") == "synthetic":
        rows = int(source["rows"])
        return [{"kind": "synthetic", "source": source, "lo": lo, "hi": hi} for lo, hi in row_ranges(rows, workers)]
    if isinstance(source, dict) and source.get("kind", "file") == "file":
        from boltc.runtime.data import _guess_format
        path = str(source["path"])
        if not Path(path).exists():
            raise DataError("data file not found", Location(path, 0))
        fmt = source.get("format") or _guess_format(path)
        if fmt in ("xc", "svmlight") and not path.endswith(".gz"):
            one_based = fmt == "svmlight" and svmlight_one_based(path)
            return [{"kind": "range", "path": path, "start": a, "end": b, "format": fmt, "one_based": one_based}
                    for a, b in shard_ranges(path, workers)]
    # gzip, CSV/TSV, in-memory data: the driver reads once and hands each worker its slice
    from boltc.runtime.data import load_dataset
    ds = load_dataset(source, plan)
    return [{"kind": "dataset", "dataset": slice_dataset(ds, lo, hi)} for lo, hi in row_ranges(ds.rows, workers)]


def load_shard(spec: dict, plan: dict) -> Dataset:
    """Worker side: the rows of one shard, checked against the plan like any data source."""
    from boltc.runtime import data, synth
    if spec["kind"] == "dataset":
        return spec["dataset"]
    inp = next(i for i in plan["inputs"] if i.get("kind") in ("sparse", "dense"))
    classes = int(plan["target"]["classes"]) if plan.get("target") else None
    if spec["kind"] == "synthetic":
        opts = {k: v for k, v in spec["source"].items() if k not in ("kind", "loc")}
        opts.setdefault("features", int(inp["dim"]))
        if classes is not None:
            opts.setdefault("labels", classes)
        X, Y = synth.generate(opts, spec["lo"], spec["hi"])
        where = f"synthetic rows [{spec['lo']}, {spec['hi']})"
    else:
        X, Y = read_shard(spec["path"], spec["start"], spec["end"], spec["format"], int(inp["dim"]),
                          classes if spec["format"] == "xc" else None, spec["one_based"])
        where = spec["path"]
    ds = data._checked(X, Y, inp, plan, where)
    ds.meta["shard"] = {k: v for k, v in spec.items() if k != "source"}
    return ds


# ---------------------------------------------------------------------------------------------- worker side
class ShardWorker(Worker):
    """A Worker that loads its own shard and runs one synchronous update per call (one round trip).

    Construction only stores its arguments; `setup()` loads the shard and builds the executor, so a data
    error comes back as that call's exception (a DataError with file and line) rather than a dead actor.
    """

    def __init__(self, plan, state, shard_spec, rank, world, local_batch, backend="numpy", threads=1,
                 seed=0, exchange="sparse", fail_at=None, global_batch=None):
        self._args = (plan, state, shard_spec, rank, world, local_batch, backend, threads, seed)
        self.exchange, self.fail_at = exchange, fail_at
        self.global_batch = int(global_batch or plan["train"]["batch"])

    def setup(self) -> int:
        from boltc.runtime.executor import make_executor
        plan, state, spec, rank, world, local_batch, backend, threads, seed = self._args
        del self._args
        state = copy.deepcopy(state)     # Ray hands out read-only zero-copy arrays; a replica must own its own
        super().__init__(plan, state, load_shard(spec, plan), rank, world, local_batch,
                         partial(make_executor, backend=backend, threads=threads), seed=seed)
        by = {l["name"]: l for l in plan["layers"]}
        self.row_sparse = {(l, t) for (l, t) in self.shapes
                           if by[l].get("hash") or (by[l].get("input_sparse") and by[l].get("layout") == "in_major")}
        return self.data.rows

    def sync_step(self, prev, update: int, accumulate: int, record: bool = False):
        """Apply the previous combined update (if any), then compute this update's local gradient.

        `prev` = (combined grads, lr, label ids, epoch, index in epoch, updates per epoch) or None.
        Returns (grads, examples, loss sum, label ids[, rows, active]).
        """
        if prev is not None:
            self.finish(prev)
        if self.fail_at is not None and update == self.fail_at:
            self.die()                                    # test hook for the fault path
        if self.exchange == "factors":
            parts = [self.compute_factors(record) for _ in range(accumulate)]
            out = ([p[0] for p in parts], sum(p[1] for p in parts), sum(p[2] for p in parts),
                   np.concatenate([p[3] for p in parts]))
            return out + ((np.concatenate([p[4] for p in parts]), [p[5] for p in parts]) if record else ())
        parts = [self.compute(update, record) for _ in range(accumulate)]
        if accumulate == 1:
            grads, n, loss, labels = parts[0][:4]
        else:
            grads = combine([p[0] for p in parts], [p[1] for p in parts])
            n, loss = sum(p[1] for p in parts), sum(p[2] for p in parts)
            labels = np.concatenate([p[3] for p in parts])
        if self.exchange == "dense":
            grads = densify(grads, self.shapes)
        extra = (np.concatenate([p[4] for p in parts]), [p[5] for p in parts]) if record else ()
        return (grads, n, loss, labels) + extra

    def compute_factors(self, record: bool):
        """One local batch's sufficient factors (distributed_factors.py) instead of its gradient."""
        from boltc.runtime import distributed_factors as fx
        t0 = time.perf_counter()
        rows = self._next_rows()
        batch = self.data.take(rows)
        active = self.select_active(batch)
        losses, factors = fx.local_factors(self.plan, self.state, batch, active, self.global_batch)
        labels = batch.labels.indices.astype(np.int32) if self._counts_labels() else np.zeros(0, np.int32)
        self.compute_seconds += time.perf_counter() - t0
        return (factors, int(rows.size), float(np.sum(losses)), labels) + ((rows, active) if record else ())

    def _counts_labels(self) -> bool:
        return self.output is not None and "label_count" in self.state.params.get(self.output["name"], {})

    def die(self):
        os._exit(3)                                       # the actor's process goes away, as on a lost machine

    def finish(self, prev) -> None:
        grads, lr, labels, epoch, index, per_epoch = prev
        if self.exchange == "factors":
            from boltc.runtime.distributed_factors import rebuild
            t0 = time.perf_counter()
            grads = rebuild(self.plan, grads)
            self.apply_seconds += time.perf_counter() - t0
        if self.exchange == "dense":   # a dense sum does not say which rows were touched: take the nonzero ones
            grads = {k: (_nonzero_rows(g) if k in self.row_sparse else g) for k, g in grads.items()}
        self.apply(grads, lr, labels)
        self.after_update(epoch, index, per_epoch)


def _nonzero_rows(g):
    from boltc.runtime.distributed_exchange import RowGrad
    v = g.values
    nz = np.flatnonzero(v.reshape(v.shape[0], -1).any(axis=1)).astype(np.int32)
    return RowGrad(nz, np.ascontiguousarray(v[nz]))


# ---------------------------------------------------------------------------------------------- runners
class _WorkerFailed(Exception):
    """`lost` = the worker died or stopped answering (worth a restart); otherwise it raised (a bug: don't)."""

    def __init__(self, rank: int, why: str, lost: bool = True):
        super().__init__(why)
        self.rank, self.why, self.lost = rank, why, lost


class _Lost(Exception):
    pass


def _raise_lost():
    raise _Lost()


class InProcessRunner:
    """Workers as plain objects in this process: the same protocol without Ray (tests, debugging)."""

    def __init__(self, workers: list):
        self.workers = workers
        for w in workers:
            w.die = _raise_lost                           # a simulated death must not end this process

    def share(self, obj):
        return obj

    def call(self, method: str, per_worker_args=None, timeout=None):
        out = []
        for i, w in enumerate(self.workers):
            args = per_worker_args[i] if per_worker_args else ()
            try:
                out.append(getattr(w, method)(*args))
            except _Lost:
                raise _WorkerFailed(i, "died (simulated)") from None
        return out

    def shutdown(self):
        self.workers = []


class RayRunner:
    """Workers as Ray actors; every wait has a deadline and a dead actor is reported by rank."""

    def __init__(self, ray, actors):
        self.ray, self.actors = ray, actors

    def share(self, obj):
        """Put a payload every worker needs into the object store once (a top-level ref arg is resolved)."""
        return None if obj is None else self.ray.put(obj)

    def call(self, method: str, per_worker_args=None, timeout=300.0):
        ray = self.ray
        refs = [getattr(a, method).remote(*(per_worker_args[i] if per_worker_args else ()))
                for i, a in enumerate(self.actors)]
        deadline = time.monotonic() + timeout
        out = []
        for i, ref in enumerate(refs):
            try:
                out.append(ray.get(ref, timeout=max(0.1, deadline - time.monotonic())))
            except ray.exceptions.GetTimeoutError:
                raise _WorkerFailed(i, f"did not answer within {timeout:.0f} s") from None
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ObjectLostError) as e:
                raise _WorkerFailed(i, f"died ({type(e).__name__})") from None
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None) or e
                if isinstance(cause, BoltError):
                    raise cause from None                 # a user error on the worker (bad data row, ...)
                raise _WorkerFailed(i, f"raised {type(cause).__name__}: {cause}", lost=False) from None
        return out

    def shutdown(self):
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:                               # already dead: nothing to release
                pass
        self.actors = []


def connect(address: str | None, workers: int, cpus_per_worker: float = 1.0, temp_dir: str | None = None):
    """Join (`address` = "auto" or "ray://host:port") or start a local Ray instance. -> (ray, started_here)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    try:
        if address in (None, "", "local"):
            cpus = max(os.cpu_count() or 1, int(math.ceil(workers * cpus_per_worker)))
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     _temp_dir=temp_dir or f"/tmp/boltc_ray_{os.getpid()}")
        else:
            ray.init(address=address, log_to_driver=False)
    except Exception as e:       # ConnectionError, ValueError, RuntimeError from ray.init: say where
        raise DistributedError(f"could not start or join the Ray cluster at {address or 'a new local instance'}: {e}") from None
    return ray, True


def _start_workers(kind, ray, plan, state, shards, local, opts, fail_at, timeout):
    args = [(plan, None, s, r, len(shards), local[r], opts["backend"], opts["threads"], opts["seed"],
             opts["exchange"], (fail_at or {}).get(r), opts["global_batch"]) for r, s in enumerate(shards)]
    if kind == "inprocess":
        ws = []
        for a in args:
            a = list(a)
            a[1] = copy.deepcopy(state)                      # a replica each, as on separate machines
            ws.append(ShardWorker(*a))
        runner = InProcessRunner(ws)
        runner.rows = runner.call("setup")
        return runner
    remote_cls = ray.remote(num_cpus=opts["cpus_per_worker"], max_restarts=0)(ShardWorker)
    state_ref = ray.put(state)
    actors = []
    for a in args:
        a = list(a)
        a[1] = state_ref
        actors.append(remote_cls.remote(*a))
    runner = RayRunner(ray, actors)
    runner.rows = runner.call("setup", timeout=timeout)  # placed and loaded, or a clear error
    return runner


# ---------------------------------------------------------------------------------------------- driver
@dataclass
class DistributedResult:
    state: object
    history: dict = field(default_factory=dict)    # the Trainer's format: {"epochs": [record...], "step": n}
    stats: dict = field(default_factory=dict)
    records: list = field(default_factory=list)    # with record=True: per update, per worker (rows, active)


def _split(total: int, n: int) -> list[int]:
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def train_distributed(plan: dict, state, train_source, validation=None, workers: int = 2,
                      address: str | None = None, *, epochs: int | None = None, exchange: str = "sparse",
                      exchange_every: int = 1, backend: str = "numpy", threads_per_worker: int = 1,
                      cpus_per_worker: float = 1.0, timeout: float = 300.0, max_restarts: int = 1,
                      checkpoint=None, source: str = "", history: dict | None = None,
                      epochs_done: int | None = None, max_updates: int | None = None, in_process: bool = False,
                      record: bool = False, progress=None, fail_at: dict | None = None) -> DistributedResult:
    """Train `state` (a ModelState for `plan`) data-parallel on `workers` replicas; returns the trained state.

    train_source: a path, a plan data entry (file or synthetic) or a Dataset. validation: a Dataset (or
    None) evaluated by the driver after each epoch (the trainer's `evaluate`, dense inference).
    address: None = start a local Ray instance, "auto" = the running cluster, "ray://host:port" = Ray
    client. checkpoint: a path (a `.boltc` checkpoint written after every `checkpoint_every` epochs in
    the single-machine trainer's format, so `boltc train --resume` works on it either way) or a
    callable(state, epochs_done, history). Resuming: pass the checkpoint's state, its history and
    epochs_done (default: state.step // updates per epoch); epochs run from there.
    in_process=True runs the same protocol without Ray. fail_at={rank: update} kills a worker at that
    update (tests of the fault path). Returns the final state, the history and exchange statistics.
    """
    if exchange not in EXCHANGES:
        raise BoltError(f"exchange must be one of {', '.join(EXCHANGES)}, not {exchange!r}")
    if exchange == "factors":
        from boltc.runtime.distributed_factors import supports
        if not supports(plan):
            raise BoltError("exchange 'factors' handles models made of fc layers only; use 'sparse'")
    workers, k = int(workers), max(1, int(exchange_every))
    if workers < 1:
        raise BoltError("workers must be at least 1")
    train = plan["train"]
    epochs = int(train.get("epochs", 1) if epochs is None else epochs)
    batch = int(train["batch"])
    if batch < workers:
        raise BoltError(f"batch {batch} is smaller than the number of workers ({workers})")
    local = _split(batch, workers)
    shards = plan_shards(train_source, plan, workers)
    opts = {"backend": backend, "threads": threads_per_worker, "seed": int(train.get("seed", 0)),
            "exchange": exchange, "cpus_per_worker": cpus_per_worker, "global_batch": batch * k}
    ray, started = (None, False) if in_process else connect(address, workers, cpus_per_worker)
    kind = "inprocess" if in_process else "ray"
    log = progress or (lambda msg: None)
    restarts, records, worker_seconds = 0, [], []
    history = dict(history or {})
    history.setdefault("epochs", [])
    save = _checkpointer(checkpoint, source, plan)
    bytes_up = bytes_down = updates_done = examples = 0
    exchange_seconds = 0.0
    t_start = time.perf_counter()
    try:
        runner = _start_workers(kind, ray, plan, state, shards, local, opts, fail_at, timeout)
        total_rows = sum(runner.rows)
        if total_rows == 0:
            raise DataError("the training data has no rows")
        per_epoch = max(1, math.ceil(total_rows / (batch * k)))
        total_updates = epochs * per_epoch
        from boltc.runtime.optim import lr_at
        start = int(state.step) // per_epoch if epochs_done is None else int(epochs_done)
        last_good = (start, state)                          # resume: continue after the epochs done
        epoch = last_good[0]
        while epoch < epochs:
            try:
                runner.call("start_epoch", [(epoch,)] * workers, timeout=timeout)
                t0, loss_sum, n_sum, prev, lr = time.perf_counter(), 0.0, 0, None, float(train["lr"])
                for index in range(per_epoch):
                    update = epoch * per_epoch + index
                    if max_updates is not None and update >= max_updates:
                        break
                    lr = lr_at(float(train["lr"]), train.get("schedule"), update, total_updates, per_epoch)
                    shared = runner.share(prev)
                    parts = runner.call("sync_step", [(shared, update, k, record)] * workers, timeout=timeout)
                    tx = time.perf_counter()
                    labels = np.concatenate([p[3] for p in parts])
                    if exchange == "factors":            # factors cannot be summed: all of them, in worker order
                        from boltc.runtime.distributed_factors import factors_nbytes
                        grads = [f for p in parts for f in p[0]]
                        up = sum(factors_nbytes(f) for p in parts for f in p[0]) + labels.nbytes
                        down = up
                    else:
                        grads = combine([p[0] for p in parts], [p[1] for p in parts])
                        up, down = sum(grads_nbytes(p[0]) + p[3].nbytes for p in parts), grads_nbytes(grads) + labels.nbytes
                    bytes_up, bytes_down = bytes_up + up, bytes_down + workers * down
                    exchange_seconds += time.perf_counter() - tx
                    prev = (grads, lr, labels, epoch, index, per_epoch)
                    n = sum(p[1] for p in parts)
                    loss_sum, n_sum, updates_done, examples = loss_sum + sum(p[2] for p in parts), n_sum + n, updates_done + 1, examples + n
                    if record:
                        records.append([(p[4], p[5]) for p in parts])
                if prev is not None:                         # the epoch's last update, then the epoch's state
                    runner.call("finish", [(runner.share(prev),)] * workers, timeout=timeout)
                worker_seconds = runner.call("timings", timeout=timeout)
                # Ray returns read-only zero-copy arrays: copy, so the caller can keep training the state
                new_state = copy.deepcopy(runner.call("get_state", timeout=timeout)[0] if kind == "ray"
                                          else runner.workers[0].state)
            except _WorkerFailed as f:
                where = f"worker {f.rank} {f.why} in epoch {epoch + 1}"
                runner.shutdown()
                if not f.lost:
                    raise DistributedError(where) from None
                if restarts >= max_restarts:
                    raise DistributedError(f"{where}; gave up after {restarts} restart(s). Resume from the last "
                                           f"checkpoint (epoch {last_good[0]}) with --resume") from None
                restarts += 1
                log(f"{where}: restarting all workers from epoch {last_good[0] + 1} (restart {restarts}/{max_restarts})")
                epoch, state_to_load = last_good
                runner = _start_workers(kind, ray, plan, state_to_load, shards, local, opts, None, timeout)
                continue
            seconds = time.perf_counter() - t0
            entry = {"epoch": epoch + 1, "loss": loss_sum / max(1, n_sum), "seconds": seconds,
                     "examples_per_s": n_sum / max(seconds, 1e-9), "upkeep_seconds": 0.0, "upkeep_share": 0.0,
                     "lr": lr, "workers": workers, "exchange": exchange}
            if validation is not None and validation.labels is not None:
                from boltc.runtime.executor import make_executor
                from boltc.runtime.trainer import evaluate, metric_names
                ex = make_executor(plan, new_state, backend=backend, threads=threads_per_worker)
                entry["validation"] = evaluate(ex, validation, metric_names(plan),
                                               binary=(plan.get("target") or {}).get("kind") == "binary")
            history["epochs"].append(entry)
            history["step"] = int(new_state.step)
            from boltc.runtime.trainer import format_record
            log(format_record(entry) + f" ({workers} workers, {exchange} exchange)")
            every = max(1, int(train.get("checkpoint_every", 1)))
            if save is not None and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
                save(new_state, epoch + 1, history)
            last_good = (epoch + 1, new_state)
            epoch += 1
            if max_updates is not None and updates_done >= max_updates:
                break
        final = last_good[1]
    finally:
        try:
            runner.shutdown()
        except NameError:
            pass
        if started:
            ray.shutdown()
    wall = time.perf_counter() - t_start
    stats = {"workers": workers, "exchange": exchange, "exchange_every": k, "updates": updates_done,
             "examples": examples, "restarts": restarts, "bytes_to_driver": bytes_up,
             "bytes_from_driver": bytes_down,
             "bytes_per_update_per_worker": (bytes_up + bytes_down) / max(1, updates_done) / workers,
             "combine_seconds": exchange_seconds, "seconds": wall,
             "worker_seconds": worker_seconds if updates_done else []}
    return DistributedResult(state=final, history=history, stats=stats, records=records)


def _checkpointer(checkpoint, source: str, plan: dict):
    """A path -> save a `.boltc` checkpoint exactly as the single-machine Trainer does."""
    if checkpoint is None or callable(checkpoint):
        return checkpoint

    def save(state, epochs_done, history):
        from boltc.runtime import savefile
        saved = savefile.state_to_saved(source, plan, state, history, {"epochs_done": epochs_done, "sampler": None},
                                        with_optimizer=True)
        savefile.save_model(Path(checkpoint), saved)
    return save


# ---------------------------------------------------------------------------------------------- API glue
def fit_model(model, train=None, validation=None, epochs: int | None = None, *, workers: int | None = None,
              address: str | None = None, exchange: str | None = None, checkpoint=None, resume: bool = False,
              progress: bool = True) -> dict:
    """`Model.fit` on a Ray cluster: what `boltc train --workers N` and a `distributed(...)` train block run.

    Settings come from the arguments, else from the plan's `train.distributed` block. `address` "auto"
    (the .bolt default) joins the running cluster when there is one and otherwise starts a local one;
    None starts a local one; "ray://host:port" uses Ray client. Checkpoints and `resume` use the
    single-machine trainer's file format, so a run may switch between one machine and many.
    """
    import sys
    from boltc.runtime import savefile
    dist = dict(model.plan.get("train", {}).get("distributed") or {})
    workers = int(workers or dist.get("workers") or 2)
    address = address if address is not None else dist.get("address")
    train = train if train is not None else model.data_source("train")
    if train is None:
        raise DataError("no training data: pass it to fit() or name it in the model's data block")
    if validation is None:
        validation = model.data_source("validation") or model.data_source("test")
    if not (isinstance(train, (str, os.PathLike)) or (isinstance(train, dict) and "kind" in train)):
        train = model.dataset(train)                       # in-memory data: the driver slices it
    val_ds = model.dataset(validation) if validation is not None else None
    state, history, done = model.state, {"epochs": list(model.history.get("epochs", []))}, None
    if resume and checkpoint and Path(checkpoint).exists():
        saved = savefile.load_model(checkpoint)
        if saved.plan.get("layers") != model.plan.get("layers"):
            raise BoltError(f"checkpoint {checkpoint} is for a different model (its layers differ)")
        state, history = savefile.state_from_saved(saved, checkpoint), dict(saved.history or {})
        done = int((saved.optimizer or {}).get("epochs_done", 0))
    log = (lambda msg: print(msg, file=sys.stderr)) if progress else None
    res = train_distributed(model.plan, state, train, val_ds, workers, _resolve_address(address),
                            epochs=epochs if epochs is not None else model.plan["train"].get("epochs", 1),
                            exchange=exchange or dist.get("exchange", "sparse"),
                            exchange_every=int(dist.get("exchange_every", 1)),
                            backend=getattr(model, "backend", None) or "numpy", checkpoint=checkpoint,
                            source=getattr(model, "source", ""), history=history, epochs_done=done, progress=log)
    model._set_state(res.state)
    model.history = dict(res.history, distributed=res.stats)
    return model.history


def _resolve_address(address: str | None) -> str | None:
    """"auto": a running cluster if `ray status` would find one (RAY_ADDRESS or a local head), else a new
    local instance (None). Anything else is passed to ray.init as is."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return "auto"
    return "auto" if Path("/tmp/ray/ray_current_cluster").exists() else None
