"""The sparse fc forward kernel alone: GFLOP/s and GB/s of weight rows gathered, against the memory
bandwidth this script measures in the same run.

  python benchmarks/kernel_fc.py [--quick]

Kernels (the output layer of the Amazon-670K shape: 670,091 neurons x 256 inputs, out-major W of
686 MB, far beyond any cache; batch 256, 3,350 active neurons per example, random active sets):
- gather:      per example, dot(h[b], W[id]) for its 3,350 ids (the batch-1 inference path);
- neuron order: the batch's active sets inverted, each unique row read once, in address order (the
                training path; the inversion time is included).
Also the sparse-input first layer (135,909 x 256 in-major, 75 nonzeros per row).
Bytes counted: weight rows actually read (gather: every (b, id); neuron order: unique rows); FLOPs:
2 * in_dim per (b, id). Bandwidth: 2 threads reading a 1 GiB array (numpy sum), best of 3.
Goal: >= 50% of that bound when the weights do not fit in cache.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import table, write_json  # noqa: E402
from train_throughput import memory_bandwidth  # noqa: E402

from boltc import codegen  # noqa: E402
from boltc.lower import backward as bw  # noqa: E402
from boltc.lower import fc  # noqa: E402
from boltc.lower.builder import KernelModule  # noqa: E402
from boltc.runtime.native_kernels import Kernels, ptr  # noqa: E402
from boltc.runtime.threads import ThreadPool  # noqa: E402


def best_of(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    dim, IN, B, K, F, NNZ = 670091, 256, 256, 3350, 135909, 75
    if args.quick:
        dim = 200000
    reps = 3
    rng = np.random.default_rng(0)
    km = KernelModule("bench")
    fc.dense_fc_fwd(km, "gather", IN, K, "linear", True, True)
    bw.invert(km, "invert", dim)
    bw.fwd_by_neuron(km, "by_neuron", IN, K, True)
    fc.sparse_fc_fwd(km, "sparse_in", IN, "relu", True)
    lib, _ = codegen.build(km.ir_text())
    k = Kernels(lib, km.signatures, {"b": {n: n for n in km.signatures}})
    pool = ThreadPool(args.threads)
    bwidth = memory_bandwidth(args.threads)

    W = (rng.standard_normal((dim, IN), dtype=np.float32) * 0.01)
    bias = np.zeros(dim, np.float32)
    h = rng.random((B, IN), dtype=np.float32)
    ids = np.stack([rng.choice(dim, K, replace=False) for _ in range(B)]).astype(np.int32)
    out = np.empty((B, K), np.float32)
    rows = []

    def gather():
        pool.run(k.fn("b", "gather"), B, ptr(h), ptr(ids), ptr(W), ptr(bias), ptr(out))

    t = best_of(gather, reps)
    ref = out.copy()
    flops = 2.0 * B * K * IN
    rows.append({"kernel": "active fc, gather per example", "ms": round(t * 1e3, 1),
                 "GFLOP/s": round(flops / t / 1e9, 1), "GB/s": round(B * K * IN * 4 / t / 1e9, 1),
                 "% of bandwidth": f"{B * K * IN * 4 / t / bwidth:.0%}"})

    counts, offs = np.zeros(dim, np.int32), np.empty(dim, np.int64)
    uniq, seg, pos, nu = np.empty(B * K, np.int32), np.empty(B * K + 1, np.int64), np.empty(B * K, np.int32), np.zeros(1, np.int64)
    flat = np.ascontiguousarray(ids.ravel())

    def by_neuron():
        k.fn("b", "invert")(ptr(flat), flat.size, ptr(counts), ptr(offs), ptr(uniq), ptr(seg), ptr(pos), ptr(nu))
        pool.run(k.fn("b", "by_neuron"), int(nu[0]), ptr(uniq), ptr(seg), ptr(pos), ptr(h), ptr(W), ptr(bias),
                 ptr(out))

    t = best_of(by_neuron, reps)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    read = int(nu[0]) * IN * 4
    rows.append({"kernel": "active fc, neuron order (+inversion)", "ms": round(t * 1e3, 1),
                 "GFLOP/s": round(flops / t / 1e9, 1), "GB/s": round(read / t / 1e9, 1),
                 "% of bandwidth": f"{read / t / bwidth:.0%}"})

    W1 = rng.standard_normal((F, IN), dtype=np.float32) * 0.01
    b1 = np.zeros(IN, np.float32)
    indptr = np.arange(0, (B + 1) * NNZ, NNZ, dtype=np.int64)
    indices = np.sort(rng.integers(0, F, (B, NNZ)), axis=1).astype(np.int32).ravel()
    vals = rng.random(B * NNZ, dtype=np.float32)
    hout = np.empty((B, IN), np.float32)

    def sparse_in():
        pool.run(k.fn("b", "sparse_in"), B, ptr(indptr), ptr(indices), ptr(vals), ptr(W1), ptr(b1), ptr(hout))

    t = best_of(sparse_in, reps * 3)
    by = B * NNZ * IN * 4
    rows.append({"kernel": "sparse input fc (embedding bag)", "ms": round(t * 1e3, 2),
                 "GFLOP/s": round(2.0 * B * NNZ * IN / t / 1e9, 1), "GB/s": round(by / t / 1e9, 1),
                 "% of bandwidth": f"{by / t / bwidth:.0%}"})
    # vector width: LLVM's default on this CPU vs 256-bit vectors (DESIGN.md section 4: measure both)
    host = codegen.host_target()
    narrow = codegen.Target(host.triple, host.cpu, host.features + ",+prefer-256-bit")
    lib256, _ = codegen.build(km.ir_text(), narrow)
    k256 = Kernels(lib256, km.signatures, {"b": {n: n for n in km.signatures}})
    for label, kk in (("default width", k), ("prefer-256-bit", k256)):
        t = best_of(lambda: pool.run(kk.fn("b", "gather"), B, ptr(h), ptr(ids), ptr(W), ptr(bias), ptr(out)), reps)
        rows.append({"kernel": f"active fc, gather, {label}", "ms": round(t * 1e3, 1),
                     "GFLOP/s": round(flops / t / 1e9, 1), "GB/s": round(B * K * IN * 4 / t / 1e9, 1),
                     "% of bandwidth": f"{B * K * IN * 4 / t / bwidth:.0%}"})
    width = max(int(w) for w in __import__("re").findall(r"<(\d+) x float>", codegen.optimized_ir(km.ir_text())))
    width256 = max(int(w) for w in __import__("re").findall(r"<(\d+) x float>", codegen.optimized_ir(km.ir_text(), narrow)))
    print(f"widest float vector: default {width} lanes, prefer-256-bit {width256} lanes")
    print(f"memory bandwidth this run ({args.threads} threads, read 1 GiB): {bwidth / 1e9:.1f} GB/s; "
          f"W = {W.nbytes / 1e6:.0f} MB (out-major {dim} x {IN})")
    print(table(rows, ["kernel", "ms", "GFLOP/s", "GB/s", "% of bandwidth"]))
    print(f"wrote {write_json('kernel_fc', {'bandwidth_Bps': bwidth, 'threads': args.threads, 'dim': dim, 'rows': rows})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
