"""ModelState: every number a model holds (parameters, optimizer moments, step, LSH indexes), seeded.

Init (CONTRACTS.md section 4): each tensor as its op declares (boltc/ops/<op>.py `param_init`): weight
matrices ~ N(0, 0.01) (BOLT's init; std 0.01), zero biases, ones or zeros. Each layer draws from its own generator seeded by (seed, crc32 of
its name), so adding a layer does not change the others' initial weights.

The output layer of a model trained with an LSH-sparse output also holds `label_count` (dim,) float32:
how often each neuron was a training label. It is not trained; dense and sparse inference use it to
exclude neurons that were never a label (see `interp.NumpyExecutor._mask_unseen`). `m`/`v` mirror the
structure of `params` (zeros for `label_count`) so savers can treat every tensor alike.

Adam's moments of a tensor are float32, or bfloat16 stored as uint16 bits when the plan says so
(`adam(moments=...)`, resolved per tensor by boltc/plan/moments.py): `zero_moments`
makes them, `check_moments` is what an executor calls before kernels write into them. Fresh moments
are zeroed by calloc (np.zeros), so their pages only cost memory once lazy Adam touches them.

Alignment: every parameter and moment array starts on a 64-byte (cache-line) boundary
(`aligned_empty` / `aligned_zeros`; runtime/savefile/model.py does the same on load). numpy puts large
arrays 16 bytes past a line, so each 1 KB weight row of the 670k output layer would span 17 lines and
every 64-byte vector load would straddle two: the gather ran 12-18% faster on aligned rows
(docs/native.md). The kernels' summation order never depends on the address, so alignment changes
speed only, never results.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from boltc import debug
from boltc.ops import OPS
from boltc.plan.moments import moment_dtypes, moment_kind
from boltc.runtime.lsh.index import LSHIndex

INIT_STD = 0.01
MOMENT_NUMPY = {"f32": np.dtype(np.float32), "bf16": np.dtype(np.uint16)}   # bf16: its bits, as uint16


ALIGN = 64


def aligned_empty(shape, dtype, align: int = ALIGN, zero: bool = False) -> np.ndarray:
    """An uninitialised (or zeroed) C-contiguous array whose data starts on an `align`-byte boundary:
    a view into a byte buffer over-allocated by `align` (np.zeros for `zero`: still calloc, lazy
    pages). The view keeps the buffer alive."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = (np.zeros if zero else np.empty)(nbytes + align, np.uint8)
    start = -buf.ctypes.data % align
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def aligned_zeros(shape, dtype, align: int = ALIGN) -> np.ndarray:
    return aligned_empty(shape, dtype, align, zero=True)


def aligned_copy(a: np.ndarray, dtype=None, align: int = ALIGN) -> np.ndarray:
    """`a` (as `dtype`) in a fresh aligned C-contiguous array; `a` itself when it already is one,
    writeable (no copy of weights loaded aligned)."""
    dtype = np.dtype(a.dtype if dtype is None else dtype)
    if (isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
            and is_aligned(a, align)):
        return a
    out = aligned_empty(np.shape(a), dtype, align)
    out[...] = a
    return out


def is_aligned(a: np.ndarray, align: int = ALIGN) -> bool:
    return a.size == 0 or a.ctypes.data % align == 0


def _standard_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """N(0, INIT_STD) float32 into an aligned array: the same draws and the same product as
    `rng.standard_normal(shape, dtype=np.float32) * INIT_STD`."""
    out = aligned_empty(shape, np.float32)
    rng.standard_normal(out.shape, dtype=np.float32, out=out)
    out *= np.float32(INIT_STD)
    return out


def _layer_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def init_params(layer: dict, seed: int) -> dict[str, np.ndarray]:
    """The op's parameters (boltc/ops/<op>.py `params`), each drawn as its `param_init` says, in the
    declared order from the layer's own generator."""
    op = OPS.get(layer["op"])
    shapes = op.params(layer) if op is not None else {}
    if not shapes:
        return {}
    rng, out = _layer_rng(seed, layer["name"]), {}
    for tensor, shape in shapes.items():
        kind = op.param_init[tensor]
        if kind == "normal":
            out[tensor] = _standard_normal(rng, shape)
        else:
            out[tensor] = aligned_zeros(shape, np.float32)
            if kind == "ones":
                out[tensor][...] = 1.0
    return out


