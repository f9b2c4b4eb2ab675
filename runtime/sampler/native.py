"""The sampler's hot loops: sketch update and query, alias-table construction and draws.

Each operation has a NumPy implementation here (the oracle, and the fallback when native code cannot be
built) and a kernel (boltc/lower/sampler.py, bound by boltc/lower/kernels.py) that the tests check
against it. Callers pass `use_native`; `available()` says whether the kernels load.
"""
from __future__ import annotations

import threading

import numpy as np

from boltc.lower import kernels, sampler as sampler_kernels
from boltc.runtime.sampler.nw_sketch import EMPTY_COUNT, NWSketch

_LIBS: dict = {}                 # (rows, bits) -> _Kernels | False
_ALIAS = None                    # the shape-independent alias kernel (or False)
_LOCK = threading.Lock()


class _Kernels:
    """ctypes entry points of the sketch kernels for one (R, K)."""

    def __init__(self, rows: int, bits: int):
        self.lib = kernels.build(sampler_kernels.sketch_module(rows, bits))
        self.rows, self.bits = rows, bits
        self._update = self.lib.symbol("nw_update")
        self._query = self.lib.symbol("nw_query")

    def update(self, sketch: NWSketch, codes: np.ndarray, rows: np.ndarray, losses: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        losses = np.ascontiguousarray(losses, dtype=np.float64)
        self._update(0, rows.size, rows.ctypes.data, losses.ctypes.data, codes.ctypes.data,
                     sketch.loss.ctypes.data, sketch.count.ctypes.data)
        sketch.total_loss += float(losses.sum())
        sketch.total_count += float(losses.size)

    def query(self, sketch: NWSketch, codes: np.ndarray) -> np.ndarray:
        out = np.empty(codes.shape[0], dtype=np.float64)
        prior = np.array([sketch.prior, EMPTY_COUNT], dtype=np.float64)
        self._query(0, codes.shape[0], codes.ctypes.data, sketch.loss.ctypes.data, sketch.count.ctypes.data,
                    prior.ctypes.data, out.ctypes.data)
        return out


class _HashKernel:
    """SRP hashing of CSR rows for one (R, K): z = x . P (through the feature fold), then K sign bits."""

    def __init__(self, rows: int, bits: int):
        self.lib = kernels.build(sampler_kernels.hash_module(rows, bits))
        self._hash = self.lib.symbol("srp_hash")

    def hash(self, hasher, x) -> np.ndarray:
        n = x.shape[0]
        indptr = np.ascontiguousarray(x.indptr, dtype=np.int64)
        indices = np.ascontiguousarray(x.indices, dtype=np.int32)
        data = np.ascontiguousarray(x.data, dtype=np.float32)
        proj = np.ascontiguousarray(hasher.proj, dtype=np.float32)
        z = np.empty(hasher.rows * hasher.bits, dtype=np.float32)
        codes = np.empty((n, hasher.rows), dtype=np.int32)
        self._hash(0, n, indptr.ctypes.data, indices.ctypes.data, data.ctypes.data, hasher.feat_row.ctypes.data,
                   hasher.feat_sign.ctypes.data, proj.ctypes.data, z.ctypes.data, codes.ctypes.data)
        return codes


def hash_rows(hasher, x, use_native: bool) -> np.ndarray:
    """(B, R) int32 bucket ids of the CSR rows x (native when available; else SRPHasher.hash)."""
    key = ("hash", hasher.rows, hasher.bits)
    if use_native:
        if key not in _LIBS:
            with _LOCK:
                if key not in _LIBS:
                    try:
                        _LIBS[key] = _HashKernel(hasher.rows, hasher.bits)
                    except Exception:  # noqa: BLE001
                        _LIBS[key] = False
        if _LIBS[key]:
            return _LIBS[key].hash(hasher, x)
    return hasher.hash(x)


class _AliasKernel:
    def __init__(self):
        self.lib = kernels.build(sampler_kernels.alias_module())
        self._build = self.lib.symbol("alias_build")

    def build(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = p.shape[0]
        a = np.asarray(p, dtype=np.float64) * n          # scratch: the kernel consumes it
        prob = np.empty(n, dtype=np.float64)
        alias = np.empty(n, dtype=np.int64)
        work = np.empty(n, dtype=np.int64)
        self._build(n, a.ctypes.data, prob.ctypes.data, alias.ctypes.data, work.ctypes.data)
        return prob, alias


def _kernels(rows: int, bits: int):
    key = (int(rows), int(bits))
    if key not in _LIBS:
        with _LOCK:
            if key not in _LIBS:
                try:
                    _LIBS[key] = _Kernels(*key)
                except Exception:  # noqa: BLE001 - no native code here: the NumPy path stays correct
                    _LIBS[key] = False
    return _LIBS[key]


def _alias_kernel():
    global _ALIAS
    if _ALIAS is None:
        with _LOCK:
            if _ALIAS is None:
                try:
                    _ALIAS = _AliasKernel()
                except Exception:  # noqa: BLE001
                    _ALIAS = False
    return _ALIAS


def available() -> bool:
    return bool(_alias_kernel()) and bool(_kernels(1, 1))


# -- sketch ----------------------------------------------------------------------------------------
def update(sketch: NWSketch, codes: np.ndarray, rows: np.ndarray, losses: np.ndarray, use_native: bool) -> None:
    """Add losses[i] and 1 to the R cells of example rows[i] (codes: (N, R) bucket ids)."""
    k = _kernels(sketch.rows, sketch.bits) if use_native else None
    if k:
        k.update(sketch, codes, rows, losses)
    else:
        sketch.update(codes[rows], losses)


def query(sketch: NWSketch, codes: np.ndarray, use_native: bool) -> np.ndarray:
    """(N,) predicted loss of every example."""
    k = _kernels(sketch.rows, sketch.bits) if use_native else None
    if k:
        return k.query(sketch, codes)
    return sketch.query(codes)


# -- alias tables ----------------------------------------------------------------------------------
def build_alias_reference(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias method, sequential: the reference every other construction must equal in law."""
    n = p.shape[0]
    a = np.asarray(p, dtype=np.float64) * n
    prob = np.ones(n)
    alias = np.arange(n, dtype=np.int64)
    small = [i for i in range(n) if a[i] < 1.0]
    large = [i for i in range(n) if a[i] >= 1.0]
    while small and large:
        s, l = small.pop(), large.pop()
        prob[s], alias[s] = a[s], l
        a[l] -= 1.0 - a[s]
        (small if a[l] < 1.0 else large).append(l)
    return prob, alias   # leftovers (rounding) keep prob 1, alias self


def build_alias_numpy(p: np.ndarray, max_rounds: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Alias table built in vectorised rounds: in each round every small column (N p < 1) takes its
    deficit from the large column whose cumulative excess covers the start of its cumulative deficit;
    large columns driven below 1 become the next round's small columns. Same law as Vose's method."""
    n = p.shape[0]
    a = np.asarray(p, dtype=np.float64) * n
    prob = np.ones(n)
    alias = np.arange(n, dtype=np.int64)
    small = np.flatnonzero(a < 1.0)
    large = np.flatnonzero(a >= 1.0)
    for _ in range(max_rounds):
        if small.size == 0 or large.size == 0:
            break
        deficit = 1.0 - a[small]
        start = np.concatenate(([0.0], np.cumsum(deficit)[:-1]))
        excess_end = np.cumsum(a[large] - 1.0)
        j = np.minimum(np.searchsorted(excess_end, start, side="right"), large.size - 1)
        prob[small] = a[small]
        alias[small] = large[j]
        a[large] -= np.bincount(j, weights=deficit, minlength=large.size)
        now_small = a[large] < 1.0
        small, large = large[now_small], large[~now_small]
    else:
        if small.size and large.size:   # pathological chains: finish sequentially (same law)
            sub = np.concatenate([small, large])
            sp, sa = build_alias_reference(a[sub] / sub.size)
            prob[sub], alias[sub] = sp, sub[sa]
    return prob, alias


def build_alias(p: np.ndarray, use_native: bool) -> tuple[np.ndarray, np.ndarray]:
    k = _alias_kernel() if use_native else None
    if k:
        return k.build(p)
    return build_alias_numpy(p)


def alias_distribution(prob: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """The exact distribution an alias table draws from (for tests)."""
    n = prob.shape[0]
    out = prob.copy() / n
    np.add.at(out, alias, (1.0 - prob) / n)
    return out


def draw_alias(prob: np.ndarray, alias: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """`size` draws in O(1) each: one uniform picks a column and, by its fractional part, the column's
    own index or its alias."""
    n = prob.shape[0]
    u = rng.random(size) * n
    col = np.minimum(u.astype(np.int64), n - 1)
    return np.where(u - col < prob[col], col, alias[col]).astype(np.int64)


__all__ = ["available", "update", "query", "build_alias", "build_alias_numpy", "build_alias_reference",
           "alias_distribution", "draw_alias", "EMPTY_COUNT"]
