"""bfloat16 Adam moments: the rounding (a hand-computed table, and an independent float64 reference),
lazy Adam against a dense bf16-moment Adam reference, and the native update kernels against
runtime/exec/optim.py bit for bit (f32 and bf16 moments, with and without weight decay)."""

import numpy as np
import pytest

from boltc.lower import backward as bw
from boltc.runtime.exec.numpy_rules import ParamGrad
from boltc.runtime.exec.optim import Adam, bf16_from_f32, f32_from_bf16
from boltc.runtime.exec.state import ModelState
from test_kernel_fc import build

# float32 bits -> bfloat16 bits, rounded to nearest, ties to even; worked out by hand
TABLE = [
    (0x3F800000, 0x3F80),   # 1.0, exact
    (0x3F807FFF, 0x3F80),   # just below the tie: down
    (0x3F808000, 0x3F80),   # tie, kept half even: stays
    (0x3F808001, 0x3F81),   # just above the tie: up
    (0x3F818000, 0x3F82),   # tie, kept half odd: up to even
    (0xBF808000, 0xBF80),   # negative tie, even
    (0xBF818000, 0xBF82),   # negative tie, odd: away from zero to even
    (0x3DCCCCCD, 0x3DCD),   # 0.1f: dropped half 0xCCCD > 0x8000, up
    (0x00000000, 0x0000),   # +0
    (0x80000000, 0x8000),   # -0
    (0x00008000, 0x0000),   # subnormal tie, even: to zero
    (0x00018000, 0x0002),   # subnormal tie, odd: up
    (0x00008001, 0x0001),   # subnormal above the tie: smallest bf16 subnormal
    (0x007FFFFF, 0x0080),   # largest f32 subnormal: carries into the smallest normal
    (0x7F7F7FFF, 0x7F7F),   # rounds down to the largest finite bf16
    (0x7F7F8000, 0x7F80),   # tie above the largest finite (odd): to even = inf
    (0x7F7FFFFF, 0x7F80),   # largest finite f32: overflows to inf
    (0xFF7FFFFF, 0xFF80),   # and to -inf
    (0x7F800000, 0x7F80),   # inf
    (0xFF800000, 0xFF80),   # -inf
    (0x7FC00000, 0x7FC0),   # quiet NaN
    (0x7F800001, 0x7FC0),   # signalling NaN (payload only in the low half): stays NaN, quietened
    (0xFFFFFFFF, 0xFFFF),   # NaN with every bit set: no carry out of the pattern
]