def neuron_rows(layer: dict, W: np.ndarray) -> np.ndarray:
    """W seen as (dim, in_dim): one row per neuron (a view; in_major W is transposed)."""
    return W.T if layer.get("layout") == "in_major" else W


def make_lsh(layer: dict, seed: int):
    h = layer["hash"]
    return LSHIndex(h["family"], layer["in_dim"], layer["dim"], h.get("hashes", h["range_bits"]),
                    h["range_bits"], h["tables"], h["reservoir"], seed=int(seed) * 7919 + zlib.crc32(layer["name"].encode()) % 7919,
                    bin_size=h.get("bin_size", 8))


@dataclass
class ModelState:
    params: dict[str, dict[str, np.ndarray]]
    m: dict[str, dict[str, np.ndarray]]
    v: dict[str, dict[str, np.ndarray]]
    step: int = 0
    lsh: dict = field(default_factory=dict)
    blend: dict = field(default_factory=dict)      # "ridge": (input dim, classes) weights (runtime/train/blend.py)

    @classmethod
    @debug.stage("init weights", part="init")
    def init(cls, plan: dict, seed: int | None = None) -> "ModelState":
        """Fresh parameters for `plan`, LSH indexes filled with random buckets (see below)."""
        seed = plan.get("train", {}).get("seed", 0) if seed is None else seed
        params = {}
        for layer in plan["layers"]:
            p = init_params(layer, seed)
            if p:
                params[layer["name"]] = p
        out = next((l for l in plan["layers"] if l["name"] == plan["output"]), None)
        if out is not None and out.get("hash"):
            params[out["name"]]["label_count"] = aligned_zeros(out["dim"], np.float32)
        state = cls(params=params, m=zero_moments(plan, params), v=zero_moments(plan, params))
        for layer in plan["layers"]:
            if layer.get("hash"):
                idx = make_lsh(layer, seed)
                # the initial weights are i.i.d. random, so their buckets are uniformly random: draw
                # those directly instead of hashing (a minute of NumPy at 100k neurons); the first
                # scheduled rebuild hashes the trained weights
                idx.build_random()
                state.lsh[layer["name"]] = idx
        return state

    def n_parameters(self) -> int:
        return sum(a.size for p in self.params.values() for k, a in p.items() if k != "label_count")


def moment_numpy_dtypes(plan: dict, params: dict) -> dict[str, dict[str, np.dtype]]:
    """{layer: {tensor: numpy dtype of its moments}} for every tensor in `params`."""
    kinds = moment_dtypes(plan)
    return {n: {k: MOMENT_NUMPY[moment_kind(kinds, n, k)] for k in p} for n, p in params.items()}


def zero_moments(plan: dict, params: dict) -> dict[str, dict[str, np.ndarray]]:
    """One moment buffer per parameter, zero, in the storage the plan chose (0x0000 is bf16 +0.0)."""
    dts = moment_numpy_dtypes(plan, params)
    return {n: {k: aligned_zeros(a.shape, dts[n][k]) for k, a in p.items()} for n, p in params.items()}


def check_moments(plan: dict, state: "ModelState") -> None:
    """Raise if a moment array's dtype or shape is not what the plan's kernels will write (a float32
    kernel writing into a uint16 array would write past its end)."""
    dts = moment_numpy_dtypes(plan, state.params)
    for moments in (state.m, state.v):
        for n, p in state.params.items():
            for k, a in p.items():
                got = (moments.get(n) or {}).get(k)
                if got is None or got.dtype != dts[n][k] or got.shape != a.shape or not got.flags.c_contiguous:
                    raise ValueError(f"optimizer state of {n}.{k}: expected {dts[n][k]} moments of shape "
                                     f"{a.shape}, found {None if got is None else (got.dtype, got.shape)}")
