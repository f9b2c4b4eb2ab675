"""The kernel library: the one place that turns generated code into Python callables.

Every kernel boltc generates (a plan's layers, the sampler's sketch, text hashing) is built as a
`KernelModule` in boltc/lower/, compiled through boltc/codegen.py (on-disk cache keyed by IR hash + CPU
+ features + llvmlite version + flags) and bound here: each symbol gets a CFUNCTYPE prototype from the
module's signatures (pointer arguments as c_void_p, int64 scalars as c_int64). CFUNCTYPE calls release
the GIL, which is what lets runtime/exec/threads.py run slices in parallel.

    lib = build(km)                 # any KernelModule -> Library
    lib.fn("nw_update")(...)
    kernels = compile_plan(plan)    # a plan's kernels, looked up by (layer, role)
"""
from __future__ import annotations

import ctypes

from boltc import codegen, debug
from boltc.lower.builder import KernelModule
from boltc.lower.rules import lower_plan
from boltc.lower.split import lower_split
from boltc.ops.numeric import ptr  # noqa: F401  (the executors' address helper, cached)

_CTYPES = {"ptr": ctypes.c_void_p, "i64": ctypes.c_int64}


class Library:
    """Linked native code and a ctypes callable per symbol. Keep it alive while any callable is used."""

    def __init__(self, lib: codegen.NativeLibrary, signatures: dict, key: str = ""):
        self.lib, self.signatures, self.key = lib, signatures, key
        self._fns = {}
        for name, params in signatures.items():
            proto = ctypes.CFUNCTYPE(None, *[_CTYPES[t] for _, t in params])
            self._fns[name] = proto(lib.address(name))

    def symbol(self, name: str):
        return self._fns[name]


class Kernels(Library):
    """A plan's kernels: `symbols` maps layer -> role -> symbol (boltc/lower/rules.py lower_plan)."""

    def __init__(self, lib: codegen.NativeLibrary, signatures: dict, symbols: dict, key: str = ""):
        super().__init__(lib, signatures, key)
        self.symbols = symbols

    def fn(self, layer: str, role: str):
        return self._fns[self.symbols[layer][role]]

    def has(self, layer: str, role: str) -> bool:
        return role in self.symbols.get(layer, {})


def build(km: KernelModule) -> Library:
    """Compile (or fetch from the cache) and bind every kernel of a module."""
    lib, key = codegen.build(km.ir_text())
    return Library(lib, km.signatures, key)


def compile_plan(plan: dict) -> Kernels:
    with debug.stage("lower + codegen", part="compile"):
        km, symbols = lower_plan(plan)
        lib, key = codegen.build(km.ir_text())
        return Kernels(lib, km.signatures, symbols, key)


def compile_split(plan: dict) -> Kernels:
    """The split gradient / apply kernels of data-parallel workers (boltc/lower/split.py)."""
    with debug.stage("lower + codegen (split kernels)", part="compile"):
        km, symbols = lower_split(plan)
        lib, key = codegen.build(km.ir_text())
        return Kernels(lib, km.signatures, symbols, key)


