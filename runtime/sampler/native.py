"""The sampler's hot loops: sketch update and query, alias-table construction and draws.

Each operation has a NumPy implementation here (the oracle, and the fallback when native code cannot be
built) and an llvmlite kernel (built through boltc.codegen, cached on disk by IR hash) that the tests
check against it. Callers pass `use_native`; `available()` says whether the kernels load.

Kernels are specialised on (R, K): the sketch's shape is fixed for a training run, so the inner loops
over the R cells of an example have constant trip counts. They are single-threaded: an update touches
batch * R cells and a query N * R, a few ms even at N = 1e6, less than a thread hand-off is worth.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

from boltc.runtime.sampler.nw_sketch import EMPTY_COUNT, NWSketch

_LIBS: dict = {}                 # (rows, bits) -> _Kernels | False
_ALIAS = None                    # the shape-independent alias kernel (or False)
_LOCK = threading.Lock()


class _Kernels:
    """ctypes entry points of the sketch kernels for one (R, K)."""

    def __init__(self, rows: int, bits: int):
        from boltc import codegen
        from boltc.lower.builder import F64, I32, I64, KernelModule

        km = KernelModule(f"nw_sketch_r{rows}_k{bits}")
        _emit_update(km, rows, bits, F64, I64)
        _emit_query(km, rows, bits, F64, I64)
        self.lib, _ = codegen.build(km.ir_text())
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        self.rows, self.bits = rows, bits
        self._update = ctypes.CFUNCTYPE(None, i64, i64, vp, vp, vp, vp, vp)(self.lib.address("nw_update"))
        self._query = ctypes.CFUNCTYPE(None, i64, i64, vp, vp, vp, vp, vp)(self.lib.address("nw_query"))

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


def _emit_update(km, rows, bits, F64, I64):
    """nw_update(b0, b1, rows i64*, losses f64*, codes i32* (N, R), loss f64* (R, 2^K), count f64*)"""
    k = km.kernel("nw_update", [("b0", "i64"), ("b1", "i64"), ("rows", "ptr"), ("losses", "ptr"),
                                ("codes", "ptr"), ("loss", "ptr"), ("count", "ptr")])
    a = k.arg
    with k.loop(a["b0"], a["b1"], "i") as i:
        row = k.ld(a["rows"], i, I64)
        y = k.ld(a["losses"], i, F64)
        base = k.mul(row, k.i64(rows))
        with k.loop(0, rows, "r") as r:
            bucket = k.ld_i32_as_i64(a["codes"], k.add(base, r))
            cell = k.add(k.b.shl(r, k.i64(bits)), bucket)
            k.st(a["loss"], cell, k.b.fadd(k.ld(a["loss"], cell, F64), y))
            k.st(a["count"], cell, k.b.fadd(k.ld(a["count"], cell, F64), _f64(1.0)))
    k.ret()


def _emit_query(km, rows, bits, F64, I64):
    """nw_query(b0, b1, codes i32* (N, R), loss f64*, count f64*, prior f64* [prior, empty], out f64*)"""
    k = km.kernel("nw_query", [("b0", "i64"), ("b1", "i64"), ("codes", "ptr"), ("loss", "ptr"),
                               ("count", "ptr"), ("prior", "ptr"), ("out", "ptr")])
    a = k.arg
    prior = k.ld(a["prior"], k.i64(0), F64)
    empty = k.ld(a["prior"], k.i64(1), F64)
    with k.loop(a["b0"], a["b1"], "i") as i:
        base = k.mul(i, k.i64(rows))
        num = k.var(F64, _f64(0.0))
        den = k.var(F64, _f64(0.0))
        with k.loop(0, rows, "r") as r:
            bucket = k.ld_i32_as_i64(a["codes"], k.add(base, r))
            cell = k.add(k.b.shl(r, k.i64(bits)), bucket)
            k.set(num, k.fadd(k.get(num), k.ld(a["loss"], cell, F64)))
            k.set(den, k.fadd(k.get(den), k.ld(a["count"], cell, F64)))
        d = k.get(den)
        seen = k.fcmp(">", d, empty)
        k.st(a["out"], i, k.select(seen, k.fdiv(k.get(num), d), prior))
    k.ret()


class _HashKernel:
    """SRP hashing of CSR rows for one (R, K): z = x . P (through the feature fold), then K sign bits."""

    def __init__(self, rows: int, bits: int):
        from boltc import codegen
        from boltc.lower.builder import KernelModule

        km = KernelModule(f"srp_hash_r{rows}_k{bits}")
        _emit_hash(km, rows, bits)
        self.lib, _ = codegen.build(km.ir_text())
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        self._hash = ctypes.CFUNCTYPE(None, i64, i64, vp, vp, vp, vp, vp, vp, vp, vp)(self.lib.address("srp_hash"))

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


def _emit_hash(km, rows, bits):
    """srp_hash(b0, b1, indptr i64*, indices i32*, data f32*, feat_row i32*, feat_sign f32*,
    proj f32* (P, R*K), z f32* (R*K scratch), codes i32* (N, R))"""
    from boltc.lower.builder import F32, I32, I64
    import llvmlite.ir as ir
    rk = rows * bits
    k = km.kernel("srp_hash", [("b0", "i64"), ("b1", "i64"), ("indptr", "ptr"), ("indices", "ptr"),
                               ("data", "ptr"), ("feat_row", "ptr"), ("feat_sign", "ptr"), ("proj", "ptr"),
                               ("z", "ptr"), ("codes", "ptr")])
    a, b = k.arg, k.b
    with k.loop(a["b0"], a["b1"], "i") as i:
        with k.loop(0, rk, "p0") as p:
            k.st(a["z"], p, k.f32(0.0))
        lo = k.ld(a["indptr"], i, I64)
        hi = k.ld(a["indptr"], k.add(i, k.i64(1)), I64)
        with k.loop(lo, hi, "e") as e:
            j = k.ld_i32_as_i64(a["indices"], e)
            sv = k.fmul(k.ld(a["data"], e, F32), k.ld(a["feat_sign"], j, F32))
            base = k.mul(k.ld_i32_as_i64(a["feat_row"], j), k.i64(rk))
            with k.loop(0, rk, "p") as p:
                acc = k.fadd(k.ld(a["z"], p, F32), k.fmul(sv, k.ld(a["proj"], k.add(base, p), F32)))
                k.st(a["z"], p, acc)
        with k.loop(0, rows, "r") as r:
            code = k.var(I32, ir.Constant(I32, 0))
            with k.loop(0, bits, "kb") as kb:
                zv = k.ld(a["z"], k.add(k.mul(r, k.i64(bits)), kb), F32)
                bit = b.zext(k.fcmp(">", zv, k.f32(0.0)), I32)
                k.set(code, b.or_(k.get(code), b.shl(bit, b.trunc(kb, I32))))
            k.st(a["codes"], k.add(k.mul(i, k.i64(rows)), r), k.get(code))
    k.ret()


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


def _f64(v: float):
    import llvmlite.ir as ir
    return ir.Constant(ir.DoubleType(), v)


class _AliasKernel:
    def __init__(self):
        from boltc import codegen
        from boltc.lower.builder import KernelModule

        km = KernelModule("alias_table")
        _emit_alias(km)
        self.lib, _ = codegen.build(km.ir_text())
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        self._build = ctypes.CFUNCTYPE(None, i64, vp, vp, vp, vp)(self.lib.address("alias_build"))

    def build(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = p.shape[0]
        a = np.asarray(p, dtype=np.float64) * n          # scratch: the kernel consumes it
        prob = np.empty(n, dtype=np.float64)
        alias = np.empty(n, dtype=np.int64)
        work = np.empty(n, dtype=np.int64)
        self._build(n, a.ctypes.data, prob.ctypes.data, alias.ctypes.data, work.ctypes.data)
        return prob, alias


def _emit_alias(km):
    """alias_build(n, a f64* (N p, consumed), prob f64*, alias i64*, work i64*): Vose's method with the
    small stack growing from the front of `work` and the large stack from the back (never overlap)."""
    from boltc.lower.builder import F64, I64
    k = km.kernel("alias_build", [("n", "i64"), ("a", "ptr"), ("prob", "ptr"), ("alias", "ptr"),
                                  ("work", "ptr")])
    a, b = k.arg, k.b
    n = a["n"]
    one = _f64(1.0)
    ns = k.var(I64, k.i64(0))
    nl = k.var(I64, k.i64(0))

    def push(i, value):
        small = k.fcmp("<", value, one)
        with b.if_else(small) as (then, other):
            with then:
                k.st(a["work"], k.get(ns), i)
                k.set(ns, k.add(k.get(ns), k.i64(1)))
            with other:
                k.st(a["work"], b.sub(b.sub(n, k.i64(1)), k.get(nl)), i)
                k.set(nl, k.add(k.get(nl), k.i64(1)))

    with k.loop(0, n, "i") as i:
        k.st(a["prob"], i, one)
        k.st(a["alias"], i, i)
        push(i, k.ld(a["a"], i, F64))

    def both_nonempty():
        return b.and_(k.icmp(">", k.get(ns), k.i64(0)), k.icmp(">", k.get(nl), k.i64(0)))

    with k.while_(both_nonempty, "pair"):
        k.set(ns, b.sub(k.get(ns), k.i64(1)))
        s = k.ld(a["work"], k.get(ns), I64)
        l = k.ld(a["work"], b.sub(n, k.get(nl)), I64)
        k.set(nl, b.sub(k.get(nl), k.i64(1)))
        a_s = k.ld(a["a"], s, F64)
        k.st(a["prob"], s, a_s)
        k.st(a["alias"], s, l)
        a_l = b.fsub(b.fadd(k.ld(a["a"], l, F64), a_s), one)     # a_l - (1 - a_s), rounding as Vose
        k.st(a["a"], l, a_l)
        push(l, a_l)
    k.ret()


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
