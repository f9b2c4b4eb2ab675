"""Row prefetch in the training kernels (boltc/lower/backward.py: the neuron-order forward, the fused
update of the output layer and the sparse-input layer's update) and 64-byte aligned parameters and
moments (runtime/exec/state.py, runtime/savefile/model.py).

Prefetch hints and alignment change speed only: the kernels give the same bits with and without
hints, on aligned and misaligned rows, and the lookahead never reads uniq outside its slice."""
import os

import numpy as np
import pytest

from boltc.lower import backward as bw
from boltc.lower.fc import PREFETCH_ROWS
from boltc.runtime import savefile
from boltc.lower.kernels import ptr
from boltc.runtime.exec.state import INIT_STD, ModelState, _layer_rng, aligned_empty, init_params, is_aligned
from native_helpers import make_plan
from test_kernel_fc import build, fenced_copy, misaligned, survives_in_child


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.dtype == np.uint16 else np.uint32)


# ------------------------------------------------------------------ alignment of the state

def every_array(state):
    for group in (state.params, state.m, state.v):
        for layer, tensors in group.items():
            for t, a in tensors.items():
                yield f"{layer}.{t}", a


def assert_all_aligned(state):
    bad = [(n, a.ctypes.data % 64) for n, a in every_array(state) if not is_aligned(a)]
    assert not bad, f"not on a 64-byte boundary: {bad}"
    assert all(a.flags.c_contiguous and a.flags.writeable for _, a in every_array(state))


@pytest.mark.parametrize("shape,dtype", [((3,), np.float32), ((1000, 37), np.float32), ((17, 5), np.uint16),
                                         ((0, 4), np.float32), (7, np.int64)])
def test_aligned_empty(shape, dtype):
    for _ in range(5):
        a = aligned_empty(shape, dtype)
        assert is_aligned(a) and a.flags.c_contiguous and a.flags.writeable
        assert a.shape == ((shape,) if isinstance(shape, int) else shape) and a.dtype == dtype


@pytest.mark.parametrize("moments", ["f32", "bf16"])
def test_fresh_state_is_aligned(moments):
    plan = make_plan(300, 24, 20000, 100, extra_hidden=1)
    plan["train"]["moments"] = moments
    st = ModelState.init(plan)
    assert_all_aligned(st)
    assert st.m["scores"]["W"].dtype == (np.uint16 if moments == "bf16" else np.float32)


def test_aligned_init_draws_the_same_weights():
    """Alignment moved the arrays, not the numbers: the draws of the unaligned init, bit for bit."""
    for layer in make_plan(300, 24, 500, 50)["layers"]:
        shape = (layer["in_dim"], layer["dim"]) if layer["layout"] == "in_major" else (layer["dim"], layer["in_dim"])
        want = _layer_rng(11, layer["name"]).standard_normal(shape, dtype=np.float32) * INIT_STD
        np.testing.assert_array_equal(bits(init_params(layer, 11)["W"]), bits(want))


@pytest.mark.parametrize("moments", ["f32", "bf16"])
@pytest.mark.parametrize("with_optimizer", [False, True])
def test_loaded_state_is_aligned(tmp_path, moments, with_optimizer):
    """A saved model and a checkpoint load aligned: the big output layer (> 1 MB: read straight into
    its array) and the small tensors (read through the zip layer, then copied aligned)."""
    plan = make_plan(300, 24, 20000, 100)
    plan["train"]["moments"] = moments
    st = ModelState.init(plan)
    rng = np.random.default_rng(0)
    for _, a in every_array(st):
        a[...] = rng.integers(0, 1000, a.shape).astype(a.dtype)     # nonzero moments survive the trip
    path = tmp_path / "m.boltc"
    savefile.save_model(path, savefile.state_to_saved("model t {}", plan, st, with_optimizer=with_optimizer))
    back = savefile.state_from_saved(savefile.load_model(path), path)
    assert_all_aligned(back)
    for layer, tensors in st.params.items():
        for t, a in tensors.items():
            np.testing.assert_array_equal(back.params[layer][t], a)
            if with_optimizer:
                np.testing.assert_array_equal(back.m[layer][t], st.m[layer][t])
                np.testing.assert_array_equal(back.v[layer][t], st.v[layer][t])


# ------------------------------------------------------------------ the kernels: same bits

