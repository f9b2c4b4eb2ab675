"""The one module that owns `llvmlite.binding`: target machine, optimisation pipeline, object code, cache.

Everything else builds IR with `llvmlite.ir` (boltc/lower/) and hands the text here.

Decisions:
- Target machine from the host CPU name and feature string (without them LLVM falls back to SSE).
  `BOLTC_CPU` / `BOLTC_FEATURES` override both (used to test the rebuild path and to measure
  `-prefer-256-bit`).
- New pass manager at O3 with loop and SLP vectorization on (DESIGN.md section 4).
- Native code is kept as relocatable object code and linked into the process by MCJIT's in-process
  linker (`add_object_file`): loading a cached or shipped object needs no system compiler or linker.
- The cache key covers everything that changes the machine code: IR hash, CPU, features, llvmlite
  version, flags and this module's own source (the IR is a function of the plan, so this is the
  plan's key too). Objects live in
  boltc/kernel_cache.py's self-checking, atomically written entries ($BOLTC_CACHE or ~/.cache/boltc).
- llvmlite serialises LLVM calls internally; we add our own lock so two threads never build at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
import llvmlite
import llvmlite.binding as llvm

from boltc import debug, kernel_cache
from boltc.errors import BackendError

OPT_LEVEL = 3
FLAGS = {"opt": OPT_LEVEL, "loop_vectorize": True, "slp_vectorize": True, "reloc": "default",
         "fp": "reassoc contract on reductions"}

_LOCK = threading.RLock()
_TM_CACHE: dict[tuple[str, str], object] = {}


@dataclass(frozen=True)
class Target:
    triple: str
    cpu: str
    features: str

    def as_dict(self) -> dict:
        return {"triple": self.triple, "cpu": self.cpu, "features": self.features}


def host_target() -> Target:
    cpu = os.environ.get("BOLTC_CPU") or llvm.get_host_cpu_name()
    feats = os.environ.get("BOLTC_FEATURES")
    if feats is None:
        feats = llvm.get_host_cpu_features().flatten()
    return Target(llvm.get_process_triple(), cpu, feats)


def host_feature_set() -> set[str]:
    return {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}


def features_supported(features: str) -> bool:
    """True when every feature the code was built with is present on this CPU."""
    need = {f[1:] for f in features.split(",") if f.startswith("+")}
    return need <= host_feature_set()


def _new_target_machine(target: Target):
    llvm_target = llvm.Target.from_triple(target.triple)
    return llvm_target.create_target_machine(cpu=target.cpu, features=target.features, opt=OPT_LEVEL,
                                             reloc="default", codemodel="jitdefault")


def _target_machine(target: Target):
    """A shared target machine for optimising and emitting (never handed to an engine)."""
    key = (target.cpu, target.features)
    tm = _TM_CACHE.get(key)
    if tm is None:
        tm = _TM_CACHE[key] = _new_target_machine(target)
    return tm


def _ensure_init() -> None:
    # llvmlite >= 0.45 initialises itself; older versions need these calls (idempotent).
    for fn in ("initialize_native_target", "initialize_native_asmprinter"):
        try:
            getattr(llvm, fn)()
        except Exception:  # noqa: BLE001 - deprecated no-ops on new llvmlite
            pass


# This file's own bytes: the pipeline, target machine and emission live here, so two boltc builds whose
# codegen differs (two branches sharing ~/.cache/boltc) never read each other's objects. Seen: an
# object written by another build's codegen for the same IR crashed the process in add_object_file.
_CODEGEN_ID = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def cache_key(ir_text: str, target: Target) -> str:
    h = hashlib.sha256()
    for part in (hashlib.sha256(ir_text.encode()).hexdigest(), target.cpu, target.features,
                 llvmlite.__version__, json.dumps(FLAGS, sort_keys=True), _CODEGEN_ID):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def ir_hash(ir_text: str) -> str:
    return hashlib.sha256(ir_text.encode()).hexdigest()


def optimize(ir_text: str, target: Target | None = None):
    """Parse and run the O3 pipeline; returns the optimized ModuleRef."""
    target = target or host_target()
    with _LOCK:
        _ensure_init()
        try:
            mod = llvm.parse_assembly(ir_text)
            mod.verify()
        except RuntimeError as e:  # an IR builder bug, not a user error, but never a raw traceback
            raise BackendError(f"generated LLVM IR is invalid: {e}") from e
        return _run_pipeline(mod, target)


def _run_pipeline(mod, target: Target):
    tm = _target_machine(target)
    mod.triple = target.triple
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pm = pb.getModulePassManager()
    pm.run(mod, pb)
    return mod


def optimized_ir(ir_text: str, target: Target | None = None) -> str:
    return str(optimize(ir_text, target))


def emit_object(mod, target: Target) -> bytes:
    with _LOCK:
        return _target_machine(target).emit_object(mod)


def compile_module(ir_text: str, target: Target | None = None) -> tuple[bytes, bytes]:
    """IR text -> (object code, bitcode of the optimized module)."""
    target = target or host_target()
    with _LOCK:
        mod = optimize(ir_text, target)
        return emit_object(mod, target), mod.as_bitcode()


def object_from_bitcode(bitcode: bytes, target: Target | None = None) -> bytes:
    """Recompile shipped bitcode for this CPU (used when the host lacks the artifact's features)."""
    target = target or host_target()
    with _LOCK:
        _ensure_init()
        mod = llvm.parse_bitcode(bitcode)
        mod = _run_pipeline(mod, target)
        return emit_object(mod, target)


def cached_object(ir_text: str, target: Target | None = None) -> tuple[bytes, str]:
    """Object code for `ir_text`, from the on-disk cache (boltc/kernel_cache.py) when present.
    Returns (object, key)."""
    target = target or host_target()
    key = cache_key(ir_text, target)
    (obj,), hit = kernel_cache.cached(key, (".o",), lambda: compile_module(ir_text, target)[:1])
    _note(hit, key)
    return obj, key


def cached_module(ir_text: str, target: Target | None = None) -> tuple[bytes, bytes, str]:
    """(object, bitcode, key), both from the on-disk cache when present (artifacts need both)."""
    target = target or host_target()
    key = cache_key(ir_text, target)
    (obj, bc), hit = kernel_cache.cached(key, (".o", ".bc"), lambda: compile_module(ir_text, target))
    _note(hit, key)
    return obj, bc, key


def _note(hit: bool, key: str) -> None:
    if debug.level() >= 1:
        print(f"[boltc] kernel cache: {'hit' if hit else 'miss (compiled)'} {key[:16]} in "
              f"{kernel_cache.cache_dir() or 'nowhere (BOLTC_CACHE=off)'}", file=sys.stderr)


@dataclass
class NativeLibrary:
    """Object code linked into this process. Keep it alive as long as any function pointer is used."""
    engine: object
    addresses: dict[str, int] = field(default_factory=dict)

    def address(self, name: str) -> int:
        addr = self.addresses.get(name)
        if addr is None:
            with _LOCK:
                addr = self.engine.get_function_address(name)
            if not addr:
                raise BackendError(f"native symbol {name!r} not found")
            self.addresses[name] = addr
        return addr


def load_object(obj: bytes, target: Target | None = None) -> NativeLibrary:
    """Link object code in-process (MCJIT's runtime linker); no system toolchain involved."""
    target = target or host_target()
    with _LOCK:
        _ensure_init()
        empty = llvm.parse_assembly("")
        empty.triple = target.triple
        # the engine takes ownership of its target machine: give it its own, not the shared one
        engine = llvm.create_mcjit_compiler(empty, _new_target_machine(target))
        try:
            engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"could not load native object code: {e}") from e
        engine.finalize_object()
        return NativeLibrary(engine)


def build(ir_text: str, target: Target | None = None) -> tuple[NativeLibrary, str]:
    obj, key = cached_object(ir_text, target)
    return load_object(obj, target), key
