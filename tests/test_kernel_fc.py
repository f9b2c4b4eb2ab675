"""The fc forward kernels alone (boltc/lower/fc.py), against a float64 NumPy oracle: the gather over
active sets and the sparse-input layer (both with their row prefetch, and without), the dense pass;
thread-count identity; the prefetch lookahead never reads past the ids or indices it was given."""
import ctypes
import mmap
import os
import re

import numpy as np
import pytest

from boltc import codegen
from boltc.lower import fc
from boltc.lower.builder import KernelModule
from boltc.lower.kernels import Kernels, ptr
from boltc.runtime.exec.threads import ThreadPool

RTOL, ATOL = 1e-5, 1e-6            # docs/native.md, "Tolerances"


def build(define) -> Kernels:
    km = KernelModule("test_fc")
    define(km)
    lib, _ = codegen.build(km.ir_text())
    return Kernels(lib, km.signatures, {"t": {n: n for n in km.signatures}})


def misaligned(a: np.ndarray, floats: int) -> np.ndarray:
    """A copy of `a` (any dtype: float32 weights, uint16 bf16 moments) starting `floats` float32s,
    4 * floats bytes, past a 64-byte boundary (rows straddle lines)."""
    offset = 4 * floats
    buf = np.empty(a.nbytes + 64 + offset, np.uint8)
    start = -buf.ctypes.data % 64 + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def act(z, activation):
    return {"linear": z, "relu": np.maximum(z, 0), "sigmoid": 1 / (1 + np.exp(-z)), "tanh": np.tanh(z)}[activation]


def gather_oracle(h, ids, W, bias, activation="linear"):
    z = np.einsum("bj,bkj->bk", h.astype(np.float64), W[ids].astype(np.float64))
    if bias is not None:
        z = z + bias[ids]
    return act(z, activation)


def random_case(rng, dim, in_dim, B, K):
    W = rng.standard_normal((dim, in_dim), dtype=np.float32)
    bias = rng.standard_normal(dim, dtype=np.float32)
    h = rng.standard_normal((B, in_dim), dtype=np.float32)
    ids = np.stack([rng.choice(dim, K, replace=False) for _ in range(B)]).astype(np.int32)
    return W, bias, h, ids


# in_dim: short rows, one line, the shipped 256, rows longer than the prefetched 1 KB, odd widths;
# K below and above the lookahead distance
@pytest.mark.parametrize("in_dim,K,dim", [(8, 3, 50), (20, 30, 300), (256, 5, 400), (256, 100, 3000),
                                          (300, 17, 500), (1000, 40, 200), (33, 64, 1000)])
@pytest.mark.parametrize("prefetch", [True, False])
def test_gather_matches_oracle_on_misaligned_weights(in_dim, K, dim, prefetch):
    rng = np.random.default_rng(in_dim * 1000 + K)
    B = 7
    W, bias, h, ids = random_case(rng, dim, in_dim, B, K)
    k = build(lambda km: fc.dense_fc_fwd(km, "g", in_dim, K, "linear", True, True, prefetch=prefetch))
    want = gather_oracle(h, ids, W, bias)
    for floats in (0, 1, 4):
        Wm = misaligned(W, floats)
        out = np.full((B, K), np.nan, np.float32)
        k.fn("t", "g")(0, B, ptr(h), ptr(ids), ptr(Wm), ptr(bias), ptr(out))
        np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL * in_dim)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_gather_without_bias_with_activation(activation):
    rng = np.random.default_rng(3)
    in_dim, K, dim, B = 64, 24, 500, 5
    W, _, h, ids = random_case(rng, dim, in_dim, B, K)
    k = build(lambda km: fc.dense_fc_fwd(km, "g", in_dim, K, activation, False, True))
    out = np.empty((B, K), np.float32)
    k.fn("t", "g")(0, B, ptr(h), ptr(ids), ptr(W), None, ptr(out))
    np.testing.assert_allclose(out, gather_oracle(h, ids, W, None, activation), rtol=RTOL, atol=1e-5)


def test_dense_pass_matches_oracle():
    rng = np.random.default_rng(4)
    in_dim, dim, B = 40, 77, 6
    W, bias, h, _ = random_case(rng, dim, in_dim, B, 1)
    k = build(lambda km: fc.dense_fc_fwd(km, "d", in_dim, dim, "relu", True, False))
    out = np.empty((B, dim), np.float32)
    k.fn("t", "d")(0, B, ptr(h), None, ptr(W), ptr(bias), ptr(out))
    want = np.maximum(h.astype(np.float64) @ W.T.astype(np.float64) + bias, 0)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=1e-5)


def csr_case(rng, F, B, max_nnz):
    nnz = rng.integers(0, max_nnz, B)
    indptr = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
    indices = np.concatenate([np.sort(rng.choice(F, n, replace=False)) for n in nnz]).astype(np.int32)
    return indptr, indices, rng.random(indptr[-1], dtype=np.float32)


def sparse_oracle(indptr, indices, vals, W, b, activation):
    rows = [b + vals[p0:p1].astype(np.float64) @ W[indices[p0:p1]].astype(np.float64)
            for p0, p1 in zip(indptr[:-1], indptr[1:])]
    return act(np.stack(rows), activation)


