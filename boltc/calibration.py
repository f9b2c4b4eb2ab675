"""Host calibration of the sparse-or-dense choice (boltc/passes/execution_cost.py).

The choice weighs an LSH-sparse layer's gathered rows and lazy updates against the dense layer's
streaming products, in units of one dense multiply-add: GATHER (a multiply-add on an active neuron's
row, read at random) and ADAM (the optimizer's update of one weight entry). Their fixed values were
set on one machine; on another CPU (cache sizes, vector width, memory latency) they are measured here:
the layer's real kernels, generated for this host, timed once on one shape, the result cached on disk
beside the compiled kernels.

What is timed (B = 64 examples, in_dim = 128, dim = 2,048, active = 1,024: a share where the choice is
made), each op the way the executor runs it at that size:
- dense: the forward on numpy's BLAS (runtime/exec/blas.py), the input gradient and the update (weight
  gradient + optimizer) with the generated dense kernels;
- sparse: the neuron-order forward, the input gradient by examples and the lazy update over random
  active sets (distinct ids per example), with the generated active-set kernels.
- the LSH selection of the sparse layer: the DWTA hash (256 tables x 3 hashes, bins of 8: bibtex's) and
  the training lookup (full reservoirs of 4, 2 MB of tables, 128 ids taken, about one a slot).
MAC = dense (forward + input gradient) seconds per multiply-add; GATHER = the sparse ones' seconds per
multiply-add / MAC; ADAM = the dense update's seconds per entry / MAC - B (each entry also takes B
multiply-adds of the weight gradient; timed on UPDATE_ROWS examples so that the optimizer's share is
resolved), at least 1; HASH = the hash's seconds per bin entry / MAC;
PROBE = the lookup's seconds per id taken (a slot read) / MAC.

Decisions:
- Cache: `<kernel cache dir>/calib-<key>.json` through boltc/kernel_cache.py (checksummed, written
  atomically, measured under the key's lock, so concurrent first compiles measure once), key = host
  CPU + features + llvmlite version + boltc version + CALIBRATION_VERSION. No cache folder
  (BOLTC_CACHE=off), a read-only or full disk: measured, used, not stored. A file that fails its
  checksum is measured again; a file whose content is no calibration, or a measurement that fails:
  the fixed constants, and --explain says why. Never an exception out of here.
- Only a layer whose choice can go either way pays for a measurement (execution_cost.runs_dense asks
  with measure=False below MIN_DENSE_SHARE, where the layer stays sparse anyway).
- BOLTC_CALIBRATION=fixed uses the fixed constants; BOLTC_CALIBRATION=<path> reads that calibration
  file (plain JSON as `measure` returns it: how the tests plant one).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import llvmlite
import numpy as np

from boltc import codegen, kernel_cache
from boltc.lower import backward, select
from boltc.lower.builder import KernelModule
from boltc.lower.kernels import build, ptr
from boltc.passes.execution_cost import CostModel, fixed
from boltc.runtime.exec import blas
from boltc.runtime.exec.threads import ThreadPool
from boltc.runtime.lsh.index import LSHIndex
from boltc.version import __version__

CALIBRATION_VERSION = 1
SHAPE = {"batch": 64, "in_dim": 128, "dim": 2048, "active": 1024}
UPDATE_ROWS = 8
LSH_SHAPE = {"tables": 256, "hashes": 3, "bin_size": 8, "reservoir": 4, "taken": 128}


def cache_key() -> str:
    t = codegen.host_target()
    parts = (t.triple, t.cpu, t.features, llvmlite.__version__, __version__, str(CALIBRATION_VERSION))
    return "calib-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def from_record(rec, where: str) -> CostModel:
    """A CostModel from a calibration record (a dict as `measure` returns), or the fixed one saying why."""
    try:
        vals = {k: float(rec[k]) for k in ("gather", "adam", "hash", "probe")}
        if not all(0.0 <= v <= 1e4 for v in vals.values()) or vals["gather"] < 0.05:
            raise ValueError("values out of range (" + ", ".join(f"{k} {v:g}" for k, v in vals.items()) + ")")
        when = str(rec.get("measured", "?"))[:10]
        return CostModel(**vals, source=f"measured on this host ({rec.get('cpu', '?')}, {when}; {where})")
    except (TypeError, KeyError, ValueError) as e:
        return fixed(f"the calibration in {where} is not usable: {e}")


def host_costs(measure: bool = True) -> CostModel:
    """The cost model of this host: planted (BOLTC_CALIBRATION), cached, measured now (measure=True)
    or the fixed constants. Never raises."""
    setting = os.environ.get("BOLTC_CALIBRATION", "").strip()
    if setting.lower() in ("fixed", "off", "0"):
        return fixed("BOLTC_CALIBRATION=fixed")
    if setting:
        try:
            return from_record(json.loads(Path(setting).read_text()), setting)
        except (OSError, ValueError) as e:
            return fixed(f"BOLTC_CALIBRATION file {setting} unreadable: {e}")
    try:
        return _cached_or_measured(measure)
    except Exception as e:        # noqa: BLE001 - a calibration problem must never stop a compile
        return fixed(f"calibration failed: {type(e).__name__}: {e}")


def _cached_or_measured(measure: bool) -> CostModel:
    d = kernel_cache.cache_dir()
    key = cache_key()
    if d is not None:
        payload = kernel_cache.read(d / f"{key}.json")
        if payload is not None:
            try:
                return from_record(json.loads(payload), f"cached in {d / key}.json")
            except ValueError as e:
                return fixed(f"the calibration cached in {d / key}.json is not JSON: {e}")
    if not measure:
        return fixed("not measured: below the share where the layer could run dense")
    if d is None:
        return from_record(measure_host(), "measured now, not cached: BOLTC_CACHE=off")
    (payload,), hit = kernel_cache.cached(key, (".json",), lambda: [json.dumps(measure_host()).encode()])
    where = f"cached in {d / key}.json" if hit else f"measured now, stored in {d / key}.json"
    return from_record(json.loads(payload), where)


def measure_host(rounds: int = 5) -> dict:
    """Time the dense and the sparse fc kernels on SHAPE (see the module note): the calibration record."""
    B, IN, D, K = SHAPE["batch"], SHAPE["in_dim"], SHAPE["dim"], SHAPE["active"]
    km = KernelModule("boltc_calibration")
    backward.input_grad(km, "dx", IN, D, False, "linear")
    backward.rows_update_out_major(km, "upd", IN, D, False, True, "adam")
    backward.invert(km, "invert", D)
    backward.fwd_by_neuron(km, "fwd_neuron", IN, K, True)
    backward.input_grad(km, "dx_active", IN, K, True, "linear")
    backward.rows_update_out_major(km, "upd_active", IN, K, True, True, "adam")
    L, H, BIN, R, TAKE = (LSH_SHAPE[k] for k in ("tables", "hashes", "bin_size", "reservoir", "taken"))
    select.dwta_hash(km, "hash", IN, L, H, 3 * H, BIN)
    select.lookup(km, "lookup", D, TAKE)
    lib = build(km)
    fn = lib.symbol
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, IN)).astype(np.float32)
    W = (rng.standard_normal((D, IN)) * 0.01).astype(np.float32)
    b = np.zeros(D, np.float32)
    mW, vW, mb, vb = np.zeros_like(W), np.zeros_like(W), np.zeros_like(b), np.zeros_like(b)
    hyper = np.array([1e-6, 0.9, 0.999, 1e-7, 0.1, 0.001, 0.0], np.float32)   # backward.HYPER order
    scratch = np.zeros(IN, np.float32)
    g_dense = (rng.standard_normal((B, D)) * 1e-3).astype(np.float32)
    g_sparse = np.ascontiguousarray(g_dense[:, :K])
    ids = np.argsort(rng.random((B, D)), axis=1)[:, :K].astype(np.int32)       # distinct per example
    dx = np.empty_like(x)
    out = np.empty((B, K), np.float32)
    counts, offs = np.zeros(D, np.int32), np.empty(D, np.int64)
    uniq, seg, pos, nu = (np.empty(B * K, np.int32), np.empty(B * K + 1, np.int64),
                          np.empty(B * K, np.int32), np.zeros(1, np.int64))
    pool = ThreadPool(1)
    index = LSHIndex("dwta", IN, D, H, 3 * H, L, R, seed=0, bin_size=BIN)
    index.build_random()
    xT = np.zeros((IN, B + select.DWTA_LANES), np.float32)
    xT[:, :B] = np.maximum(x, 0).T                                             # a ReLU layer's output
    idxT, probe = np.ascontiguousarray(index.idx.T), np.ascontiguousarray(index.probe)
    buckets, taken = np.empty((B, L), np.int32), np.empty((B, TAKE), np.int32)
    hash_scratch = np.empty(select.dwta_scratch_words(index.n_hashes), np.int32)
    marks = np.zeros(D // 32 + 1, np.int32)

    def inversion():
        fn("invert")(ptr(ids), ids.size, ptr(counts), ptr(offs), ptr(uniq), ptr(seg), ptr(pos), ptr(nu))
        return int(nu[0])

    ops = {
        "dense_fwd": lambda: blas.matmul_nt(pool, x, W, b),
        "dense_dx": lambda: fn("dx")(0, B, ptr(g_dense), None, ptr(W), ptr(x), ptr(dx)),
        "dense_update": lambda: fn("upd")(0, D, None, None, None, UPDATE_ROWS, ptr(g_dense), ptr(x), ptr(W),
                                          ptr(b), ptr(mW), ptr(vW), ptr(mb), ptr(vb), ptr(hyper), ptr(scratch)),
        "sparse_fwd": lambda: fn("fwd_neuron")(0, inversion(), ptr(uniq), ptr(seg), ptr(pos), ptr(x), ptr(W),
                                               ptr(b), ptr(out)),
        "sparse_dx": lambda: fn("dx_active")(0, B, ptr(g_sparse), ptr(ids), ptr(W), ptr(x), ptr(dx)),
        "hash": lambda: fn("hash")(0, B, ptr(xT), xT.shape[1], ptr(idxT), ptr(probe), ptr(buckets),
                                   ptr(hash_scratch)),
        "lookup": lambda: fn("lookup")(0, B, ptr(buckets), ptr(index.tables), L, index.tables.shape[1], R,
                                       None, None, 0, 12345, TAKE, None, None, 0, ptr(taken), ptr(marks)),
    }
    # calls per timing: each timing lasts about a millisecond (the hash and the lookup take tens of us)
    reps = {"hash": 16, "lookup": 8}
    seconds = {}
    for _ in range(rounds):              # best of rounds, the ops alternating (a shared machine's load moves)
        for name, op in ops.items():
            n = reps.get(name, 1)
            t = time.process_time()
            for _ in range(n):
                op()
            dt = (time.process_time() - t) / n
            seconds[name] = min(seconds.get(name, dt), dt)
    mac = (seconds["dense_fwd"] + seconds["dense_dx"]) / (2 * B * D * IN)
    gather = (seconds["sparse_fwd"] + seconds["sparse_dx"]) / (2 * B * K * IN) / mac
    adam = max(1.0, seconds["dense_update"] / (D * IN) / mac - UPDATE_ROWS)
    hash_ = seconds["hash"] / (B * L * H * BIN) / mac
    probe_ = seconds["lookup"] / (B * TAKE) / mac
    return {"version": CALIBRATION_VERSION, "gather": gather, "adam": adam, "hash": hash_, "probe": probe_,
            "mac_ns": mac * 1e9, "seconds": seconds, "shape": SHAPE, "lsh_shape": LSH_SHAPE,
            "cpu": codegen.host_target().cpu,
            "measured": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
