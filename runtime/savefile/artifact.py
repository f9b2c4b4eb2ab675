"""Compiled artifacts: native object code + bitcode + a manifest, inside a `.boltc` model file.

`write_artifact(graph, plan, out_path)` (used by `boltc compile -o`) writes a complete, untrained model
file (runtime/savefile/model.py format: weights initialised as the runtime does, hash tables built) with
three more members (DESIGN.md section 4):
    native/kernels.o         relocatable object code for the build machine's CPU
    native/kernels.bc        LLVM bitcode of the optimized module (rebuilt when a CPU lacks features)
    native/manifest.json     format version, symbols and signatures, layer roles, target triple, CPU,
                             features, llvmlite version, flags, IR hash + cache key, sha256 of both

`load_native(members, plan)` turns those members back into callable kernels with no compiler or linker:
the object is linked in-process by MCJIT's runtime linker (boltc/codegen.py `load_object`). On a CPU
missing any of the artifact's features the bitcode is recompiled for the host (llvmlite only). Any
mismatch (checksum, format, plan) raises ModelFileError naming the member.
"""
from __future__ import annotations

import hashlib
import json

import llvmlite
import numpy as np

from boltc import codegen
from boltc.lower.kernels import Kernels
from boltc.errors import BackendError, Location, ModelFileError
from boltc.lower.rules import lower_plan, native_support
from boltc.runtime import savefile
from boltc.runtime.exec.native import NativeExecutor
from boltc.runtime.exec.state import ModelState, init_params, make_lsh, neuron_rows, zero_moments

# The kernels' calling convention. Bump it whenever a kernel's signature or what the executor passes
# it changes (tests/test_native_artifact.py pins the reference plans' signatures to this number): a
# model file whose native code has another format was built by another boltc version, and calling
# its kernels with today's arguments would corrupt memory, so it is recompiled from its plan.
# 2: the training lookup takes the frequency fill table (cum, guide, ncum); bf16 moment updates;
# kernels of every op.
# 3: dense fc layers also have `w_upd` and `bias_upd` (the optimizer after a BLAS gradient).
# 4: the loss kernels take a per-thread label bitset (`marks`); the DWTA hash reads idx transposed
# (bin_size, n_hashes); LSH-sparse layers with an input gradient also have `dx_active`.
# 5: LSH-hashed layers also have `label_hits` (the frozen tables' missed-label test).
# 6: the DWTA hash reads x transposed (in_dim, stride) with its stride; SRP layers also have `hash`.
# 7: `upd_active_dx` is the blocked fused update (cap and per-chunk regrouping scratch); LSH-hashed
# layers also have `insert` (the frozen tables' inserts of missed labels).
NATIVE_FORMAT = 7


class StaleNativeCode(ModelFileError):
    """The file's native code follows another calling convention: recompile from the plan instead."""
OBJ, BC, MANIFEST = "native/kernels.o", "native/kernels.bc", "native/manifest.json"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def native_members(plan: dict) -> dict[str, bytes]:
    km, symbols = lower_plan(plan)
    text = km.ir_text()
    target = codegen.host_target()
    obj, bitcode, _ = codegen.cached_module(text, target)
    manifest = {"format": NATIVE_FORMAT, "symbols": km.signatures, "layers": symbols,
                **target.as_dict(), "llvmlite": llvmlite.__version__, "flags": codegen.FLAGS,
                "ir_hash": codegen.ir_hash(text), "cache_key": codegen.cache_key(text, target),
                "object_sha256": _sha(obj), "bitcode_sha256": _sha(bitcode)}
    return {OBJ: obj, BC: bitcode, MANIFEST: json.dumps(manifest, indent=1, sort_keys=True).encode()}


