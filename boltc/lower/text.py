"""The kernel of text featurising (runtime/data/text.py): 32-bit FNV-1a over byte spans (one token each),
bound by boltc/lower/kernels.py; runtime/data/text.py holds its NumPy specification."""
from __future__ import annotations

import llvmlite.ir as ir

from boltc.lower.builder import I32, I64, KernelModule


def fnv_module(prime: int) -> KernelModule:
    """fnv_spans(b0, b1, buf u8*, starts i64*, lengths i64*, init u32*, out u32*): FNV-1a of each byte span."""
    i8 = ir.IntType(8)
    km = KernelModule("text_fnv_spans")
    k = km.kernel("fnv_spans", [("b0", "i64"), ("b1", "i64"), ("buf", "ptr"), ("starts", "ptr"),
                                ("lengths", "ptr"), ("init", "ptr"), ("out", "ptr")])
    a, b = k.arg, k.b
    with k.loop(a["b0"], a["b1"], "i") as i:
        h = k.var(I32, k.ld(a["init"], i, I32))
        lo = k.ld(a["starts"], i, I64)
        hi = k.add(lo, k.ld(a["lengths"], i, I64))
        with k.loop(lo, hi, "j") as j:
            byte = b.zext(k.ld(a["buf"], j, i8), I32)
            k.set(h, b.mul(b.xor(k.get(h), byte), ir.Constant(I32, prime)))
        k.st(a["out"], i, k.get(h))
    k.ret()
    return km
