"""Dense products on the host BLAS (numpy's sgemm), split by boltc's own thread pool.

Decisions:
- OpenBLAS's own threads stay out: on a shared 2-core machine under load, a 64 x 128 @ 128 x 128
  product took 32 ms with OpenBLAS's default threading and 0.3 ms on one thread
  (benchmarks/dense_blas.py, OPENBLAS_NUM_THREADS unset vs 1): its threads spin waiting for cores that
  other processes hold. So while one of these products runs, OpenBLAS is set to one thread
  (`openblas_set_num_threads_local`, OpenBLAS >= 0.3.27, which returns the previous count; the
  setting is process-wide, so it is put back right after the product), and the product is split by
  runtime/exec/threads.py's pool.
- Thread-count independence: the result is cut into fixed blocks (ROW_BLOCK rows, or NEURON_BLOCK
  columns when the batch is small: batch-1 inference of a wide layer), dealt round-robin to the threads.
  Each block is one sgemm call of the same shape whatever the thread count, so every element is
  computed the same way for any `threads`. Which cut is used depends on the shapes only.
- Where the per-thread setting is missing (another BLAS, an older OpenBLAS), the same blocks run, and
  BLAS's own threading applies inside each call (docs/native.md says so).
"""
from __future__ import annotations

import contextlib
import ctypes

import numpy as np

ROW_BLOCK = 64
NEURON_BLOCK = 8192


def _find_setter():
    """openblas_set_num_threads_local of the OpenBLAS numpy loaded, or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    for path in sorted(paths, key=lambda p: "numpy" not in p):      # numpy's own copy first
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


_SETTER = _find_setter()
SINGLE_THREADED = _SETTER is not None


@contextlib.contextmanager
def _one_blas_thread():
    if _SETTER is None:
        yield
        return
    previous = _SETTER(1)
    try:
        yield
    finally:
        _SETTER(previous)


def _run(pool, block, bounds) -> None:
    with _one_blas_thread():
        pool.run_chunks(block, bounds)


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


def matmul_nt(pool, x: np.ndarray, W: np.ndarray, bias=None) -> np.ndarray:
    """x @ W.T (+ bias): (B, in) x (dim, in) -> (B, dim), float32."""
    B, dim = x.shape[0], W.shape[0]
    out = np.empty((B, dim), np.float32)
    if B >= 2 * ROW_BLOCK or dim <= NEURON_BLOCK:
        def block(lo, hi):
            np.matmul(x[lo:hi], W.T, out=out[lo:hi])
        bounds = _blocks(B, ROW_BLOCK)
    else:
        def block(lo, hi):
            np.matmul(x, W[lo:hi].T, out=out[:, lo:hi])
        bounds = _blocks(dim, NEURON_BLOCK)
    _run(pool, block, bounds)
    if bias is not None:
        out += bias
    return out


def matmul_nn(pool, g: np.ndarray, W: np.ndarray) -> np.ndarray:
    """g @ W: (B, dim) x (dim, in) -> (B, in) (an fc's input gradient), split by example rows."""
    out = np.empty((g.shape[0], W.shape[1]), np.float32)

    def block(lo, hi):
        np.matmul(g[lo:hi], W, out=out[lo:hi])
    _run(pool, block, _blocks(g.shape[0], ROW_BLOCK))
    return out


def matmul_tn(pool, g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """g.T @ x: (B, dim) x (B, in) -> (dim, in) (an fc's weight gradient), split by neuron rows."""
    gT = np.ascontiguousarray(g.T)
    out = np.empty((g.shape[1], x.shape[1]), np.float32)

    def block(lo, hi):
        np.matmul(gT[lo:hi], x, out=out[lo:hi])
    _run(pool, block, _blocks(g.shape[1], ROW_BLOCK))
    return out