def load_native(members: dict[str, bytes], where: str = "<model>"):
    """Kernels from an artifact's native/ members (no compiler toolchain involved)."""

    def bad(msg):
        return ModelFileError(msg, Location(str(where), 0))

    for need in (MANIFEST, BC):
        if need not in members:
            raise bad(f"member {need!r} is missing")
    try:
        man = json.loads(members[MANIFEST])
    except ValueError:
        raise bad(f"member {MANIFEST!r} is not valid JSON") from None
    if man.get("format") != NATIVE_FORMAT:
        raise StaleNativeCode(f"its native code has format {man.get('format')!r} (this boltc: {NATIVE_FORMAT})",
                              Location(str(where), 0))
    if _sha(members[BC]) != man.get("bitcode_sha256"):
        raise bad(f"member {BC!r} does not match its checksum in {MANIFEST!r}")
    obj = members.get(OBJ)
    host = codegen.host_target()
    usable = (obj is not None and _sha(obj) == man.get("object_sha256")
              and man.get("triple") == host.triple and codegen.features_supported(man.get("features", "")))
    if obj is not None and _sha(obj) != man.get("object_sha256"):
        raise bad(f"member {OBJ!r} does not match its checksum in {MANIFEST!r}")
    if not usable:
        # this CPU lacks some feature the object was built for: rebuild from bitcode for this host
        obj = codegen.object_from_bitcode(members[BC], host)
        target = host
    else:
        target = codegen.Target(man["triple"], man["cpu"], man["features"])
    lib = codegen.load_object(obj, target)
    k = Kernels(lib, man["symbols"], man["layers"], man.get("cache_key", ""))
    k.rebuilt = not usable
    return k


def initial_state(plan: dict, kernels=None):
    """Untrained state as the runtime makes it (ModelState.init), with the hash tables built by the
    native kernels when the plan is native (the NumPy build of a 670k-neuron table takes minutes)."""
    if native_support(plan) is not None:
        return ModelState.init(plan)
    seed = plan.get("train", {}).get("seed", 0)
    params = {l["name"]: p for l in plan["layers"] if (p := init_params(l, seed))}
    out = next(l for l in plan["layers"] if l["name"] == plan["output"])
    if out.get("hash"):
        params[out["name"]]["label_count"] = np.zeros(out["dim"], dtype=np.float32)
    state = ModelState(params=params, m=zero_moments(plan, params), v=zero_moments(plan, params))
    for layer in plan["layers"]:
        if layer.get("hash"):
            state.lsh[layer["name"]] = make_lsh(layer, seed)
    NativeExecutor(plan, state, kernels=kernels)          # installs native hashing + table build
    for layer in plan["layers"]:
        if layer["name"] in state.lsh:
            state.lsh[layer["name"]].build(neuron_rows(layer, params[layer["name"]]["W"]))
    return state


def write_artifact(graph, plan: dict, out_path) -> None:
    reason = native_support(plan)
    if reason is not None:
        raise BackendError(f"this model is not lowered to native code ({reason}); "
                           "train and serve it with --backend numpy")
    members = native_members(plan)
    kernels = load_native(members, out_path)
    state = initial_state(plan, kernels)
    source = graph.graph.get("source", "") if graph is not None else ""
    saved = savefile.state_to_saved(source, plan, state)
    saved.extra = members
    savefile.save_model(out_path, saved)


def save_with_native(path, source: str, plan: dict, state, history=None) -> None:
    """Save a (trained) model with its native members, for deployment."""
    saved = savefile.state_to_saved(source, plan, state, history)
    saved.extra = native_members(plan)
    savefile.save_model(path, saved)


def load_artifact(path, threads: int = 0):
    """(plan, state, executor) from a .boltc: the native executor runs the shipped object code."""
    saved = savefile.load_model(path)
    state = savefile.state_from_saved(saved, path)
    try:
        kernels = load_native(saved.extra, path) if saved.extra else None
    except StaleNativeCode:
        kernels = None                                    # another boltc's kernels: lower the plan again
    return saved.plan, state, NativeExecutor(saved.plan, state, threads=threads, kernels=kernels)
