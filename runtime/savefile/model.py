"""The saved-model format `.boltc` (CONTRACTS.md section 9): a zip of plain data, never pickle.

Members (all stored uncompressed: weights do not compress and stored members can be read fast):
    manifest.json              format version, library versions, sha256 and size of every other member
    model.bolt                 the source text
    plan.json                  the resolved plan
    params/<layer>.<t>.npy     weights
    lsh/<layer>.<a>.npy        hash tables and hash functions (+ lsh/<layer>.json for scalars)
    history.json               training history (per-epoch metrics, times)
    blend/<name>.npy           scores blended into the ranking (`blend ridge(...)`: blend/ridge.npy)
    ensemble/<i>/params/..., ensemble/<i>/lsh/...
                               `ensemble N`: the weights and hash tables of members 1..N-1, as above
                               (member 0 is the model itself; runtime/train/ensemble.py)
    optimizer/...              checkpoints only: Adam moments (in their storage dtype: float32, or
                               bfloat16 bits as uint16), step, sampler and trainer state
    native/...                 optional native artefacts
Arrays are `.npy` loaded with `allow_pickle=False`; nested state (dicts of arrays and JSON scalars) is
flattened by `flatten_state` into one JSON member plus one `.npy` per array.

Integrity: the manifest lists every member with its sha256; reading checks that the archive opens
(a truncated file loses the zip directory at its end), that no member is missing or unlisted, and that
every member's hash matches. Any failure raises ModelFileError naming the file and the member.
Writing goes to a temporary file in the same folder, fsync, then `os.replace` (atomic on POSIX), so a
crash mid-write never leaves a half-written model under the real name.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy

from boltc import debug
from boltc.errors import Location, ModelFileError
from boltc.ops import OPS
from boltc.runtime.exec.optim import bf16_from_f32, f32_from_bf16
from boltc.runtime.exec.state import (ModelState, aligned_copy, aligned_empty, aligned_zeros, moment_numpy_dtypes,
                                      zero_moments)
from boltc.runtime.lsh.index import LSHIndex
from boltc.version import __version__

FORMAT = "boltc-model"
# 2: a checkpoint may hold bfloat16 moments as uint16 arrays, which a reader of version 1 would take
# for numbers; files without them are still written as version 1, so older readers keep reading them
FORMAT_VERSION = 2
MANIFEST = "manifest.json"


def _err(path, message: str) -> ModelFileError:
    return ModelFileError(message, Location(str(path), 0))


# ---------------------------------------------------------------- arrays and nested state

def npy_bytes(a: np.ndarray) -> bytes:
    a = np.asarray(a)
    if a.dtype == object:
        raise TypeError("object arrays cannot be saved (no pickle)")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def flatten_state(state, prefix: str) -> tuple[object, dict[str, np.ndarray]]:
    """Nested dicts/lists of arrays and JSON scalars -> (JSON skeleton, {member name: array}).
    An array is replaced in the skeleton by {"__npy__": member name}."""
    arrays: dict[str, np.ndarray] = {}

    def walk(x, key):
        if isinstance(x, np.ndarray):
            name = f"{prefix}{key}.npy"
            arrays[name] = x
            return {"__npy__": name}
        if isinstance(x, dict):
            return {str(k): walk(v, f"{key}.{k}" if key else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(x)]
        if isinstance(x, np.generic):
            return x.item()
        return x

    return walk(state, ""), arrays


def unflatten_state(skeleton, members: dict[str, np.ndarray]):
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__npy__"}:
            return members[skeleton["__npy__"]]
        return {k: unflatten_state(v, members) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, members) for v in skeleton]
    return skeleton


# ---------------------------------------------------------------- the archive

class _HashingWriter:
    """File-like sink that hashes and counts what passes through to `raw`."""

    def __init__(self, raw):
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        self.sha.update(mv)
        self.size += mv.nbytes
        return self.raw.write(mv)


class _HashingReader:
    def __init__(self, raw):
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def read(self, n=-1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def readinto(self, b) -> int:           # np.lib.format reads big arrays with readinto when it can
        data = self.read(len(b))
        memoryview(b).cast("B")[:len(data)] = data
        return len(data)


def write_archive(path, members: dict[str, bytes | np.ndarray], meta: dict | None = None) -> None:
    """Write members (bytes, or arrays streamed as .npy without an in-memory copy) and the manifest
    (written last: it needs every member's hash) atomically."""
    path = Path(path)
    listed = {}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
                for name, data in sorted(members.items()):
                    if isinstance(data, np.ndarray):
                        if data.dtype == object:
                            raise TypeError(f"{name}: object arrays cannot be saved (no pickle)")
                        with z.open(name, "w", force_zip64=data.nbytes > (1 << 30)) as f:
                            h = _HashingWriter(f)
                            np.lib.format.write_array(h, np.ascontiguousarray(data), allow_pickle=False)
                    else:
                        h = hashlib.sha256(data)
                        z.writestr(name, data)
                        listed[name] = {"sha256": h.hexdigest(), "size": len(data)}
                        continue
                    listed[name] = {"sha256": h.sha.hexdigest(), "size": h.size}
                manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": _versions(),
                            **(meta or {}), "members": listed}
                z.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_archive(path) -> tuple[dict, dict[str, bytes | np.ndarray]]:
    """(manifest, {member: bytes, or ndarray for .npy members}) after every integrity check. Arrays are
    read straight from the archive while their hash is computed (one pass, no second copy)."""
    path = Path(path)
    if not path.exists():
        raise _err(path, "model file not found")
    try:
        z = zipfile.ZipFile(path, "r")
    except zipfile.BadZipFile:
        raise _err(path, "not a boltc model or truncated (the zip directory at the end of the file is missing)") from None
    except OSError as e:
        raise _err(path, f"cannot read model file: {e.strerror}") from None
    with z:
        names = set(z.namelist())
        if MANIFEST not in names:
            raise _err(path, f"member {MANIFEST!r} is missing (not a boltc model)")
        try:
            manifest = json.loads(_read_member(z, MANIFEST, path))
        except ValueError:
            raise _err(path, f"member {MANIFEST!r} is not valid JSON") from None
        if manifest.get("format") != FORMAT:
            raise _err(path, f"member {MANIFEST!r}: not a boltc model (format {manifest.get('format')!r})")
        ver = manifest.get("format_version")
        if not isinstance(ver, int) or ver > FORMAT_VERSION:
            raise _err(path, f"model format version {ver} is newer than this boltc reads ({FORMAT_VERSION}); upgrade boltc")
        listed = manifest.get("members") or {}
        extra = sorted(names - set(listed) - {MANIFEST})
        if extra:
            raise _err(path, f"member {extra[0]!r} is not listed in the manifest (file was tampered with)")
        out = {}
        for name, info in listed.items():
            if name not in names:
                raise _err(path, f"member {name!r} is missing")
            if name.endswith(".npy"):
                zinfo = z.getinfo(name)
                if zinfo.compress_type == zipfile.ZIP_STORED and zinfo.file_size > (1 << 20):
                    value, sha, size = _read_array_direct(path, zinfo, name)
                else:
                    value, sha, size = _read_array(z, name, path)
            else:
                value = _read_member(z, name, path)
                sha, size = hashlib.sha256(value).hexdigest(), len(value)
            if size != info.get("size") or sha != info.get("sha256"):
                raise _err(path, f"member {name!r}: checksum mismatch (file was modified or damaged)")
            out[name] = value
    return manifest, out


