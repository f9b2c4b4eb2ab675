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
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from boltc.errors import BoltError, DependencyError
from boltc.runtime.distributed.shard import load_shard
from boltc.runtime.distributed.mesh import Mesh, PeerLost
from boltc.runtime.distributed.shared import SharedWeights, attach
from boltc.runtime.distributed.worker import CODES, COUNTS, NOT_TRAINED, TABLES, Worker, portable_state
from boltc.runtime.exec.state import aligned_copy
from boltc.runtime.exec import executor  # looked up at call time (tests swap make_executor)

INSTALL_HINT = "pip install boltc[distributed]"
# What workers exchange. `sparse`: the touched rows of each gradient, cut by owner, and the owners' new
# rows (ZeRO-1 on touched rows, runtime/distributed/worker.py). A dense all-reduce (every tensor whole)
# and sufficient factors (layer inputs + pre-activation gradients) are not offered: with the update
# divided among the workers, every worker must receive the new values of the global batch's touched
# rows whatever it sent, so factors would save only the smaller, gradient half of the traffic at the
# price of rebuilding dW from them on the hot path, and whole tensors move 3x the rows of the 100k
# model (docs/distributed.md has the figures).
EXCHANGES = ("sparse",)


# A local Ray instance started here runs its workers at the driver's priority. Ray's default (worker
# niceness 15) suits background tasks; these workers are the training job: on a machine shared with
# other jobs, nice 15 gave each worker a fraction of a single process's CPU share (measured: 2 workers
# at 0.4x one process at a load average of 15). A cluster started with `ray start` keeps its own
# setting: start it with RAY_worker_niceness=0 (docs/distributed.md).
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


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
    """A Worker that loads its own shard; each method is one round trip of the driver's protocol.

    Construction only stores its arguments; `setup()` loads the shard and builds the executor, so a data
    error comes back as that call's exception (a DataError with file and line) rather than a dead actor.
    transport "ray": parts and new rows go through Ray's object store (put here, fetched by the workers
    that need them: peer to peer); "local": in-process objects.
    """

    def __init__(self, plan, state, shard_spec, rank, world, local_batch, backend="numpy", threads=1,
                 seed=0, fail_at=None, global_batch=None, transport="local"):
        self._args = (plan, state, shard_spec, rank, world, local_batch, backend, threads, seed, global_batch)
        self.fail_at, self.transport = fail_at, transport

    def setup(self) -> int:
        plan, state, spec, rank, world, local_batch, backend, threads, seed, global_batch = self._args
        del self._args
        # Ray hands out read-only zero-copy arrays: a replica owns its weights and tables; of the moments
        # the Worker copies only its own rows
        state = type(state)(params=copy.deepcopy(state.params), m=state.m, v=state.v, step=int(state.step),
                            lsh=copy.deepcopy(state.lsh))
        put = get = None
        if self.transport == "ray":
            import ray  # optional: the distributed extra (this runs inside a Ray actor)
            put, get = ray.put, ray.get
        super().__init__(plan, state, load_shard(spec, plan), rank, world, local_batch,
                         partial(executor.make_executor, backend=backend, threads=threads), seed=seed,
                         global_batch=global_batch, put=put, get=get)
        if getattr(self.ex, "native", False):
            self.ex.split_kernels                         # compiled (or loaded from the cache) now, not in epoch 1
        return self.data.rows

    def label_counts(self):
        """This shard's label counts (the driver sums them for the negatives' weights), or None."""
        classes = int((self.plan.get("target") or {}).get("classes", 0))
        if self.data.labels is None or not classes:
            return None
        return np.bincount(self.data.labels.indices, minlength=classes).astype(np.float32)

    def set_label_frequency(self, counts) -> None:
        """The whole training set's label counts weight the training fill, as the single-machine
        trainer sets them (runtime/lsh/upkeep.py: measured better than running counts)."""
        upkeep = getattr(self.ex, "upkeep", None)
        if upkeep is not None and hasattr(upkeep, "set_label_frequency"):
            upkeep.set_label_frequency(counts)

    def grads_step(self, prev, update: int, accumulate: int = 1, record: bool = False):
        if prev is not None:
            self.finish(prev)
        if self.fail_at is not None and update == self.fail_at:
            self.die()                                    # test hook for the fault path
        return super().grads_step(None, update, accumulate, record)

    def node(self) -> str:
        """The Ray node this worker runs on (workers on the driver's node share its weights file)."""
        import ray  # optional: the distributed extra (this runs inside a Ray actor)
        return ray.get_runtime_context().get_node_id()

    def share_weights(self, shared, mesh_prefix: str, timeout: float) -> None:
        """Train on the machine's one copy of the weights (a shared file's spec, or in-process the
        arrays themselves) and link up with the other workers of the machine (mesh.py): from now on
        the updates run in `run_updates`, payloads pass by direct links, not through Ray."""
        mesh = Mesh(mesh_prefix, self.rank, self.world, timeout)
        mesh.connect()
        self.use_shared_weights(attach(shared) if "path" in shared else shared, mesh)
        self.put = self.get = _same

    def run_updates(self, updates: list, accumulate: int = 1, record: bool = False) -> list:
        return super().run_updates(self.mesh, updates, accumulate, record)

    def die(self):
        os._exit(3)                                       # the actor's process goes away, as on a lost machine


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


