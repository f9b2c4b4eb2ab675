"""Dynamic batching: requests that arrive together run as one `Model.predict` call on one thread.

Decisions:
- One inference thread. The native kernels already spread one batch over every core (runtime/exec/threads.py),
  so a second Python thread would only contend with them; batching is what buys throughput.
- Jobs batch together only when they ask the same thing of the same loaded model (the ServedModel
  object, top_k) with dense inference, so each row's answer is exactly what `Model.predict` gives it
  alone (dense kernels compute each row on its own; checked by tests/test_serve.py). Sparse inference
  runs each request as its own call: its random fill of short candidate lists is seeded per call and
  row position, so a row's scores would depend on the other requests sharing its batch.
- The wait is bounded (`max_wait`) and adaptive: the thread waits for more rows only while other requests
  are in flight (accepted by the HTTP layer but not yet queued). A lone client never waits; under load
  batches fill up to `max_batch` rows or `max_wait`, whichever comes first.
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
    __slots__ = ("served", "X", "n", "top_k", "sparse", "future", "loop", "enqueued", "key")

    def __init__(self, served, X, n: int, top_k: int, sparse: bool):
        self.served, self.X, self.n, self.top_k, self.sparse = served, X, n, top_k, sparse
        self.key = (id(served), top_k) if not sparse else (id(self),)      # see the module docstring
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
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue[0]
            deadline = first.enqueued + self.max_wait
            while True:
                rows = sum(j.n for j in self._queue if j.key == first.key)
                coming = self.inflight - len(self._queue)
                now = time.perf_counter()
                if first.sparse or rows >= self.max_batch or coming <= 0 or now >= deadline or self._stopping:
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

    def _predict(self, batch: list[Job]) -> None:
        first = batch[0]
        n = sum(j.n for j in batch)
        if self.metrics:
            self.metrics.batch_rows.observe(n)
        try:
            X = concat_inputs([j.X for j in batch])
            ids, scores = first.served.model.predict(X, top_k=first.top_k, sparse=first.sparse, batch=max(n, 1))
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