def _read_array(z: zipfile.ZipFile, name: str, path):
    try:
        with z.open(name) as f:
            h = _HashingReader(f)
            try:
                arr = np.lib.format.read_array(h, allow_pickle=False)
            except ValueError as e:
                # a damaged header, or an object array (which would need pickle): hash what is left so a
                # tampered member is reported as a checksum mismatch, a bad but listed one as invalid
                while h.read(1 << 20):
                    pass
                arr = e
            while h.read(1 << 20):          # trailing bytes are part of the member too
                pass
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise _err(path, f"member {name!r} cannot be read: truncated or damaged ({e})") from None
    return arr, h.sha.hexdigest(), h.size


def _read_array_direct(path, zinfo: zipfile.ZipInfo, name: str):
    """A large stored .npy member read straight into its array with one `readinto` (no 256 KiB chunk
    loop through the zip layer, no CRC pass: the sha256 of the manifest is the stronger check). Measured
    on a 2.6 GB Amazon-670K-shaped model: the chunked path read at ~40 MB/s under load."""
    try:
        with open(path, "rb") as f:
            f.seek(zinfo.header_offset)
            local = f.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise _err(path, f"member {name!r}: damaged local header")
            n_name, n_extra = struct.unpack("<HH", local[26:30])
            start = zinfo.header_offset + 30 + n_name + n_extra
            f.seek(start)
            sha = hashlib.sha256()
            try:
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0(f))
            except ValueError as e:
                return e, "", -1
            header_len = f.tell() - start
            f.seek(start)
            sha.update(f.read(header_len))
            if dtype.hasobject:
                return ValueError("object arrays need pickle"), "", -1
            # on a cache-line boundary (runtime/exec/state.py aligned_empty), so weights load aligned
            # without a second copy
            arr = aligned_empty(shape[::-1] if fortran else shape, dtype)
            view = memoryview(arr).cast("B") if arr.nbytes else memoryview(b"")
            got = f.readinto(view) if arr.nbytes else 0
            if got != arr.nbytes:
                raise _err(path, f"member {name!r} cannot be read: truncated")
            sha.update(view)
            size = header_len + got
            if size < zinfo.file_size:                 # bytes after the array still belong to the member
                sha.update(f.read(zinfo.file_size - size))
                size = zinfo.file_size
            return (arr.T if fortran else arr), sha.hexdigest(), size
    except OSError as e:
        raise _err(path, f"member {name!r} cannot be read: {e.strerror}") from None