def _same(x):
    return x


class InProcessRunner:
    """Workers as plain objects in this process: the same protocol without Ray (tests, debugging).
    `submit` runs the calls at once, in worker order, and its handles are the results."""

    def __init__(self, workers: list):
        self.workers = workers
        self.sharing = False
        for w in workers:
            w.die = _raise_lost                           # a simulated death must not end this process

    def submit(self, method: str, per_worker_args=None, num_returns: int = 1):
        out = []
        for i, w in enumerate(self.workers):
            args = per_worker_args[i] if per_worker_args else ()
            try:
                out.append(getattr(w, method)(*args))
            except _Lost:
                raise _WorkerFailed(i, "died (simulated)") from None
        return out

    def wait(self, handles, timeout=None):
        return list(handles)

    def call_together(self, method: str, per_worker_args=None, timeout=None):
        """The calls on threads at once (workers that meet each other inside a call: `run_updates`).
        A simulated death is reported by the worker that died, not by the peers that lost it."""
        def one(i):
            args = per_worker_args[i] if per_worker_args else ()
            return getattr(self.workers[i], method)(*args)
        with ThreadPoolExecutor(len(self.workers)) as pool:
            futs = [pool.submit(one, i) for i in range(len(self.workers))]
            errors = [f.exception() for f in futs]
        dead = [i for i, e in enumerate(errors) if isinstance(e, _Lost)]
        if dead:
            raise _WorkerFailed(dead[0], "died (simulated)")
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [f.result() for f in futs]

    def call(self, method: str, per_worker_args=None, timeout=None):
        return self.submit(method, per_worker_args)

    def shutdown(self):
        for w in self.workers:
            if getattr(w, "mesh", None) is not None:
                w.mesh.close()                          # its sockets and sender thread, now rather than at GC
        self.workers = []

    def share_weights(self, state, opts, timeout) -> None:
        """In-process workers share one set of arrays (the same code path as a shared file)."""
        # copies: the workers write them, and `state` is what a restart replays from
        arrays = _shared_arrays(self.plan, state, lambda a: aligned_copy(np.array(a)))
        self.call_together("share_weights", [(arrays, _mesh_prefix(), timeout)] * len(self.workers))
        self.sharing, self.shared_arrays = True, arrays


