"""The sampler's hot loops: sketch update and query, alias-table construction and draws.

Each operation has a NumPy implementation here (the oracle, and the fallback when native code cannot be
built) and, when `boltc.codegen` is available, an llvmlite kernel (runtime/sampler_kernels.py) that the
tests check against it. Callers pass `use_native`; `available()` says whether the kernels load.
"""
from __future__ import annotations

import numpy as np

from boltc.runtime.nw_sketch import EMPTY_COUNT, NWSketch

_KERNELS = None          # loaded lazily; False when native code is unavailable


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        try:
            from boltc.runtime import sampler_kernels
            _KERNELS = sampler_kernels.load()
        except Exception:  # noqa: BLE001 - no codegen / no llvmlite: the NumPy path stays correct
            _KERNELS = False
    return _KERNELS


def available() -> bool:
    return bool(_kernels())


# -- sketch ----------------------------------------------------------------------------------------
def update(sketch: NWSketch, codes: np.ndarray, rows: np.ndarray, losses: np.ndarray, use_native: bool) -> None:
    """Add losses[i] and 1 to the R cells of example rows[i] (codes: (N, R) bucket ids)."""
    k = _kernels() if use_native else None
    if k:
        k.update(sketch, codes, rows, losses)
    else:
        sketch.update(codes[rows], losses)


def query(sketch: NWSketch, codes: np.ndarray, use_native: bool) -> np.ndarray:
    """(N,) predicted loss of every example."""
    k = _kernels() if use_native else None
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
    k = _kernels() if use_native else None
    if k:
        return k.build_alias(p)
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
