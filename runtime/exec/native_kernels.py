"""The compiled kernels of one plan, callable from Python through ctypes.

`compile_plan(plan)` lowers the plan (boltc/lower/rules.py), builds it through boltc/codegen.py (on-disk
cache keyed by IR hash + CPU + features + llvmlite version + flags) and wraps every symbol in a
CFUNCTYPE prototype: pointer arguments as c_void_p, int64 scalars as c_int64. CFUNCTYPE calls release
the GIL, which is what lets runtime/exec/threads.py run slices in parallel.
"""
from __future__ import annotations

import ctypes

import numpy as np

from boltc import codegen, debug
from boltc.lower.rules import lower_plan

_CTYPES = {"ptr": ctypes.c_void_p, "i64": ctypes.c_int64}


class Kernels:
    def __init__(self, lib: codegen.NativeLibrary, signatures: dict, symbols: dict, key: str = ""):
        self.lib, self.signatures, self.symbols, self.key = lib, signatures, symbols, key
        self._fns = {}
        for name, params in signatures.items():
            proto = ctypes.CFUNCTYPE(None, *[_CTYPES[t] for _, t in params])
            self._fns[name] = proto(lib.address(name))

    def fn(self, layer: str, role: str):
        return self._fns[self.symbols[layer][role]]

    def has(self, layer: str, role: str) -> bool:
        return role in self.symbols.get(layer, {})


def compile_plan(plan: dict) -> Kernels:
    with debug.stage("lower + codegen", part="compile"):
        km, symbols = lower_plan(plan)
        lib, key = codegen.build(km.ir_text())
        return Kernels(lib, km.signatures, symbols, key)


def compile_split(plan: dict) -> Kernels:
    """The split gradient / apply kernels of data-parallel workers (boltc/lower/split.py)."""
    from boltc.lower.split import lower_split
    km, symbols = lower_split(plan)
    lib, key = codegen.build(km.ir_text())
    return Kernels(lib, km.signatures, symbols, key)


def ptr(a: np.ndarray | None):
    """Raw address of a C-contiguous array (None -> NULL). The caller keeps `a` alive across the call."""
    if a is None:
        return None
    assert a.flags.c_contiguous, "kernels read C-contiguous buffers"
    return a.ctypes.data