@pytest.mark.parametrize("dim", [48, 256, 300])
@pytest.mark.parametrize("prefetch", [True, False])
def test_sparse_input_layer_matches_oracle(dim, prefetch):
    rng = np.random.default_rng(5 + dim)
    F, B = 300, 9
    W = misaligned(rng.standard_normal((F, dim), dtype=np.float32), 4)
    b = rng.standard_normal(dim, dtype=np.float32)
    indptr, indices, vals = csr_case(rng, F, B, 40)       # rows with 0 to 39 nonzeros
    k = build(lambda km: fc.sparse_fc_fwd(km, "s", dim, "tanh", True, prefetch=prefetch))
    out = np.empty((B, dim), np.float32)
    k.fn("t", "s")(0, B, ptr(indptr), ptr(indices), ptr(vals), ptr(W), ptr(b), ptr(out))
    np.testing.assert_allclose(out, sparse_oracle(indptr, indices, vals, W, b, "tanh"), rtol=RTOL, atol=1e-5)


def test_gather_bits_do_not_depend_on_thread_count():
    """Each (b, k) is computed by one thread, whole, in a fixed order; the lookahead only hints."""
    rng = np.random.default_rng(6)
    in_dim, K, dim, B = 256, 50, 5000, 13
    W, bias, h, ids = random_case(rng, dim, in_dim, B, K)
    k = build(lambda km: fc.dense_fc_fwd(km, "g", in_dim, K, "linear", True, True))
    outs = []
    for threads in (1, 2, 3):
        out = np.empty((B, K), np.float32)
        ThreadPool(threads).run(k.fn("t", "g"), B, ptr(h), ptr(ids), ptr(W), ptr(bias), ptr(out))
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_gather_prefetches_each_row_into_l2():
    km = KernelModule("ir")
    fc.dense_fc_fwd(km, "g", 256, 100, "linear", True, True)
    fc.dense_fc_fwd(km, "n", 256, 100, "linear", True, True, prefetch=False)
    opt = codegen.optimized_ir(km.ir_text())
    g = opt[opt.index("define void @g("):opt.index("define void @n(")]
    n = opt[opt.index("define void @n("):]
    # 16 lines of a 1 KB row + its last element (the 17th line of a row 16 bytes past a boundary)
    calls = re.findall(r"call void @llvm\.prefetch\.p0\(ptr [^,]+, i32 0, i32 (\d), i32 1\)", g)
    assert len(calls) == 17 and set(calls) == {str(fc.PREFETCH_LOCALITY)}
    assert "llvm.prefetch" not in n
    assert re.search(r"fadd [a-z ]*<\d+ x float>", g)     # the row's dot is still vectorized


def fenced_copy(a: np.ndarray):
    """(copy of `a` ending right before an unreadable page, the mapping that keeps it alive)."""
    page = mmap.PAGESIZE
    pages = -(-a.nbytes // page) + 1
    region = mmap.mmap(-1, pages * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    guard = base + (pages - 1) * page
    assert libc.mprotect(ctypes.c_void_p(guard), ctypes.c_size_t(page), 0) == 0     # PROT_NONE
    out = np.frombuffer(region, a.dtype, count=a.size, offset=(pages - 1) * page - a.nbytes).reshape(a.shape)
    out[...] = a
    return out, region


def survives_in_child(calls) -> bool:
    """Run the native calls in a forked child (a read of the guard page kills only the child)."""
    pid = os.fork()
    if pid == 0:                                      # child: only native calls, then leave at once
        for call in calls:
            call()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to contain a crash")
def test_gather_lookahead_never_reads_past_the_ids():
    """ids end right before an unreadable page: a lookahead load past them would crash the child."""
    in_dim, K, dim, B = 16, 5, 100, 3                 # K < PREFETCH_ROWS: the lookahead clamps
    rng = np.random.default_rng(7)
    W, bias, h, ids = random_case(rng, dim, in_dim, B, K)
    k = build(lambda km: fc.dense_fc_fwd(km, "g", in_dim, K, "linear", True, True))
    fenced, _region = fenced_copy(ids)
    out = np.empty((B, K), np.float32)
    fn = k.fn("t", "g")
    slices = ((0, B), (1, B), (B - 1, B), (0, 1))
    assert survives_in_child([lambda s=s: fn(*s, ptr(h), ptr(fenced), ptr(W), ptr(bias), ptr(out))
                              for s in slices])
    fn(0, B, ptr(h), ptr(fenced), ptr(W), ptr(bias), ptr(out))
    np.testing.assert_allclose(out, gather_oracle(h, ids, W, bias), rtol=RTOL, atol=1e-5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to contain a crash")
def test_sparse_input_lookahead_never_reads_past_the_indices():
    F, dim, B = 200, 32, 4
    rng = np.random.default_rng(8)
    W = rng.standard_normal((F, dim), dtype=np.float32)
    b = rng.standard_normal(dim, dtype=np.float32)
    indptr, indices, vals = csr_case(rng, F, B, 6)       # fewer nonzeros than PREFETCH_ROWS
    fenced, _region = fenced_copy(indices)
    out = np.empty((B, dim), np.float32)
    k = build(lambda km: fc.sparse_fc_fwd(km, "s", dim, "relu", True))
    fn = k.fn("t", "s")
    slices = ((0, B), (1, B), (B - 1, B), (0, 1))
    assert survives_in_child([lambda s=s: fn(*s, ptr(indptr), ptr(fenced), ptr(vals), ptr(W), ptr(b), ptr(out))
                              for s in slices])
    fn(0, B, ptr(indptr), ptr(fenced), ptr(vals), ptr(W), ptr(b), ptr(out))
    np.testing.assert_allclose(out, sparse_oracle(indptr, indices, vals, W, b, "relu"), rtol=RTOL, atol=1e-5)
