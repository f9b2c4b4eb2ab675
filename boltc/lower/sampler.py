"""Kernels of the adaptive sampler (runtime/sampler/, docs/sampler.md): the Nadaraya-Watson sketch's
update and query, SRP hashing of CSR rows, and alias-table construction. runtime/sampler/native.py binds
them through boltc/lower/kernels.py and holds their NumPy references.

Kernels are specialised on (R, K): the sketch's shape is fixed for a training run, so the inner loops
over the R cells of an example have constant trip counts. They are single-threaded: an update touches
batch * R cells and a query N * R, a few ms even at N = 1e6, less than a thread hand-off is worth.
"""
from __future__ import annotations

import llvmlite.ir as ir

from boltc.lower.builder import F32, F64, I32, I64, KernelModule


def sketch_module(rows: int, bits: int) -> KernelModule:
    """nw_update and nw_query for one (R, K)."""
    km = KernelModule(f"nw_sketch_r{rows}_k{bits}")
    _emit_update(km, rows, bits)
    _emit_query(km, rows, bits)
    return km


def hash_module(rows: int, bits: int) -> KernelModule:
    """srp_hash for one (R, K)."""
    km = KernelModule(f"srp_hash_r{rows}_k{bits}")
    _emit_hash(km, rows, bits)
    return km


def alias_module() -> KernelModule:
    """alias_build (shape-independent)."""
    km = KernelModule("alias_table")
    _emit_alias(km)
    return km


def _emit_update(km, rows, bits):
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


def _emit_query(km, rows, bits):
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


def _emit_hash(km, rows, bits):
    """srp_hash(b0, b1, indptr i64*, indices i32*, data f32*, feat_row i32*, feat_sign f32*,
    proj f32* (P, R*K), z f32* (R*K scratch), codes i32* (N, R))"""
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


def _emit_alias(km):
    """alias_build(n, a f64* (N p, consumed), prob f64*, alias i64*, work i64*): Vose's method with the
    small stack growing from the front of `work` and the large stack from the back (never overlap)."""
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


def _f64(v: float):
    return ir.Constant(ir.DoubleType(), v)
