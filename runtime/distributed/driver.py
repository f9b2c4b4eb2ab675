"""Data-parallel training on a Ray cluster: native workers, the update divided among them (docs/distributed.md).

    result = train_distributed(plan, state, train_source, validation, workers=4, address="auto")

Scheme (synchronous; every replica identical at the start of every update):
  1. Shards: the driver cuts the training file into `workers` byte ranges aligned to line starts
     (runtime/distributed/shard.py); each worker reads only its range. Synthetic sources are cut by row
     range (each worker generates only its rows); other sources are read once by the driver and sliced.
  2. Each update, worker i takes B_i = B / workers rows of its shard (the plan's batch B stays the
     global batch: same total batch as one process) and computes their gradient with the executor's
     split kernels (`gradients()`, no update); with `exchange_every=k` it sums k local batches first.
  3. The update is divided (ZeRO stage 1 on touched rows): worker j owns a row range of every tensor
     and its Adam moments; it fetches every worker's gradient rows in its range, sums them, applies
     lazy Adam and publishes its new rows, which every other worker fetches and installs
     (runtime/distributed/worker.py). Parts and rows move between workers through Ray's object store
     (peer to peer); the driver only hands out references and the per-batch facts (label ids, labels
     frozen tables missed), so no single process is on the path of every byte.

Modules: shard.py (byte-range shards), worker.py (a replica's update and its
share of the optimizer), cluster.py (worker actors, runners, Ray start-up), this file (the
synchronous driver loop, checkpoints, restarts, and `fit_model` for the API and CLI).

Faults: every wait on a worker has a timeout (`timeout`, seconds). A worker that dies or stops answering
makes the run restart all workers from the last epoch-boundary state (at most `max_restarts` times; the
per-epoch reseeding makes the replay identical) or, when restarts are used up, fail with a
DistributedError that names the worker, the step and the checkpoint to resume from. Never a hang. The
epoch-boundary state and the checkpoints hold the whole optimizer state, assembled from the workers'
shards, in the single-machine format; restarted or resumed workers take their rows of it again.

Ray is optional (`pip install boltc[distributed]`); without it `require_ray` raises DependencyError.
Tested with ray 2.60.0 on Python 3.11.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boltc.errors import BoltError, DataError
from boltc.runtime.distributed.cluster import (EXCHANGES, INSTALL_HINT, DistributedError,  # noqa: F401 (re-exported)
                                               _start_workers, _WorkerFailed, connect, require_ray)
from boltc.runtime.distributed.shard import load_shard, plan_shards  # noqa: F401 (re-exported)
from boltc.runtime import savefile
from boltc.runtime.distributed.worker import assemble_shared, assemble_state, facts_nbytes, merge_facts
from boltc.runtime.exec import executor  # looked up at call time (tests swap make_executor)
from boltc.runtime.exec.optim import lr_at
from boltc.runtime.sampler.adaptive import check_distributed
from boltc.runtime.train.trainer import evaluate, format_record, metric_names

# ---------------------------------------------------------------------------------------------- driver
# Updates per call of workers that meet directly (shared weights on one machine): the driver's calls
# and its deadline (timeout x updates of the call) are per chunk; the workers' links have their own
# timeout per meeting, so a silent worker is found within `timeout` either way.
MESH_CHUNK = 64

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
                      record: bool = False, progress=None, fail_at: dict | None = None,
                      share_weights: bool = True) -> DistributedResult:
    """Train `state` (a ModelState for `plan`) data-parallel on `workers` replicas; returns the trained state.

    train_source: a path, a plan data entry (file or synthetic) or a Dataset. validation: a Dataset (or
    None) evaluated by the driver after each epoch (the trainer's `evaluate`, dense inference).
    address: None = start a local Ray instance, "auto" = the running cluster, "ray://host:port" = Ray
    client. checkpoint: a path (a `.boltc` checkpoint written after every `checkpoint_every` epochs in
    the single-machine trainer's format, so `boltc train --resume` works on it either way) or a
    callable(state, epochs_done, history). Resuming: pass the checkpoint's state, its history and
    epochs_done (default: state.step // updates per epoch); epochs run from there.
    share_weights: workers on the driver's machine train on one shared copy of the weights
    (runtime/distributed/shared.py); False keeps a replica each, exchanging new rows as across machines.
    in_process=True runs the same protocol without Ray. fail_at={rank: update} kills a worker at that
    update (tests of the fault path). Returns the final state, the history and exchange statistics.
    """
    if not in_process:
        require_ray()                                   # before any data is read: fail fast, say what to install
    if exchange not in EXCHANGES:
        raise BoltError(f"exchange must be one of {', '.join(EXCHANGES)}, not {exchange!r}")
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
            "share_weights": share_weights, "address": address,
            "cpus_per_worker": cpus_per_worker, "global_batch": batch * k}
    ray, started = (None, False) if in_process else connect(address, workers, cpus_per_worker)
    kind = "inprocess" if in_process else "ray"
    log = progress or (lambda msg: None)
    restarts, records, worker_stats, shared_weights = 0, [], [], False
    history = dict(history or {})
    history.setdefault("epochs", [])
    save = _checkpointer(checkpoint, source, plan)
    facts_bytes = updates_done = examples = 0
    clock = {"wait": 0.0}                                  # seconds the driver blocked on the workers' results
    t_start = time.perf_counter()
    runner = None
    try:
        runner = _start_workers(kind, ray, plan, state, shards, local, opts, fail_at, timeout)
        shared_weights = runner.sharing
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
                t0, loss_sum, n_sum, lr = time.perf_counter(), 0.0, 0, float(train["lr"])
                todo = [(u, lr_at(float(train["lr"]), train.get("schedule"), u, total_updates, per_epoch), epoch,
                         u - epoch * per_epoch, per_epoch)
                        for u in range(epoch * per_epoch, (epoch + 1) * per_epoch) if max_updates is None or u < max_updates]
                run_epoch = _updates_on_mesh if runner.sharing else _updates_by_calls
                for parts in run_epoch(runner, todo, k, record, timeout, clock):
                    facts_bytes += workers * facts_nbytes(merge_facts([p[3] for p in parts]))
                    n = sum(p[1] for p in parts)
                    loss_sum, n_sum, updates_done, examples = loss_sum + sum(p[2] for p in parts), n_sum + n, updates_done + 1, examples + n
                    if record:
                        records.append([(p[5], p[6]) for p in parts])
                lr = todo[-1][1] if todo else lr
                worker_stats = runner.call("timings", timeout=timeout)
                shards_state = runner.call("get_state", timeout=timeout)
                # a copy of its own (Ray returns read-only zero-copy arrays; the shared file goes on
                # changing), so the caller can keep training it
                if runner.sharing:
                    last = epoch + 1 == epochs or (max_updates is not None and updates_done >= max_updates)
                    new_state = assemble_shared(shards_state[0][0], runner.shared_arrays, type(state), copy=not last)
                else:
                    new_state = assemble_state(shards_state[0][0], [s[1] for s in shards_state])
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
            upkeep = worker_stats[0]["upkeep"] if worker_stats else 0.0
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
            log(format_record(entry) + f" ({workers} workers)")
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
    stats = _stats(worker_stats, workers, k, exchange, updates_done, examples, restarts, facts_bytes, clock["wait"], wall)
    stats["shared_weights"] = shared_weights
    return DistributedResult(state=final, history=history, stats=stats, records=records)


def _updates_by_calls(runner, todo: list, k: int, record: bool, timeout: float, clock: dict):
    """The updates `todo` [(update, lr, epoch, index, per epoch)] as two calls per worker and update
    (grads_step, reduce_apply), submitted one update ahead: each call names the results it needs and
    its worker fetches them (the owners' parts, the new rows) when they exist. Yields each update's
    grads_step outputs (one per worker); failures surface at the waits."""
    prev = pending = None
    workers = len(runner.rows)
    for item in todo + [None]:
        current = None
        if item is not None:
            update, lr, epoch, index, per_epoch = item
            grads = runner.submit("grads_step", [(prev, update, k, record)] * workers)
            applied = runner.submit("reduce_apply", [(grads, lr)] * workers, num_returns=2)
            prev = ([a[0] for a in applied], grads, epoch, index, per_epoch)
            current = (grads, [a[1] for a in applied])
        if pending is not None:                           # the update before, read one behind
            tw = time.perf_counter()
            parts = runner.wait(pending[0], timeout=timeout)
            runner.wait(pending[1], timeout=timeout)
            clock["wait"] += time.perf_counter() - tw
            yield parts
        pending = current
    if prev is not None:                                  # the epoch's last update's new rows and upkeep
        runner.call("finish", [(prev,)] * workers, timeout=timeout)


def _updates_on_mesh(runner, todo: list, k: int, record: bool, timeout: float, clock: dict):
    """Workers that share their weights meet each other directly (mesh.py): one call per MESH_CHUNK
    updates; the driver only collects losses and facts."""
    workers = len(runner.rows)
    for c in range(0, len(todo), MESH_CHUNK):
        chunk = todo[c:c + MESH_CHUNK]
        tw = time.perf_counter()
        outs = runner.call_together("run_updates", [(chunk, k, record)] * workers, timeout=timeout * len(chunk))
        clock["wait"] += time.perf_counter() - tw
        yield from zip(*outs)


def _stats(worker_stats, workers, k, exchange, updates, examples, restarts, facts_bytes, wait_seconds, wall) -> dict:
    """Bytes and seconds per update, per worker (means over workers); worker counters start at the
    workers' last (re)start, so after a restart they cover the epochs since."""
    per = max(1, updates) * max(1, workers)
    mean = lambda key: sum(w[key] for w in worker_stats) / per            # noqa: E731
    out = {"workers": workers, "exchange": exchange, "exchange_every": k, "updates": updates,
           "examples": examples, "restarts": restarts, "seconds": wall,
           "driver_wait_seconds": wait_seconds, "facts_bytes_per_update": facts_bytes / max(1, updates),
           "worker_seconds": worker_stats if updates else []}
    if worker_stats:
        out.update({"bytes_sent_per_update_per_worker": mean("sent"),
                    "bytes_received_per_update_per_worker": mean("received"),
                    "bytes_per_update_per_worker": mean("sent") + mean("received"),
                    "gradient_bytes_sent_per_update_per_worker": mean("grads_sent"),
                    "row_bytes_sent_per_update_per_worker": mean("rows_sent"),
                    "seconds_per_update": {p: mean(p) for p in ("compute", "exchange", "update", "upkeep")},
                    "cpu_seconds_per_update": mean("cpu"),
                    "cpu_seconds_per_update_by_phase": {p: mean(f"cpu_{p}") for p in ("compute", "exchange", "update", "upkeep")}})
    return out


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
                            ("blend ridge(...)", (train.get("blend") or {}).get("weight")),
                            ("text(..., idf=true)", any(i.get("idf") for i in plan.get("inputs") or [])),
                            ("ensemble", int(train.get("ensemble", 1) or 1) > 1)) if on]
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
    check_distributed(model.plan.get("train", {}).get("sampler"), (lambda msg: print(msg, file=sys.stderr)) if progress else None,
                      where=model.file)
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
