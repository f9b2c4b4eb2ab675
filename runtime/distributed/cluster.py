"""The cluster side of distributed training: worker actors, the runners that call them, Ray start-up.

`ShardWorker` (a distributed_worker.Worker that loads its own shard and does one synchronous update per
call) runs either in this process (`InProcessRunner`: tests, debugging) or as Ray actors (`RayRunner`).
Both runners have the same `call(method, per_worker_args, timeout)`; the Ray one turns a dead or silent
actor into `_WorkerFailed(rank, why, lost=True)` and a worker's exception into `lost=False`, so the
driver (runtime/distributed/driver.py) can decide between restarting and failing.
"""
from __future__ import annotations

import copy
import math
import os
import socket
import time
from functools import partial

import numpy as np

from boltc.errors import BoltError, DependencyError
from boltc.runtime.distributed import factors as fx
from boltc.runtime.distributed.exchange import RowGrad, combine, densify
from boltc.runtime.distributed.factors import rebuild
from boltc.runtime.distributed.shard import load_shard
from boltc.runtime.distributed.worker import Worker, merge_facts, portable_state
from boltc.runtime.exec import executor  # looked up at call time (tests swap make_executor)

INSTALL_HINT = "pip install boltc[distributed]"
EXCHANGES = ("sparse", "dense", "factors")     # touched rows | whole tensors (baseline) | sufficient factors


class DistributedError(BoltError):
    """A distributed run could not go on (worker died or timed out, cluster unreachable)."""


def require_ray():
    try:
        import ray  # optional: the distributed extra
    except ImportError:
        raise DependencyError("distributed training (--workers / distributed(...)) needs Ray, which is not "
                              f"installed: {INSTALL_HINT}") from None
    return ray


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
        plan, state, spec, rank, world, local_batch, backend, threads, seed = self._args
        del self._args
        state = copy.deepcopy(state)     # Ray hands out read-only zero-copy arrays; a replica must own its own
        super().__init__(plan, state, load_shard(spec, plan), rank, world, local_batch,
                         partial(executor.make_executor, backend=backend, threads=threads), seed=seed)
        by = {l["name"]: l for l in plan["layers"]}
        self.row_sparse = {(l, t) for (l, t) in self.shapes
                           if by[l].get("hash") or (by[l].get("input_sparse") and by[l].get("layout") == "in_major")}
        return self.data.rows

    def sync_step(self, prev, update: int, accumulate: int, record: bool = False):
        """Apply the previous combined update (if any), then compute this update's local gradient.

        `prev` = (combined grads, lr, batch facts, epoch, index in epoch, updates per epoch) or None.
        Returns (grads, examples, loss sum, batch facts[, rows, active]).
        """
        if prev is not None:
            self.finish(prev)
        if self.fail_at is not None and update == self.fail_at:
            self.die()                                    # test hook for the fault path
        if self.exchange == "factors":
            parts = [self.compute_factors(record) for _ in range(accumulate)]
            out = ([p[0] for p in parts], sum(p[1] for p in parts), sum(p[2] for p in parts),
                   merge_facts([p[3] for p in parts]))
            return out + ((np.concatenate([p[4] for p in parts]), [p[5] for p in parts]) if record else ())
        parts = [self.compute(update, record) for _ in range(accumulate)]
        if accumulate == 1:
            grads, n, loss, facts = parts[0][:4]
        else:
            grads = combine([p[0] for p in parts], [p[1] for p in parts])
            n, loss = sum(p[1] for p in parts), sum(p[2] for p in parts)
            facts = merge_facts([p[3] for p in parts])
        if self.exchange == "dense":
            grads = densify(grads, self.shapes)
        extra = (np.concatenate([p[4] for p in parts]), [p[5] for p in parts]) if record else ()
        return (grads, n, loss, facts) + extra

    def compute_factors(self, record: bool):
        """One local batch's sufficient factors (factors.py) instead of its gradient."""
        t0 = time.perf_counter()
        rows = self._next_rows()
        batch = self.data.take(rows)
        active = self.select_active(batch)
        losses, factors = fx.local_factors(self.plan, self.state, batch, active, self.global_batch)
        self.compute_seconds += time.perf_counter() - t0
        return (factors, int(rows.size), float(np.sum(losses)), self.batch_facts(batch)) + \
            ((rows, active) if record else ())

    def die(self):
        os._exit(3)                                       # the actor's process goes away, as on a lost machine

    def finish(self, prev) -> None:
        grads, lr, facts, epoch, index, per_epoch = prev
        if self.exchange == "factors":
            t0 = time.perf_counter()
            grads = rebuild(self.plan, grads)
            self.apply_seconds += time.perf_counter() - t0
        if self.exchange == "dense":   # a dense sum does not say which rows were touched: take the nonzero ones
            grads = {k: (_nonzero_rows(g) if k in self.row_sparse else g) for k, g in grads.items()}
        self.apply(grads, lr, facts)
        self.after_update(epoch, index, per_epoch)


def _nonzero_rows(g):
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


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A `host:port` or `ray://host:port` that does not answer fails in seconds with a clear message;
    ray.init itself retries for minutes. "auto" is left to Ray (it finds the running cluster)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"Ray address {address!r} is not auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise DistributedError(f"cannot reach the Ray cluster at {address} ({e}); is it running?") from None


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
            _check_reachable(address)
            ray.init(address=address, log_to_driver=False)
    except DistributedError:
        raise
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
            a[1] = copy.deepcopy(portable_state(state))      # a replica each, as on separate machines
            ws.append(ShardWorker(*a))
        runner = InProcessRunner(ws)
        runner.rows = runner.call("setup")
        return runner
    remote_cls = ray.remote(num_cpus=opts["cpus_per_worker"], max_restarts=0)(ShardWorker)
    state_ref = ray.put(portable_state(state))
    actors = []
    for a in args:
        a = list(a)
        a[1] = state_ref
        actors.append(remote_cls.remote(*a))
    runner = RayRunner(ray, actors)
    runner.rows = runner.call("setup", timeout=timeout)  # placed and loaded, or a clear error
    return runner
