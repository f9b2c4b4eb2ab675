"""Dynamic batching: requests that arrive together run as one `Model.predict` call on one thread.

Decisions:
- One inference thread. The native kernels already spread one batch over every core (runtime/exec/threads.py),
  so a second Python thread would only contend with them; batching is what buys throughput.
- Jobs batch together only when they ask the same thing of the same loaded model (the ServedModel
  object, top_k, exclude_seen). Dense inference batches across requests: a row's label ids are the ones
  `Model.predict` gives it alone, and its scores too for small layers; layers large enough for the BLAS
  path sum in a batch-size-dependent order, so scores can differ in the last digits (quickstart: 6e-9
  absolute). Sparse inference runs each request as its own call by default, so its answers are
  exactly `Model.predict`'s; batched, the 670k model's scores moved by up to 2e-5 relative (ids equal),
  so `batch_sparse` (--batch-sparse) is an opt-in that trades that exactness for throughput.
- A lone client (one connection seen in the last half second, no other request in flight, the inference
  thread idle) runs its request on the event-loop thread itself: nothing could join its batch, and the
  two thread hand-offs it saves are most of the server's own latency at concurrency 1 (more on a loaded
  machine, where each wake-up waits for a core). Counting connections rather than requests in flight
  matters: an inline request blocks the loop, so other clients' requests would never be seen in flight.
- The queue is bounded in rows (`max_queue`): a request that does not fit is refused at once (503 with
  Retry-After) instead of letting memory and latency grow without end.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time

import numpy as np

from boltc.errors import BoltError
from boltc.serve.rows import SparseRows

log = logging.getLogger("boltc.serve")


class QueueFull(Exception):
    pass


class Job:
    __slots__ = ("served", "X", "n", "top_k", "sparse", "exclude_seen", "future", "loop", "enqueued", "key")

    def __init__(self, served, X, n: int, top_k: int, sparse: bool, batch_sparse: bool = False,
                 exclude_seen: bool = False):
        self.served, self.X, self.n, self.top_k, self.sparse = served, X, n, top_k, sparse
        self.exclude_seen = exclude_seen
        # see the module docstring
        self.key = (id(served), top_k, sparse, exclude_seen) if batch_sparse or not sparse else (id(self),)
        self.loop = asyncio.get_running_loop()
        self.future = self.loop.create_future()
        self.enqueued = time.perf_counter()


def _resolve(fut: asyncio.Future, value=None, error: BaseException | None = None) -> None:
    if fut.done():                      # the client went away; nothing to answer
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def concat_inputs(parts: list):
    """Join the inputs of several jobs (all the same form) into one batch."""
    first = parts[0]
    if isinstance(first, SparseRows):
        return (first if len(parts) == 1 else SparseRows.join(parts)).to_csr()
    if len(parts) == 1:
        return first
    if isinstance(first, np.ndarray):
        return np.vstack(parts)
    return [row for p in parts for row in p]


class Batcher:
    def __init__(self, max_batch: int = 64, max_wait: float = 0.001, max_queue: int = 4096, metrics=None):
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.metrics = metrics
        self.inflight = 0                 # requests inside the predict handlers (event-loop thread only)
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False                # a batch (or an inline request) is running
        self._clients: dict = {}          # client address -> last time it sent a predict request
        self._pruned = 0.0
        self._thread = threading.Thread(target=self._run, name="boltc-serve-infer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def submit(self, job: Job) -> asyncio.Future:
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self._queued_rows + job.n > self.max_queue and self._queue:
                raise QueueFull(f"the queue holds {self._queued_rows} rows (limit {self.max_queue})")
            self._queue.append(job)
            self._queued_rows += job.n
            self._depth()
            self._cond.notify()
        return job.future

    LONE_WINDOW = 0.5                     # seconds: "the only client" means the only one this recently

    def saw_client(self, client) -> None:
        now = time.monotonic()
        self._clients[client] = now
        if len(self._clients) > 1 and now - self._pruned > self.LONE_WINDOW / 4:
            self._pruned, old = now, now - self.LONE_WINDOW
            for c in [c for c, t in self._clients.items() if t < old]:
                del self._clients[c]

    def try_inline(self, served, X, n: int, top_k: int, sparse: bool, exclude_seen: bool = False):
        """(ids, scores) computed right here for a lone client's request when nothing runs or waits;
        None otherwise (then submit it)."""
        if len(self._clients) != 1 or self.inflight != 1 or n > self.max_batch:
            return None
        with self._cond:
            if self._busy or self._queue or self._stopping:
                return None
            self._busy = True
        try:
            if self.metrics:
                self.metrics.batch_rows.observe(n)
            return served.model.predict(concat_inputs([X]), top_k=top_k, sparse=sparse, batch=max(n, 1),
                                        exclude_seen=exclude_seen)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify()

    def poke(self) -> None:
        """Wake the inference thread to look at the in-flight count again."""
        with self._cond:
            self._cond.notify()

    def _depth(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(self._queued_rows)

    # ------------------------------------------------------------ inference thread
    def _take(self) -> list[Job] | None:
        """The next batch: same-key jobs in arrival order, after the bounded adaptive wait."""
        with self._cond:
            while not self._queue or self._busy:
                if self._stopping and not self._queue:
                    return None
                self._cond.wait()
            first = self._queue[0]
            deadline = first.enqueued + self.max_wait
            while True:
                rows = sum(j.n for j in self._queue if j.key == first.key)
                coming = self.inflight - len(self._queue)
                now = time.perf_counter()
                if len(first.key) == 1 or rows >= self.max_batch or coming <= 0 or now >= deadline or self._stopping:
                    break
                self._cond.wait(deadline - now)
            batch, rest, rows = [], collections.deque(), 0
            for j in self._queue:
                if j.key == first.key and (not batch or rows + j.n <= self.max_batch):
                    batch.append(j)
                    rows += j.n
                else:
                    rest.append(j)
            self._queue = rest
            self._queued_rows -= rows
            self._busy = True
            self._depth()
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._predict(batch)
            except Exception as e:           # a bug: answer 500 to these requests, keep serving
                log.exception("inference failed")
                for j in batch:
                    j.loop.call_soon_threadsafe(_resolve, j.future, None, e)
            finally:
                with self._cond:
                    self._busy = False

    def _predict(self, batch: list[Job]) -> None:
        first = batch[0]
        n = sum(j.n for j in batch)
        if self.metrics:
            self.metrics.batch_rows.observe(n)
        try:
            X = concat_inputs([j.X for j in batch])
            ids, scores = first.served.model.predict(X, top_k=first.top_k, sparse=first.sparse, batch=max(n, 1),
                                                     exclude_seen=first.exclude_seen)
        except BoltError as e:
            if len(batch) > 1:                # find the request the model refused; serve the others
                for j in batch:
                    self._predict([j])
                return
            first.loop.call_soon_threadsafe(_resolve, first.future, None, e)
            return
        lo = 0
        for j in batch:
            j.loop.call_soon_threadsafe(_resolve, j.future, (ids[lo:lo + j.n], scores[lo:lo + j.n]))
            lo += j.n
