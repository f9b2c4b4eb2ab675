"""Data-parallel training on a Ray cluster with a sparse gradient exchange (issue 8; docs/distributed.md).

    result = train_distributed(plan, state, train_source, validation, workers=4, address="auto")

Scheme (synchronous; every replica identical at every step):
  1. Shards: the driver cuts the training file into `workers` byte ranges aligned to line starts
     (runtime/distributed/shard.py); each worker reads only its range. Synthetic sources are cut by row
     range (each worker generates only its rows); other sources are read once by the driver and sliced.
  2. Each update, worker i takes B_i = B / workers rows of its shard (the global batch B of the plan is
     kept: same total batch as one process), computes forward + backward without updating, and sends
     only the touched rows of each gradient (row ids + values; exchange.py). With
     `exchange_every=k` a worker accumulates k local batches first (one update per k*B examples).
  3. The driver sums them weighted by example counts (= the mean over the global batch) and broadcasts
     the combined row-sparse gradient once through the Ray object store; every replica applies the same
     lazy Adam update and runs the same LSH upkeep (same seeds, same weights -> same tables).
  `exchange="dense"` sends every gradient tensor whole instead (the dense all-reduce baseline; replicas
  then recover touched rows as the nonzero ones, so both modes train identically and only bytes differ).
  `exchange="factors"` sends each fc layer's input and pre-activation gradient instead, from which
  every replica rebuilds the global gradient (factors.py): ~50x fewer bytes than rows here.

Modules: shard.py (byte-range shards), worker.py (a replica's step),
cluster.py (worker actors, runners, Ray start-up), exchange.py /
factors.py (what is sent and how it is combined), this file (the synchronous driver loop,
checkpoints, restarts, and `fit_model` for the API and CLI).

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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boltc.errors import BoltError, DataError
from boltc.runtime import savefile
from boltc.runtime.distributed.cluster import (EXCHANGES, INSTALL_HINT, DistributedError,  # noqa: F401 (re-exported)
                                               _start_workers, _WorkerFailed, connect, require_ray)
from boltc.runtime.distributed.exchange import combine, grads_nbytes
from boltc.runtime.distributed.factors import factors_nbytes, supports
from boltc.runtime.distributed.shard import load_shard, plan_shards  # noqa: F401 (re-exported)
from boltc.runtime.distributed.worker import facts_nbytes, merge_facts
from boltc.runtime.exec import executor  # looked up at call time (tests swap make_executor)
from boltc.runtime.exec.optim import lr_at
from boltc.runtime.train.trainer import evaluate, format_record, metric_names


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
    if not in_process:
        require_ray()                                   # before any data is read: fail fast, say what to install
    if exchange not in EXCHANGES:
        raise BoltError(f"exchange must be one of {', '.join(EXCHANGES)}, not {exchange!r}")
    if exchange == "factors":
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
    exchange_seconds = upkeep_before = 0.0
    t_start = time.perf_counter()
    runner = None
    try:
        runner = _start_workers(kind, ray, plan, state, shards, local, opts, fail_at, timeout)
        total_rows = sum(runner.rows)
        if total_rows == 0:
            raise DataError("the training data has no rows")
        per_epoch = max(1, math.ceil(total_rows / (batch * k)))
        total_updates = epochs * per_epoch
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
                    facts = merge_facts([p[3] for p in parts])
                    if exchange == "factors":            # factors cannot be summed: all of them, in worker order
                        grads = [f for p in parts for f in p[0]]
                        up = sum(factors_nbytes(f) for p in parts for f in p[0]) + facts_nbytes(facts)
                        down = up
                    else:
                        grads = combine([p[0] for p in parts], [p[1] for p in parts])
                        up = sum(grads_nbytes(p[0]) + facts_nbytes(p[3]) for p in parts)
                        down = grads_nbytes(grads) + facts_nbytes(facts)
                    bytes_up, bytes_down = bytes_up + up, bytes_down + workers * down
                    exchange_seconds += time.perf_counter() - tx
                    prev = (grads, lr, facts, epoch, index, per_epoch)
                    n = sum(p[1] for p in parts)
                    loss_sum, n_sum, updates_done, examples = loss_sum + sum(p[2] for p in parts), n_sum + n, updates_done + 1, examples + n
                    if record:
                        records.append([(p[4], p[5]) for p in parts])
                if prev is not None:                         # the epoch's last update, then the epoch's state
                    runner.call("finish", [(runner.share(prev),)] * workers, timeout=timeout)
                worker_seconds = runner.call("timings", timeout=timeout)
                # Ray returns read-only zero-copy arrays: copy, so the caller can keep training the state
                new_state = copy.deepcopy(runner.call("get_state", timeout=timeout)[0])
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
                upkeep_before = 0.0
                continue
            seconds = time.perf_counter() - t0
            upkeep = worker_seconds[0]["upkeep"] - upkeep_before if worker_seconds else 0.0
            upkeep_before += upkeep
            entry = {"epoch": epoch + 1, "loss": loss_sum / max(1, n_sum), "seconds": seconds,
                     "examples_per_s": n_sum / max(seconds, 1e-9), "upkeep_seconds": upkeep,
                     "upkeep_share": upkeep / seconds if seconds > 0 else 0.0,
                     "lr": lr, "workers": workers, "exchange": exchange}
            if validation is not None and validation.labels is not None:
                ex = executor.make_executor(plan, new_state, backend=backend, threads=threads_per_worker)
                entry["validation"] = evaluate(ex, validation, metric_names(plan),
                                               binary=(plan.get("target") or {}).get("kind") == "binary")
            history["epochs"].append(entry)
            history["step"] = int(new_state.step)
            log(format_record(entry) + f" ({workers} workers, {exchange} exchange)")
            every = max(1, int(train.get("checkpoint_every", 1)))
            if save is not None and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
                save(new_state, epoch + 1, history)
            last_good = (epoch + 1, new_state)
            epoch += 1
            if max_updates is not None and updates_done >= max_updates:
                break
        final = last_good[1]
    except _WorkerFailed as f:                                # while (re)starting workers
        raise DistributedError(f"worker {f.rank} {f.why} while starting the workers") from None
    finally:
        if runner is not None:                                # None: the workers never started
            runner.shutdown()
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
        saved = savefile.state_to_saved(source, plan, state, history, {"epochs_done": epochs_done, "sampler": None},
                                        with_optimizer=True)
        savefile.save_model(Path(checkpoint), saved)
    return save


# ---------------------------------------------------------------------------------------------- API glue
def _refuse_single_process_settings(plan: dict) -> None:
    """Settings the single-process trainer applies and the Ray workers do not yet: an error that says
    so, not a run that silently ignores them."""
    train = plan.get("train") or {}
    used = [w for w, on in (("class_weights", train.get("class_weights")),
                            ("label_smoothing", train.get("label_smoothing")),
                            ("text(..., idf=true)", any(i.get("idf") for i in plan.get("inputs") or []))) if on]
    if used:
        raise BoltError(f"{', '.join(used)}: not supported by distributed training (--workers / distributed(...)) "
                        "yet; train in one process, or leave the setting out")


def fit_model(model, train=None, validation=None, epochs: int | None = None, *, workers: int | None = None,
              address: str | None = None, exchange: str | None = None, checkpoint=None, resume: bool = False,
              progress: bool = True) -> dict:
    """`Model.fit` on a Ray cluster: what `boltc train --workers N` and a `distributed(...)` train block run.

    Settings come from the arguments, else from the plan's `train.distributed` block. `address` "auto"
    (the .bolt default) joins the running cluster when there is one and otherwise starts a local one;
    None starts a local one; "ray://host:port" uses Ray client. Checkpoints and `resume` use the
    single-machine trainer's file format, so a run may switch between one machine and many.
    """
    _refuse_single_process_settings(model.plan)
    require_ray()
    dist = dict(model.plan.get("train", {}).get("distributed") or {})
    workers = int(workers if workers is not None else (dist.get("workers") or 2))   # 0 is an error, not "unset"
    address = address if address is not None else dist.get("address")
    train = train if train is not None else model.data_source("train")
    if train is None:
        raise DataError("no training data: pass it to fit() or name it in the model's data block")
    if validation is None:
        # never the test set (issue 15); a path is sharded by the workers, so no holdout is carved here
        validation = model.data_source("validation")
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
