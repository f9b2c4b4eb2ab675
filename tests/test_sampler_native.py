"""The sampler's native kernels against the NumPy implementation (the oracle)."""
import numpy as np
import pytest

from boltc.runtime.sampler import native as sn
from boltc.runtime.data.dataset import Dataset
from boltc.runtime.sampler.nw_sketch import NWSketch
from boltc.runtime.sampler.choose import make_sampler

pytestmark = pytest.mark.skipif(not sn.available(), reason="native kernels unavailable (no llvmlite codegen)")


@pytest.mark.parametrize("rows,bits", [(1, 1), (5, 3), (16, 10)])
def test_native_update_and_query_match_numpy(rows, bits):
    rng = np.random.default_rng(rows * 100 + bits)
    n = 3000
    codes = rng.integers(0, 1 << bits, (n, rows)).astype(np.int32)
    a, b = NWSketch(rows, bits), NWSketch(rows, bits)
    for _ in range(3):
        batch = rng.integers(0, n, 257)              # repeated rows in a batch must all count
        losses = rng.gamma(1.0, size=257)
        sn.update(a, codes, batch, losses, True)
        sn.update(b, codes, batch, losses, False)
        a.decay(0.7)
        b.decay(0.7)
    assert np.allclose(a.loss, b.loss, rtol=1e-12, atol=1e-12)
    assert np.allclose(a.count, b.count, rtol=1e-12, atol=1e-12)   # same sums, other order
    assert a.total_count == pytest.approx(b.total_count)
    empty = np.zeros((4, rows), dtype=np.int32)
    empty[:] = np.argmin(b.count, axis=1)           # (likely) empty cells -> prior on both paths
    for q in (codes, empty):
        assert np.allclose(sn.query(a, q, True), sn.query(b, q, False), rtol=1e-12)


@pytest.mark.parametrize("n", [1, 3, 1000, 50000])
def test_native_alias_table_encodes_the_distribution(n):
    rng = np.random.default_rng(n)
    p = rng.gamma(0.3, size=n) + 1e-9
    p[: n // 10] = 0.0 if n > 10 else p[: n // 10]   # zero-probability columns are never drawn
    p /= p.sum()
    prob, alias = sn.build_alias(p, True)
    assert np.allclose(sn.alias_distribution(prob, alias), p, atol=1e-15, rtol=1e-9)
    assert alias.min() >= 0 and alias.max() < n


def test_sampler_native_and_numpy_paths_agree():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 20)).astype(np.float32)
    ds = Dataset(inputs={"x": x}, labels=None)
    spec = {"kind": "nw_sketch", "draw": "alias", "refresh": 2}
    fast = make_sampler(spec, ds, 30, seed=1)
    assert fast.native
    slow = type(fast)({**fast.spec}, ds, 30, seed=1, use_native=False)
    losses = 1.0 + (x[:, 0] > 0)
    for epoch in range(2):
        for (rows, _), _ in zip(fast.batches(epoch), range(5)):
            fast.observe(rows, losses[rows])
            slow.observe(rows, losses[rows])
    slow.sketch.loss[...] = fast.sketch.loss   # same evidence -> same predictions and probabilities
    slow.sketch.count[...] = fast.sketch.count
    slow.sketch.total_loss, slow.sketch.total_count = fast.sketch.total_loss, fast.sketch.total_count
    fast.refresh()
    slow.refresh()
    assert np.allclose(fast.pred, slow.pred, rtol=1e-12)
    assert np.allclose(fast.p, slow.p, rtol=1e-12)


@pytest.mark.parametrize("cap", [1 << 15, 64])
def test_native_srp_hash_matches_numpy(cap):
    import scipy.sparse as sp
    from boltc.runtime.sampler.nw_sketch import SRPHasher
    x = sp.random(2000, 700, density=0.02, format="csr", dtype=np.float32, random_state=4)
    x.data -= 0.5                                     # signed values
    h = SRPHasher(700, 12, 7, seed=3, max_proj_rows=cap)
    native_codes = sn.hash_rows(h, x, True)
    numpy_codes = h.hash(x)
    # summation order differs, so a projection within rounding of 0 may flip; away from 0 they agree
    z = h.project(x).reshape(2000, 12, 7)
    clear = (np.abs(z) > 1e-4).all(axis=2)
    assert np.array_equal(native_codes[clear], numpy_codes[clear])
    assert clear.mean() > 0.95 and (native_codes == numpy_codes).mean() > 0.999


def test_a_million_draws_from_the_native_alias_table_pass_a_chi_square_test():
    from scipy.stats import chisquare
    from boltc.runtime.sampler.adaptive import sampling_probabilities
    p = sampling_probabilities(np.random.default_rng(8).gamma(0.5, size=80), 0.1, 0.5)
    prob, alias = sn.build_alias(p, True)
    counts = np.bincount(sn.draw_alias(prob, alias, np.random.default_rng(12), 1_000_000), minlength=80)
    assert chisquare(counts, 1_000_000 * p)[1] > 1e-3
    assert p.min() >= 0.1 / 80 * (1 - 1e-12) and p.sum() == pytest.approx(1.0, abs=1e-12)