def _bits_to_f32(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


def _reference_bf16(x: np.ndarray) -> np.ndarray:
    """Independent of the bit trick: the two bf16 neighbours of x, compared in float64, ties to even."""
    b = x.astype(np.float32).view(np.uint32)
    lo = (b >> 16).astype(np.uint32)
    hi = lo + 1
    f = lambda h: (h.astype(np.uint32) << 16).view(np.float32).astype(np.float64)   # noqa: E731
    with np.errstate(invalid="ignore", over="ignore"):
        d_lo = np.abs(x.astype(np.float64) - f(lo))
        d_hi = np.abs(f(hi) - x.astype(np.float64))
    up = (d_hi < d_lo) | ((d_hi == d_lo) & (lo & 1 == 1))
    return np.where(up, hi, lo).astype(np.uint16)


def test_rounding_matches_the_hand_table():
    x = _bits_to_f32([a for a, _ in TABLE])
    got = bf16_from_f32(x)
    assert [hex(g) for g in got] == [hex(b) for _, b in TABLE]
    back = f32_from_bf16(got)                                   # widening is exact: bits << 16
    np.testing.assert_array_equal(back.view(np.uint32), got.astype(np.uint32) << 16)


def test_rounding_matches_a_float64_reference_on_random_patterns():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    finite = np.isfinite(x) & (np.abs(x) < np.float32(3.38e38))   # leave the overflow edge to the table
    np.testing.assert_array_equal(bf16_from_f32(x[finite]), _reference_bf16(x[finite]))
    assert np.isnan(f32_from_bf16(bf16_from_f32(x[np.isnan(x)]))).all()


def _dense_bf16_adam(W, grads, lr, b1=0.9, b2=0.999, eps=1e-7):
    """Dense Adam whose moments are bfloat16 numbers: every update in float32, moments rounded on store
    (the float64 reference rounding), the step from the stored moments."""
    f = np.float32
    W = W.astype(f).copy()
    m = np.zeros_like(W)
    v = np.zeros_like(W)
    for t, g in enumerate(grads, 1):
        g = g.astype(f)
        m = f32_from_bf16(_reference_bf16(f(b1) * m + (f(1) - f(b1)) * g))
        v = f32_from_bf16(_reference_bf16(f(b2) * v + (f(1) - f(b2)) * (g * g)))
        W = W - (f(lr) * (m / f(1 - b1 ** t))) / (np.sqrt(v / f(1 - b2 ** t)) + f(eps))
    return W, m, v


def _bf16_state(W):
    W = W.astype(np.float32)
    z = lambda: {"l": {"W": np.zeros(W.shape, np.uint16)}}       # noqa: E731
    return ModelState(params={"l": {"W": W.copy()}}, m=z(), v=z())


def test_lazy_bf16_adam_equals_dense_bf16_adam_on_touched_rows(monkeypatch):
    rng = np.random.default_rng(1)
    W0 = rng.standard_normal((40, 7)).astype(np.float32)
    rows = np.sort(rng.choice(40, 25, replace=False))
    grads = [(rng.standard_normal((25, 7)) * 10.0 ** rng.integers(-6, 2, size=(25, 7))).astype(np.float32)
             for _ in range(6)]
    monkeypatch.setattr("boltc.runtime.exec.optim.ROW_CHUNK", 8)          # the chunked path too
    st, opt = _bf16_state(W0), Adam()
    for g in grads:
        st.step += 1
        opt.apply(st, {"l": {"W": ParamGrad(rows, None, g)}}, 0.01)
    full = []
    for g in grads:
        d = np.zeros_like(W0)
        d[rows] = g
        full.append(d)
    W, m, v = _dense_bf16_adam(W0, full, 0.01)
    np.testing.assert_array_equal(st.params["l"]["W"][rows], W[rows])
    np.testing.assert_array_equal(f32_from_bf16(st.m["l"]["W"])[rows], m[rows])
    np.testing.assert_array_equal(f32_from_bf16(st.v["l"]["W"])[rows], v[rows])
    untouched = np.setdiff1d(np.arange(40), rows)
    np.testing.assert_array_equal(st.params["l"]["W"][untouched], W0[untouched])
    assert not st.m["l"]["W"][untouched].any()


def test_bf16_moments_stay_close_to_f32_moments():
    """Not a bit-level claim: a run with bf16 moments tracks the float32 one. Each store rounds m by up
    to half an ulp (2^-9 of |m|); m averages gradients of both signs, so its error is measured against
    the scale of m (1% of its largest entry), and the weights' against the total step (10 lr)."""
    rng = np.random.default_rng(2)
    W0 = rng.standard_normal((30, 8)).astype(np.float32)
    a = _bf16_state(W0)
    b = ModelState(params={"l": {"W": W0.copy()}}, m={"l": {"W": np.zeros_like(W0)}},
                   v={"l": {"W": np.zeros_like(W0)}})
    for t in range(1, 11):
        g = rng.standard_normal((30, 8)).astype(np.float32)
        for s in (a, b):
            s.step = t
            Adam().apply(s, {"l": {"W": ParamGrad(None, None, g)}}, 1e-3)
    scale = np.abs(b.m["l"]["W"]).max()
    np.testing.assert_allclose(f32_from_bf16(a.m["l"]["W"]), b.m["l"]["W"], rtol=0, atol=0.01 * scale)
    np.testing.assert_allclose(a.params["l"]["W"], b.params["l"]["W"], rtol=0, atol=0.05 * 10 * 1e-3)


# ---------------------------------------------------------------- native kernels, bit for bit

def test_native_rounding_kernel_matches_the_table_and_numpy():
    def define(km):
        k = km.kernel("rne", [("i0", "i64"), ("i1", "i64"), ("x", "ptr"), ("out", "ptr"), ("back", "ptr")])
        with k.loop(k.arg["i0"], k.arg["i1"], "i") as i:
            k.st(k.arg["back"], i, bw.store_bf16(k, k.arg["out"], i, k.ld(k.arg["x"], i)))
        k.ret()
    k = build(define)                   # keep the library alive while its functions run
    rne = k.fn("t", "rne")
    rng = np.random.default_rng(3)
    x = np.concatenate([_bits_to_f32([a for a, _ in TABLE]),
                        rng.integers(0, 2**32, size=5000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    out = np.zeros(x.size, np.uint16)
    back = np.zeros(x.size, np.float32)
    rne(0, x.size, x.ctypes.data, out.ctypes.data, back.ctypes.data)
    assert [hex(g) for g in out[:len(TABLE)]] == [hex(b) for _, b in TABLE]
    np.testing.assert_array_equal(out, bf16_from_f32(x))
    np.testing.assert_array_equal(back.view(np.uint32), out.astype(np.uint32) << 16)


def _hyper(lr, t, b1=0.9, b2=0.999, eps=1e-7):
    vals = {"lr": lr, "beta1": b1, "beta2": b2, "eps": eps, "bc1": 1 - b1 ** t, "bc2": 1 - b2 ** t,
            "momentum": 0.0}
    return np.array([vals[h] for h in bw.HYPER], np.float32)        # as runtime/exec/native.py `_hyper`


@pytest.mark.parametrize("moments,tensor,wd", [("f32", "b", 0.0), ("bf16", "b", 0.0), ("f32", "W", 0.01),
                                               ("bf16", "W", 0.01)])
def test_native_adam_update_equals_the_interpreter_bit_for_bit(moments, tensor, wd):
    n = 1003                                                          # vector body and a remainder
    spec = bw.UpdateSpec("adam", moments_w=moments, moments_b=moments, weight_decay=wd)
    k = build(lambda km: bw.dense_update(km, "upd", spec, tensor=tensor))
    upd = k.fn("t", "upd")
    rng = np.random.default_rng(4)
    W0 = rng.standard_normal(n).astype(np.float32)
    mdt = np.uint16 if moments == "bf16" else np.float32
    native_W, native_m, native_v = W0.copy(), np.zeros(n, mdt), np.zeros(n, mdt)
    st = ModelState(params={"l": {tensor: W0.copy()}}, m={"l": {tensor: np.zeros(n, mdt)}},
                    v={"l": {tensor: np.zeros(n, mdt)}})
    opt = Adam(weight_decay=wd)
    for t in range(1, 8):
        # gradients over many magnitudes, with zeros and subnormals
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 3, size=n)).astype(np.float32)
        g[rng.random(n) < 0.05] = 0.0
        lr = 1e-3 * (1 + t)
        hyper = _hyper(lr, t)
        upd(0, n, native_W.ctypes.data, g.ctypes.data, native_m.ctypes.data, native_v.ctypes.data,
            hyper.ctypes.data)
        st.step = t
        opt.apply(st, {"l": {tensor: ParamGrad(None, None, g)}}, lr)
        np.testing.assert_array_equal(native_W.view(np.uint32), st.params["l"][tensor].view(np.uint32))
        np.testing.assert_array_equal(native_m.view(mdt), st.m["l"][tensor])
        np.testing.assert_array_equal(native_v.view(mdt), st.v["l"][tensor])
    assert not np.array_equal(native_W, W0)


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.01), (0.9, 0.01), (0.9, 0.0)])
def test_native_sgd_update_with_weight_decay_equals_the_interpreter_bit_for_bit(momentum, wd):
    from boltc.runtime.exec.optim import SGD
    n = 1003
    k = build(lambda km: bw.dense_update(km, "upd", bw.UpdateSpec("sgd", weight_decay=wd), tensor="W"))
    upd = k.fn("t", "upd")
    rng = np.random.default_rng(5)
    W0 = rng.standard_normal(n).astype(np.float32)
    native_W, native_m, unused_v = W0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    st = ModelState(params={"l": {"W": W0.copy()}}, m={"l": {"W": np.zeros(n, np.float32)}}, v={"l": {}})
    opt = SGD(momentum, weight_decay=wd)
    for t in range(1, 6):
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 2, size=n)).astype(np.float32)
        lr = 1e-2 * t
        hyper = _hyper(lr, t)
        hyper[bw.HYPER.index("momentum")] = momentum
        upd(0, n, native_W.ctypes.data, g.ctypes.data, native_m.ctypes.data, unused_v.ctypes.data,
            hyper.ctypes.data)
        opt.apply(st, {"l": {"W": ParamGrad(None, None, g)}}, lr)
        np.testing.assert_array_equal(native_W.view(np.uint32), st.params["l"]["W"].view(np.uint32))
    # the decay pulls the weights towards zero beyond the plain update
    if wd:
        plain = ModelState(params={"l": {"W": W0.copy()}}, m={"l": {"W": np.zeros(n, np.float32)}}, v={"l": {}})
        SGD(momentum).apply(plain, {"l": {"W": ParamGrad(None, None, np.zeros(n, np.float32))}}, 0.1)
        decayed = ModelState(params={"l": {"W": W0.copy()}}, m={"l": {"W": np.zeros(n, np.float32)}}, v={"l": {}})
        SGD(momentum, weight_decay=wd).apply(decayed, {"l": {"W": ParamGrad(None, None, np.zeros(n, np.float32))}}, 0.1)
        np.testing.assert_allclose(decayed.params["l"]["W"], W0 - np.float32(0.1 * wd) * W0, rtol=1e-6)
        np.testing.assert_array_equal(plain.params["l"]["W"], W0)