def _read_member(z: zipfile.ZipFile, name: str, path) -> bytes:
    try:
        return z.read(name)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise _err(path, f"member {name!r} cannot be read: truncated or damaged ({e})") from None


def _versions() -> dict:
    v = {"python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__}
    v["boltc"] = __version__
    return v


# ---------------------------------------------------------------- a model's contents

@dataclass
class SavedModel:
    source: str
    plan: dict
    params: dict[str, dict[str, np.ndarray]]
    lsh: dict[str, object] = field(default_factory=dict)          # layer -> nested state
    history: dict = field(default_factory=dict)
    optimizer: object | None = None                                # nested state (checkpoints)
    extra: dict[str, bytes] = field(default_factory=dict)         # native/... members, kept as bytes
    manifest: dict = field(default_factory=dict)
    blend: dict[str, np.ndarray] = field(default_factory=dict)    # blend/<name>.npy
    members: list = field(default_factory=list)   # ensemble/<i>/: {"params": ..., "lsh": ...} per member


@debug.stage("save", part="save")
def save_model(path, model: SavedModel) -> None:
    members: dict[str, bytes] = {
        "model.bolt": (model.source or "").encode("utf-8"),
        "plan.json": json.dumps(model.plan, indent=1, sort_keys=True).encode(),
        "history.json": json.dumps(model.history, indent=1).encode(),
    }
    _weights_members(members, model.params, model.lsh)
    for name, a in model.blend.items():
        members[f"blend/{name}.npy"] = np.asarray(a)
    for i, member in enumerate(model.members, start=1):
        _weights_members(members, member["params"], member["lsh"], f"ensemble/{i}/")
    version = 1                 # the oldest format that holds the file (see FORMAT_VERSION)
    if model.optimizer is not None:
        skel, arrays = flatten_state(model.optimizer, "optimizer/")
        members["optimizer/state.json"] = json.dumps(skel).encode()
        if any(a.dtype == np.uint16 for a in arrays.values()):      # bfloat16 moments
            version = 2
        members.update(arrays)
    members.update(model.extra)
    write_archive(path, members, {"model": model.plan.get("model"), "format_version": version})


def _weights_members(members: dict, params: dict, lsh: dict, prefix: str = "") -> None:
    for layer, tensors in params.items():
        for t, a in tensors.items():
            members[f"{prefix}params/{layer}.{t}.npy"] = np.asarray(a)
    for layer, state in lsh.items():
        skel, arrays = flatten_state(state, f"{prefix}lsh/{layer}.")
        members[f"{prefix}lsh/{layer}.json"] = json.dumps(skel).encode()
        members.update({k: np.asarray(v) for k, v in arrays.items()})


def _weights_of(members: dict, arrays: dict, prefix: str, js, path) -> tuple[dict, dict]:
    """(params, lsh) stored under `prefix` (the model's own: ""; an ensemble member's: ensemble/<i>/)."""
    params: dict[str, dict[str, np.ndarray]] = {}
    for n, a in arrays.items():
        if n.startswith(prefix + "params/"):
            layer, tensor = n[len(prefix + "params/"):-len(".npy")].rsplit(".", 1)
            params.setdefault(layer, {})[tensor] = a
    lsh = {}
    for n in members:
        if n.startswith(prefix + "lsh/") and n.endswith(".json"):
            lsh[n[len(prefix + "lsh/"):-len(".json")]] = _unflatten(js(n), arrays, path, n)
    return params, lsh


def load_model(path) -> SavedModel:
    manifest, members = read_archive(path)
    for need in ("model.bolt", "plan.json"):
        if need not in members:
            raise _err(path, f"member {need!r} is missing")

    def js(name):
        try:
            return json.loads(members[name])
        except ValueError:
            raise _err(path, f"member {name!r} is not valid JSON") from None

    arrays = {}
    for n, d in members.items():
        if n.endswith(".npy"):
            if isinstance(d, Exception):
                raise _err(path, f"member {n!r} is not a valid .npy array ({d})")
            arrays[n] = d
    params, lsh = _weights_of(members, arrays, "", js, path)
    ensemble = []
    while any(n.startswith(f"ensemble/{len(ensemble) + 1}/") for n in members):
        p, l = _weights_of(members, arrays, f"ensemble/{len(ensemble) + 1}/", js, path)
        ensemble.append({"params": p, "lsh": l})
    optimizer = _unflatten(js("optimizer/state.json"), arrays, path, "optimizer/state.json") \
        if "optimizer/state.json" in members else None
    extra = {n: d for n, d in members.items() if n.startswith("native/")}
    blend = {n[len("blend/"):-len(".npy")]: a for n, a in arrays.items() if n.startswith("blend/")}
    return SavedModel(source=members["model.bolt"].decode("utf-8"), plan=js("plan.json"), params=params,
                      lsh=lsh, history=js("history.json") if "history.json" in members else {},
                      optimizer=optimizer, extra=extra, manifest=manifest, blend=blend, members=ensemble)


def _unflatten(skel, arrays, path, member):
    try:
        return unflatten_state(skel, arrays)
    except KeyError as e:
        raise _err(path, f"member {member!r} refers to missing array {e.args[0]!r}") from None


# ---------------------------------------------------------------- ModelState <-> SavedModel

def state_to_saved(source: str, plan: dict, state, history: dict | None = None,
                   optimizer_extra: dict | None = None, with_optimizer: bool = False) -> SavedModel:
    """A model file's contents from a runtime ModelState. Checkpoints (`with_optimizer`) also hold the
    Adam moments, the step and whatever the trainer passes in `optimizer_extra` (sampler, epoch)."""
    lsh = _lsh_of(state)
    opt = None
    if with_optimizer:
        opt = {"step": int(state.step), "m": state.m, "v": state.v, **(optimizer_extra or {})}
    return SavedModel(source=source, plan=plan, params=state.params, lsh=lsh, history=history or {},
                      optimizer=opt, blend=dict(getattr(state, "blend", {})))


def _lsh_of(state) -> dict:
    return {name: {"meta": idx.meta(), "arrays": dict(idx.arrays())} for name, idx in state.lsh.items()}


def member_to_saved(state) -> dict:
    """An ensemble member's part of a model file: weights and hash tables (no optimizer state)."""
    return {"params": state.params, "lsh": _lsh_of(state)}


def member_states(saved: SavedModel, path="<model>") -> list:
    """The ModelStates of ensemble members 1..N-1, each checked like the model's own weights; they share
    the model's blend."""
    out = []
    for i, m in enumerate(saved.members, start=1):
        one = SavedModel(source=saved.source, plan=saved.plan, params=m["params"], lsh=m["lsh"], blend=saved.blend)
        try:
            out.append(state_from_saved(one, path))
        except ModelFileError as e:
            raise _err(path, f"ensemble member {i}: {e.message}") from None
    return out


def _moments(saved: dict, params: dict, dts: dict) -> dict:
    """A checkpoint's moments in the storage the plan asks for: as saved when the dtypes agree (float32
    files of older versions included), else converted: bf16 -> f32 exactly, f32 -> bf16 rounded to
    nearest even (as every update stores them). A tensor the file lacks starts at zero."""
    out = {}
    for n, p in params.items():
        out[n] = {}
        for k, a in p.items():
            want, got = dts[n][k], (saved.get(n) or {}).get(k)
            if got is None:
                out[n][k] = aligned_zeros(a.shape, want)
                continue
            got = np.asarray(got)
            if got.dtype != want and got.dtype == np.uint16:
                got = f32_from_bf16(got)                 # stored bf16, plan wants f32
            if got.dtype != want and want == np.uint16:
                got = bf16_from_f32(got)
            out[n][k] = aligned_copy(got, want)
    return out


def state_from_saved(saved: SavedModel, path="<model>"):
    """A ModelState from a loaded model file (moments zero unless the file is a checkpoint)."""
    plan = saved.plan
    for layer in plan.get("layers", []):
        op = OPS.get(layer["op"])
        want = op is not None and bool(op.params(layer))
        if want and layer["name"] not in saved.params:
            raise _err(path, f"member 'params/{layer['name']}.*.npy' is missing")
        if layer.get("hash") and layer["name"] not in saved.lsh:
            raise _err(path, f"member 'lsh/{layer['name']}.json' is missing")
    # arrays come fresh from the file: use them in place when they are writeable, C-contiguous and on
    # a 64-byte boundary (large members are read so: _read_array_direct), else an aligned copy (the
    # kernels run faster on aligned rows; runtime/exec/state.py); fresh moments are zeroed by calloc
    # (pages are only touched where lazy Adam writes)
    params = {n: {k: aligned_copy(a, np.float32) for k, a in p.items()} for n, p in saved.params.items()}
    dts = moment_numpy_dtypes(plan, params)
    if saved.optimizer is not None:
        m = _moments(saved.optimizer.get("m") or {}, params, dts)
        v = _moments(saved.optimizer.get("v") or {}, params, dts)
        step = int(saved.optimizer["step"])
    else:
        m, v = zero_moments(plan, params), zero_moments(plan, params)
        step = int((saved.history or {}).get("step", 0))
    lsh = {}
    for name, st in saved.lsh.items():
        try:
            lsh[name] = LSHIndex.from_arrays(st["meta"], dict(st["arrays"]))
        except (KeyError, ValueError) as e:
            raise _err(path, f"member 'lsh/{name}.json': bad hash index ({e})") from None
    blend = {n: np.ascontiguousarray(a, np.float32) for n, a in saved.blend.items()}
    return ModelState(params=params, m=m, v=v, step=step, lsh=lsh, blend=blend)
