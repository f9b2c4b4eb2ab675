"""The Nadaraya-Watson sketch against hand-computed ratios, the exact estimator and the SRP formula."""
import numpy as np
import pytest
import scipy.sparse as sp

from boltc.runtime.sampler.nw_sketch import NWSketch, SRPHasher, exact_nw, srp_kernel


def test_injected_buckets_give_the_hand_computed_ratio():
    sk = NWSketch(rows=3, bits=2)
    # example a -> buckets (0, 1, 2); b -> (0, 3, 2); c -> (1, 1, 1)
    sk.update(np.array([[0, 1, 2], [0, 3, 2], [1, 1, 1]]), np.array([2.0, 4.0, 10.0]))
    # a's cells: row0 bucket0 = 2+4 (count 2), row1 bucket1 = 2+10 (count 2), row2 bucket2 = 2+4 (count 2)
    assert sk.query(np.array([[0, 1, 2]]))[0] == pytest.approx((6 + 12 + 6) / (2 + 2 + 2))
    # a query touching one filled cell and two empty ones: the empty cells add nothing
    assert sk.query(np.array([[1, 0, 0]]))[0] == pytest.approx(10.0 / 1.0)
    # all cells empty -> the prior, the mean of every loss seen
    assert sk.query(np.array([[3, 0, 0]]))[0] == pytest.approx(16.0 / 3.0)


def test_decay_scales_evidence_but_not_the_ratio_and_merge_adds():
    a, b = NWSketch(2, 3), NWSketch(2, 3)
    codes = np.array([[1, 5], [1, 6]])
    a.update(codes, np.array([1.0, 3.0]))
    before = a.query(codes)
    a.decay(0.25)
    assert np.allclose(a.query(codes), before)
    assert a.count[0, 1] == pytest.approx(0.5)
    b.update(codes[:1], np.array([9.0]))
    a.merge(b)
    # row0 bucket1: 0.25*(1+3) + 9 over 0.25*2 + 1; row1 bucket5: 0.25*1 + 9 over 0.25 + 1
    expect = (0.25 * 4 + 9 + 0.25 * 1 + 9) / (0.25 * 2 + 1 + 0.25 + 1)
    assert a.query(codes[:1])[0] == pytest.approx(expect)
    with pytest.raises(ValueError):
        a.merge(NWSketch(3, 3))


def test_merged_worker_sketches_equal_one_sketch_of_all_updates():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(200, 4))
    losses = rng.random(200)
    whole, w1, w2 = NWSketch(4, 4), NWSketch(4, 4), NWSketch(4, 4)
    whole.update(codes, losses)
    w1.update(codes[:120], losses[:120])
    w2.update(codes[120:], losses[120:])
    w1.merge(w2)
    assert np.allclose(w1.loss, whole.loss) and np.allclose(w1.count, whole.count)


def test_empirical_collision_rate_matches_the_formula():
    rng = np.random.default_rng(1)
    d, reps = 12, 4000
    base = rng.standard_normal(d)
    other = rng.standard_normal(d)
    other -= other @ base / (base @ base) * base          # orthogonal direction
    angles = np.array([0.2, 0.7, 1.2, 1.9, 2.6])
    pts = np.stack([np.cos(t) * base / np.linalg.norm(base) + np.sin(t) * other / np.linalg.norm(other)
                    for t in angles])
    for bits in (1, 3):
        h = SRPHasher(d, rows=reps, bits=bits, seed=7)
        q = h.hash(base[None, :])
        x = h.hash(pts)
        rate = (x == q).mean(axis=1)
        expect = (1 - angles / np.pi) ** bits
        sigma = np.sqrt(expect * (1 - expect) / reps) + 1e-3
        assert np.all(np.abs(rate - expect) < 4 * sigma), (bits, rate, expect)
        assert np.allclose(srp_kernel(base[None, :], pts, bits)[0], expect)


def _smooth_problem(n=4000, d=8, a=0.5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    y = np.exp(a * (x @ w) / np.linalg.norm(x, axis=1))     # losses vary smoothly with direction
    return x, y


def test_sketch_tracks_the_exact_nadaraya_watson_estimator():
    x, y = _smooth_problem()
    bits = 3
    q = x[:1000]
    exact = exact_nw(q, x, y, bits)
    baseline = np.mean(np.abs(exact.mean() - exact) / exact)   # a predictor that ignores the input
    errors = {}
    for rows in (10, 30, 100):
        h = SRPHasher(x.shape[1], rows, bits, seed=3)
        sk = NWSketch(rows, bits)
        sk.update(h.hash(x), y)
        errors[rows] = np.mean(np.abs(sk.query(h.hash(q)) - exact) / exact)
    assert errors[10] <= 0.03, errors
    assert errors[100] <= 0.01, errors
    assert errors[10] > errors[30] > errors[100], errors
    assert errors[100] < baseline / 3, (errors, baseline)


def test_sparse_and_dense_inputs_hash_alike_and_wide_inputs_fold():
    rng = np.random.default_rng(2)
    dense = rng.standard_normal((50, 40)).astype(np.float32) * (rng.random((50, 40)) < 0.2)
    h = SRPHasher(40, 6, 5, seed=1)
    assert np.array_equal(h.hash(dense), h.hash(sp.csr_matrix(dense)))
    wide = SRPHasher(1000, 6, 5, seed=1, max_proj_rows=64)
    assert wide.proj.shape == (64, 30)
    xs = sp.random(30, 1000, density=0.02, random_state=3, format="csr", dtype=np.float32)
    assert np.array_equal(wide.hash(xs), wide.hash(xs.toarray()))
    codes = wide.hash(xs)
    assert codes.min() >= 0 and codes.max() < 32