def inversion(ids: np.ndarray):
    """uniq (increasing), seg, pos (positions in increasing order per neuron): the invert kernel's."""
    flat = ids.ravel()
    uniq, counts = np.unique(flat, return_counts=True)
    seg = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pos = np.argsort(flat, kind="stable").astype(np.int32)
    return uniq.astype(np.int32), seg, pos


def active_case(rng, dim, in_dim, B, K):
    ids = np.stack([rng.choice(dim, K, replace=False) for _ in range(B)]).astype(np.int32)
    return (rng.standard_normal((dim, in_dim), dtype=np.float32), rng.standard_normal(dim, dtype=np.float32),
            rng.standard_normal((B, in_dim), dtype=np.float32), ids)


# widths: short rows, one line, odd, the shipped 256, longer than the prefetched 1 KB; B * K small
# enough that a slice has fewer unique neurons than the lookahead distance
SHAPES = [(8, 3, 2, 50), (20, 5, 3, 300), (33, 7, 4, 1000), (256, 30, 5, 3000), (300, 17, 6, 500),
          (1000, 40, 3, 200)]


@pytest.mark.parametrize("in_dim,K,B,dim", SHAPES)
def test_neuron_order_forward_same_bits_with_prefetch(in_dim, K, B, dim):
    rng = np.random.default_rng(in_dim + K)
    W, bias, h, ids = active_case(rng, dim, in_dim, B, K)
    uniq, seg, pos = inversion(ids)
    k = build(lambda km: (bw.fwd_by_neuron(km, "on", in_dim, K, True, prefetch=True),
                          bw.fwd_by_neuron(km, "off", in_dim, K, True, prefetch=False)))
    n = uniq.size
    want = None
    for fn in ("off", "on"):
        for floats in (0, 1, 4):                     # W aligned and 4 / 16 bytes past a line
            Wm = misaligned(W, floats)
            for slices in ([(0, n)], [(0, 1), (1, n // 2), (n // 2, n - 1), (n - 1, n)]):
                out = np.full((B, K), np.nan, np.float32)
                for u0, u1 in slices:
                    k.fn("t", fn)(u0, u1, ptr(uniq), ptr(seg), ptr(pos), ptr(h), ptr(Wm), ptr(bias), ptr(out))
                if want is None:
                    want = out.copy()
                np.testing.assert_array_equal(bits(out), bits(want), err_msg=f"{fn} W+{floats} {slices}")
    oracle = np.einsum("bj,bkj->bk", h.astype(np.float64), W[ids].astype(np.float64)) + bias[ids]
    np.testing.assert_allclose(want, oracle, rtol=1e-5, atol=1e-6 * in_dim)


SPECS = [bw.UpdateSpec("adam"), bw.UpdateSpec("adam", "bf16", "bf16"), bw.UpdateSpec("adam", weight_decay=0.01),
         bw.UpdateSpec("sgd")]


def run_update(k, fn, in_dim, B, K, case, spec, fuse_dx, floats, slices):
    """One call of the update kernel per slice on fresh copies of W, m, v (rows `floats` float32s past
    a 64-byte line); returns every array it wrote."""
    uniq, seg, pos, g, x, W, b, mW, vW, mb, vb = case
    W, mW, vW = misaligned(W, floats), misaligned(mW, floats), misaligned(vW, floats)
    b, mb, vb = b.copy(), mb.copy(), vb.copy()
    hyper = np.array([1e-2, 0.9, 0.999, 1e-7, 0.1, 0.001, 0.5], np.float32)
    scratch = np.empty(in_dim, np.float32)
    dx = np.zeros((B, in_dim), np.float32)
    for u0, u1 in slices:
        k.fn("t", fn)(u0, u1, ptr(uniq), ptr(seg), ptr(pos), B, ptr(g), ptr(x), ptr(W), ptr(b), ptr(mW), ptr(vW),
                      ptr(mb), ptr(vb), ptr(hyper), ptr(scratch), *([ptr(dx)] if fuse_dx else []))
    return W, b, mW, vW, mb, vb, dx


@pytest.mark.parametrize("in_dim,K,B,dim", SHAPES)
@pytest.mark.parametrize("spec", SPECS, ids=["adam", "adam-bf16", "adamw", "sgd"])
@pytest.mark.parametrize("fuse_dx", [False, True])
def test_fused_update_same_bits_with_prefetch(in_dim, K, B, dim, spec, fuse_dx):
    rng = np.random.default_rng(in_dim * 7 + K)
    W, b, x, ids = active_case(rng, dim, in_dim, B, K)
    uniq, seg, pos = inversion(ids)
    g = rng.standard_normal((B, K), dtype=np.float32)
    mdt = np.uint16 if spec.moments_w == "bf16" else np.float32

    def moments(shape):
        if mdt == np.uint16:
            return (rng.random(shape, dtype=np.float32) * 0.01).view(np.uint32).__rshift__(16).astype(np.uint16)
        return rng.random(shape, dtype=np.float32) * 0.01

    case = (uniq, seg, pos, g, x, W, b, moments(W.shape), moments(W.shape), moments(b.shape), moments(b.shape))
    k = build(lambda km: (
        bw.rows_update_out_major(km, "on", in_dim, K, True, True, spec, fuse_dx=fuse_dx, prefetch=("W", "m", "v")),
        bw.rows_update_out_major(km, "off", in_dim, K, True, True, spec, fuse_dx=fuse_dx, prefetch=())))
    n = uniq.size
    want = run_update(k, "off", in_dim, B, K, case, spec, fuse_dx, 0, [(0, n)])
    for fn in ("off", "on"):
        for floats in (0, 1, 4):
            for slices in ([(0, n)], [(0, 1), (1, n // 2), (n // 2, n - 1), (n - 1, n)]):
                got = run_update(k, fn, in_dim, B, K, case, spec, fuse_dx, floats, slices)
                for name, a, w in zip(("W", "b", "mW", "vW", "mb", "vb", "dx"), got, want):
                    np.testing.assert_array_equal(bits(a), bits(w), err_msg=f"{fn} +{floats} {slices} {name}")
    assert not np.array_equal(want[0], W)              # it did update


@pytest.mark.parametrize("dim", [8, 33, 256, 300])
@pytest.mark.parametrize("spec", SPECS[:2] + SPECS[3:], ids=["adam", "adam-bf16", "sgd"])
def test_sparse_input_update_same_bits_with_prefetch(dim, spec):
    rng = np.random.default_rng(dim)
    F, B, nnz = 400, 6, 9
    feats = np.stack([rng.choice(F, nnz, replace=False) for _ in range(B)]).astype(np.int32)
    uniq, seg, pos = inversion(feats)
    prow = np.repeat(np.arange(B, dtype=np.int32), nnz)
    vals = rng.random(B * nnz, dtype=np.float32)
    dz = rng.standard_normal((B, dim), dtype=np.float32)
    W = rng.standard_normal((F, dim), dtype=np.float32)
    mdt = np.uint16 if spec.moments_w == "bf16" else np.float32
    m0 = (rng.random((F, dim), dtype=np.float32) * 0.01).view(np.uint32)
    m0 = (m0 >> 16).astype(np.uint16) if mdt == np.uint16 else m0.view(np.float32)
    hyper = np.array([1e-2, 0.9, 0.999, 1e-7, 0.1, 0.001, 0.5], np.float32)
    k = build(lambda km: (bw.rows_update_in_major(km, "on", dim, spec, prefetch=("W", "m", "v")),
                          bw.rows_update_in_major(km, "off", dim, spec, prefetch=())))
    n, want = uniq.size, None
    for fn in ("off", "on"):
        for floats in (0, 1, 4):
            for slices in ([(0, n)], [(0, 1), (1, n // 2), (n // 2, n - 1), (n - 1, n)]):
                Wm, m, v = misaligned(W, floats), misaligned(m0, floats), misaligned(m0, floats)
                scratch = np.empty(dim, np.float32)
                for u0, u1 in slices:
                    k.fn("t", fn)(u0, u1, ptr(uniq), ptr(seg), ptr(pos), ptr(prow), ptr(vals), ptr(dz), ptr(Wm),
                                  ptr(m), ptr(v), ptr(hyper), ptr(scratch))
                got = (Wm.copy(), m.copy(), v.copy())
                if want is None:
                    want = got
                    assert not np.array_equal(Wm, W)
                for name, a, w in zip(("W", "m", "v"), got, want):
                    np.testing.assert_array_equal(bits(a), bits(w), err_msg=f"{fn} +{floats} {slices} {name}")


def test_update_prefetch_hints_are_in_the_ir():
    """The default build prefetches the W, m and v rows ahead (17 hints per 1 KB f32 row; a 512 B bf16
    moment row takes 9), the forward the W row; without prefetch no hint is left."""
    import re

    from boltc import codegen
    from boltc.lower.builder import KernelModule
    km = KernelModule("ir")
    bw.rows_update_out_major(km, "u", 256, 100, True, True, "adam", fuse_dx=True)
    bw.rows_update_out_major(km, "u16", 256, 100, True, True, bw.UpdateSpec("adam", "bf16", "bf16"))
    bw.fwd_by_neuron(km, "f", 256, 100, True)
    bw.rows_update_out_major(km, "n", 256, 100, True, True, "adam", prefetch=())
    bw.fwd_by_neuron(km, "nf", 256, 100, True, prefetch=False)
    opt = codegen.optimized_ir(km.ir_text())

    def hints(name):
        body = opt[opt.index(f"define void @{name}("):]
        body = body[:body.index("\n}\n")]
        return len(re.findall(r"call void @llvm\.prefetch\.p0\(", body))

    per = {"W": 17, "m": 17, "v": 17}
    assert hints("u") == sum(per[t] for t in bw.UPDATE_PREFETCH)
    assert hints("u16") == sum(17 if t == "W" else 9 for t in bw.UPDATE_PREFETCH)
    assert hints("f") == 17
    assert hints("n") == hints("nf") == 0
    km = KernelModule("ir2")
    bw.rows_update_in_major(km, "i", 256, "adam")
    bw.rows_update_in_major(km, "ni", 256, "adam", prefetch=())
    opt = codegen.optimized_ir(km.ir_text())
    assert hints("i") == sum(per[t] for t in bw.UPDATE_PREFETCH) and hints("ni") == 0


# ------------------------------------------------------------------ the lookahead stays in its slice

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to contain a crash")
def test_lookahead_never_reads_past_uniq():
    """uniq ends right before an unreadable page: a lookahead load past the slice would crash the child.
    Fewer unique neurons than PREFETCH_ROWS, so the lookahead clamps on every iteration."""
    in_dim, K, B, dim = 16, 3, 2, 100
    rng = np.random.default_rng(9)
    W, bias, h, ids = active_case(rng, dim, in_dim, B, K)
    uniq, seg, pos = inversion(ids)
    assert uniq.size < PREFETCH_ROWS
    fenced, _region = fenced_copy(uniq)
    k = build(lambda km: (bw.fwd_by_neuron(km, "f", in_dim, K, True),
                          bw.rows_update_out_major(km, "u", in_dim, K, True, True, "adam"),
                          bw.rows_update_out_major(km, "d", in_dim, K, True, True, "adam", fuse_dx=True),
                          bw.rows_update_in_major(km, "i", K, "adam")))
    out = np.empty((B, K), np.float32)
    g = rng.standard_normal((B, K), dtype=np.float32)
    m, v, mb, vb = (np.zeros_like(W), np.zeros_like(W), np.zeros_like(bias), np.zeros_like(bias))
    hyper = np.array([1e-3, 0.9, 0.999, 1e-7, 0.1, 0.001, 0.0], np.float32)
    scratch, dx = np.empty(in_dim, np.float32), np.zeros((B, in_dim), np.float32)
    n = uniq.size
    prow = (np.arange(B * K) // K).astype(np.int32)
    vals = np.ones(B * K, np.float32)
    upd = (ptr(fenced), ptr(seg), ptr(pos), B, ptr(g), ptr(h), ptr(W), ptr(bias), ptr(m), ptr(v), ptr(mb),
           ptr(vb), ptr(hyper), ptr(scratch))
    calls = []
    for s in ((0, n), (1, n), (n - 1, n), (0, 1)):
        calls.append(lambda s=s: k.fn("t", "f")(*s, ptr(fenced), ptr(seg), ptr(pos), ptr(h), ptr(W), ptr(bias),
                                                  ptr(out)))
        calls.append(lambda s=s: k.fn("t", "u")(*s, *upd))
        calls.append(lambda s=s: k.fn("t", "d")(*s, *upd, ptr(dx)))
        # the first layer's update over the same uniq: W (in_dim=100 features x K), rows p // K of g
        calls.append(lambda s=s: k.fn("t", "i")(*s, ptr(fenced), ptr(seg), ptr(pos), ptr(prow), ptr(vals), ptr(g),
                                                  ptr(W.reshape(-1)[:dim * K]), ptr(m), ptr(v), ptr(hyper),
                                                  ptr(scratch)))
    assert survives_in_child(calls)