class RayRunner:
    """Workers as Ray actors; every wait has a deadline and a dead actor is reported by rank.

    `submit` returns object references at once; a call may take the references of other calls'
    results (nested in its arguments, so Ray passes them unresolved) and fetch them itself."""

    def __init__(self, ray, actors):
        self.ray, self.actors = ray, actors
        self.shared, self.sharing = None, False

    def submit(self, method: str, per_worker_args=None, num_returns: int = 1):
        out = []
        for i, a in enumerate(self.actors):
            m = getattr(a, method)
            if num_returns != 1:
                m = m.options(num_returns=num_returns)
            out.append(m.remote(*(per_worker_args[i] if per_worker_args else ())))
        return out

    def wait(self, refs, timeout=300.0):
        """The results of one reference per worker (in worker order), or _WorkerFailed naming the worker."""
        ray = self.ray
        deadline = time.monotonic() + timeout
        out = []
        lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)
        for i, ref in enumerate(refs):
            try:
                out.append(ray.get(ref, timeout=max(0.1, deadline - time.monotonic())))
            except ray.exceptions.GetTimeoutError:
                raise _WorkerFailed(i, f"did not answer within {timeout:.0f} s") from None
            except lost as e:
                raise _WorkerFailed(i, f"died ({type(e).__name__})") from None
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None) or e
                if isinstance(cause, BoltError):
                    raise cause from None                 # a user error on the worker (bad data row, ...)
                if isinstance(cause, PeerLost):           # its link to a worker broke: name the one that died
                    raise self._dead_peer(refs, i, lost) from None
                if isinstance(cause, lost):               # it waited on a worker that died
                    raise _WorkerFailed(i, f"lost a peer ({type(cause).__name__})") from None
                raise _WorkerFailed(i, f"raised {type(cause).__name__}: {cause}", lost=False) from None
        return out

    def call(self, method: str, per_worker_args=None, timeout=300.0):
        return self.wait(self.submit(method, per_worker_args), timeout)

    def _dead_peer(self, refs, i: int, lost) -> "_WorkerFailed":
        for j, ref in enumerate(refs):
            if j == i:
                continue
            try:
                self.ray.get(ref, timeout=10)
            except lost as e:
                return _WorkerFailed(j, f"died ({type(e).__name__})")
            except Exception:                              # still running, or it lost a peer too
                pass
        return _WorkerFailed(i, "lost its link to a worker")

    def shutdown(self):
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:                               # already dead: nothing to release
                pass
        self.actors = []
        self.shared_arrays = None
        if self.shared is not None:
            self.shared.close()
            self.shared = None

    def share_weights(self, state, opts, timeout) -> None:
        """Workers that all run on the driver's machine share one copy of the weights (shared.py);
        otherwise (a worker on another node, or a Ray client connection) they keep replicas."""
        if str(opts.get("address") or "").startswith("ray://"):
            return
        here = self.ray.get_runtime_context().get_node_id()
        if any(n != here for n in self.call("node", timeout=timeout)):
            return
        self.shared = SharedWeights(_shared_arrays(self.plan, state, np.asarray))
        self.call("share_weights", [(self.shared.spec, _mesh_prefix(), timeout)] * len(self.actors), timeout=timeout)
        self.sharing, self.shared_arrays = True, attach(self.shared.spec)

    def call_together(self, method: str, per_worker_args=None, timeout=300.0):
        return self.call(method, per_worker_args, timeout)


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
                     _temp_dir=temp_dir or f"/tmp/boltc_ray_{os.getpid()}", _system_config=LOCAL_SYSTEM_CONFIG)
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
             (fail_at or {}).get(r), opts["global_batch"], "local" if kind == "inprocess" else "ray")
            for r, s in enumerate(shards)]
    if kind == "inprocess":
        ws = []
        for a in args:
            a = list(a)
            a[1] = copy.deepcopy(portable_state(state))      # a replica each, as on separate machines
            ws.append(ShardWorker(*a))
        runner = InProcessRunner(ws)
        runner.plan = plan
        runner.rows = runner.call("setup")
        _set_ownership(runner, timeout)
        if opts.get("share_weights", True) and len(ws) > 1:
            runner.share_weights(state, opts, timeout)
        return _share_label_frequency(runner, timeout)
    remote_cls = ray.remote(num_cpus=opts["cpus_per_worker"], max_restarts=0)(ShardWorker)
    state_ref = ray.put(portable_state(state))
    actors = []
    for a in args:
        a = list(a)
        a[1] = state_ref
        actors.append(remote_cls.remote(*a))
    runner = RayRunner(ray, actors)
    runner.plan = plan
    runner.rows = runner.call("setup", timeout=timeout)  # placed and loaded, or a clear error
    _set_ownership(runner, timeout)
    if opts.get("share_weights", True) and len(actors) > 1:
        runner.share_weights(state, opts, timeout)
    return _share_label_frequency(runner, timeout)


def _mesh_prefix() -> str:
    return f"boltc-mesh-{os.getpid()}-{time.monotonic_ns()}"


def _trained(state, copy) -> dict:
    return {(layer, t): copy(a) for layer, ts in state.params.items() for t, a in ts.items() if t not in NOT_TRAINED}


def _shared_arrays(plan, state, copy) -> dict:
    """What the workers of one machine share: the trained tensors and their moments (each owner
    updates its rows; the driver reads every worker's at an epoch's end from here, not through Ray),
    per LSH layer its tables and bucket counts (each worker refills and inserts into a share of the
    tables: worker.tables_share), and per DWTA-hashed layer a buffer for the neurons' codes of a table
    rebuild (worker.hash_share)."""
    out = _trained(state, copy)
    for layer, ts in state.params.items():
        for t in ts:
            if t not in NOT_TRAINED:
                out[(layer, t, "m")], out[(layer, t, "v")] = copy(state.m[layer][t]), copy(state.v[layer][t])
    for layer in plan["layers"]:
        idx = (getattr(state, "lsh", None) or {}).get(layer["name"])
        if idx is not None and layer.get("hash"):
            out[(layer["name"], TABLES)], out[(layer["name"], COUNTS)] = copy(idx.tables), copy(idx.counts)
            if idx.family == "dwta":
                out[(layer["name"], CODES)] = np.zeros((layer["dim"], idx.L), np.int32)
    return out


def _set_ownership(runner, timeout) -> None:
    """Every worker owns the same row ranges (ownership.py), cut from the whole training set's feature
    counts (the sum of the workers' shards') before the moments are sharded or the weights shared."""
    counts = runner.call("feature_counts", timeout=timeout)
    total = {name: sum(c[name] for c in counts) for name in counts[0]}
    runner.call("set_ownership", [(total, sum(runner.rows))] * len(counts), timeout=timeout)


def _share_label_frequency(runner, timeout):
    counts = runner.call("label_counts", timeout=timeout)
    if all(c is not None for c in counts):
        total = counts[0].copy()
        for c in counts[1:]:
            total += c
        runner.call("set_label_frequency", [(total,)] * len(counts), timeout=timeout)
    return runner
