"""A persistent thread pool that splits a range [0, n) into one contiguous slice per thread.

Kernels never start threads; they take their slice [lo, hi) as the first two arguments. The calls go
through ctypes CFUNCTYPE pointers, which release the GIL for the duration of the native call, so the
Python threads here really run the kernels in parallel. The calling thread runs slice 0 itself.

Decision: contiguous equal slices (not work stealing). The kernels' cost per row is nearly uniform
(the same K neurons per example, the same row width per touched neuron), and contiguous slices keep
each thread's writes in its own cache lines. Results never depend on how the range is cut because
every kernel writes only the rows of its own slice (see docs/native.md).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor


def default_threads() -> int:
    env = os.environ.get("BOLTC_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ThreadPool:
    def __init__(self, threads: int = 0):
        self.threads = threads if threads and threads > 0 else default_threads()
        self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="boltc") if self.threads > 1 else None
        self._lock = threading.Lock()

    def slices(self, n: int, min_per_thread: int = 1) -> list[tuple[int, int]]:
        t = max(1, min(self.threads, n // max(1, min_per_thread)))
        step, extra = divmod(n, t)
        out, lo = [], 0
        for i in range(t):
            hi = lo + step + (1 if i < extra else 0)
            out.append((lo, hi))
            lo = hi
        return out

    def run(self, fn, n: int, *args, per_thread=None, min_per_thread: int = 1) -> None:
        """fn(lo, hi, *args[, *per_thread[i]]) for each slice (a tuple per_thread[i] passes several
        scratch pointers); returns when every slice is done."""
        if n <= 0:
            return
        if self._pool is None or n < 2 * max(1, min_per_thread):
            # one slice (one thread, or too little work to split): run inline, no slicing or hand-off;
            # this is most calls of a batch-64 step, where the bookkeeping would cost as much as the kernel
            if per_thread is None:
                fn(0, n, *args)
            else:
                scr = per_thread[0]
                fn(0, n, *args, *(scr if isinstance(scr, tuple) else (scr,)))
            return
        parts = self.slices(n, min_per_thread)
        extra = (lambda i: per_thread[i] if isinstance(per_thread[i], tuple) else (per_thread[i],)) \
            if per_thread is not None else (lambda i: ())
        if len(parts) == 1 or self._pool is None:
            fn(0, n, *args, *extra(0))
            return
        with self._lock:  # one batch-wide job at a time: slices of two jobs never share the pool
            futs = [self._pool.submit(fn, lo, hi, *args, *extra(i)) for i, (lo, hi) in enumerate(parts) if i]
            fn(parts[0][0], parts[0][1], *args, *extra(0))
            for f in futs:
                f.result()

    def run_chunks(self, fn, bounds: list[tuple[int, int]], *args, per_chunk=None) -> None:
        """fn(lo, hi, *args, *per_chunk[c]) for fixed chunks c, dealt round-robin to the threads.
        Chunks (not threads) own output buffers, so sums over chunks are thread-count independent."""
        per_chunk = per_chunk or [()] * len(bounds)

        def work(t):
            for c in range(t, len(bounds), nthreads):
                lo, hi = bounds[c]
                if hi > lo:
                    fn(lo, hi, *args, *per_chunk[c])

        nthreads = min(self.threads, len(bounds)) if self._pool is not None else 1
        if nthreads <= 1:
            work(0) if nthreads == 1 else None
            return
        with self._lock:
            futs = [self._pool.submit(work, t) for t in range(1, nthreads)]
            work(0)
            for f in futs:
                f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
