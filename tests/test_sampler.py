"""The samplers: distribution, alias draws, reweighting, adaptivity, checkpoints, spec defaults."""
import json

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import chisquare

from boltc.errors import BoltValidationError, Location
from boltc.runtime.sampler import native
from boltc.runtime.data.dataset import Dataset, as_csr
from boltc.runtime.sampler.adaptive import (NWSketchSampler, UniformSampler, resolve_spec, sampling_probabilities,
                                           spearman)
from boltc.runtime.sampler.choose import make_sampler


def _dataset(n=3000, d=50, seed=0, clusters=8):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)) * 3
    group = rng.integers(0, clusters, n)
    x = (centres[group] + rng.standard_normal((n, d))).astype(np.float32)
    return Dataset(inputs={"x": x}, labels=None), group


def test_probabilities_sum_to_one_and_respect_the_floor():
    rng = np.random.default_rng(0)
    pred = rng.gamma(0.2, size=1000)
    pred[:10] = 0.0                          # examples predicted to be solved still get drawn
    for mix, temp in [(0.2, 1.0), (0.05, 0.5), (0.5, 2.0), (1.0, 1.0)]:
        p = sampling_probabilities(pred, mix, temp)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert p.min() >= mix / 1000 * (1 - 1e-9)
    p = sampling_probabilities(pred, 0.2, 1.0)
    order = np.argsort(pred)
    assert np.all(np.diff(p[order]) >= -1e-15)      # monotone in the predicted loss
    assert p[np.argmax(pred)] == pytest.approx(0.8 * pred.max() / pred.sum() + 0.2 / 1000)


@pytest.mark.parametrize("n", [1, 2, 7, 500, 20000])
def test_alias_tables_encode_the_distribution_exactly(n):
    rng = np.random.default_rng(n)
    p = rng.gamma(0.3, size=n) + 1e-6
    p /= p.sum()
    prob, alias = native.build_alias_numpy(p)
    assert np.allclose(native.alias_distribution(prob, alias), p, atol=1e-14, rtol=1e-9)
    assert np.all((prob >= 0) & (prob <= 1 + 1e-12))
    if n <= 500:
        rp, ra = native.build_alias_reference(p)
        assert np.allclose(native.alias_distribution(rp, ra), p, atol=1e-14, rtol=1e-9)


def test_a_million_alias_draws_pass_a_chi_square_test():
    rng = np.random.default_rng(5)
    p = sampling_probabilities(rng.gamma(0.5, size=60), 0.2, 1.0)
    prob, alias = native.build_alias_numpy(p)
    draws = native.draw_alias(prob, alias, np.random.default_rng(11), 1_000_000)
    counts = np.bincount(draws, minlength=60)
    stat, pvalue = chisquare(counts, 1_000_000 * p)
    assert pvalue > 1e-3, (stat, pvalue)
    # a wrong distribution (uniform) is rejected by the same test, so the test has power
    assert chisquare(counts, np.full(60, 1_000_000 / 60))[1] < 1e-6


def test_uniform_sampler_draws_every_row_once_per_epoch_reproducibly():
    s = UniformSampler(103, 10, seed=4)
    rows = np.concatenate([r for r, w in s.batches(0)])
    assert np.array_equal(np.sort(rows), np.arange(103))
    again = np.concatenate([r for r, _ in UniformSampler(103, 10, seed=4).batches(0)])
    assert np.array_equal(rows, again)
    other = np.concatenate([r for r, _ in s.batches(1)])
    assert not np.array_equal(rows, other)


def test_an_epoch_is_n_draws_in_batches_and_warmup_epochs_are_uniform():
    ds, group = _dataset(n=1001)
    s = make_sampler({"kind": "nw_sketch", "draw": "alias", "refresh": 3, "warmup": 2}, ds, 64, seed=0)
    for epoch in range(3):
        rows = [r for r, w in s.batches(epoch) if s.observe(r, 1.0 + (group[r] == 0)) is None]
        sizes = [r.size for r in rows]
        assert sum(sizes) == 1001 and max(sizes) == 64
        if epoch < 2:                                # warm-up: a permutation, every example once
            assert np.array_equal(np.sort(np.concatenate(rows)), np.arange(1001))
    assert s.refreshes >= 1 and s.p.max() > 1.5 / 1001
    assert all(w is None for _, w in s.batches(3))


def test_hard_subpopulation_is_drawn_more_often():
    ds, group = _dataset()
    hard = group == 0                               # a region of input space with high loss
    s = make_sampler({"kind": "nw_sketch", "draw": "alias", "refresh": 5, "mix": 0.2, "temperature": 1.0, "warmup": 0}, ds, 50,
                     seed=1)
    share = []
    for epoch in range(3):
        drawn = np.concatenate([_observe(s, rows, hard) for rows, _ in s.batches(epoch)])
        share.append(hard[drawn].mean())
    base = hard.mean()
    # losses: hard 3.0, easy 0.3 -> ideal share with mix 0.2 is 0.8*3h/(3h+0.3(1-h)) + 0.2h
    h = base
    ideal = 0.8 * 3 * h / (3 * h + 0.3 * (1 - h)) + 0.2 * h
    assert share[0] > 1.5 * base            # adapts within the first epoch
    assert share[2] == pytest.approx(ideal, rel=0.1), (share, ideal)
    st = s.stats()
    assert st["observed_rank_correlation"] > 0.5
    assert st["p_min_times_n"] >= 0.2 - 1e-9


def _observe(sampler, rows, hard):
    sampler.observe(rows, np.where(hard[rows], 3.0, 0.3))
    return rows


def test_reweighted_draws_give_the_full_gradient_of_a_frozen_linear_model():
    rng = np.random.default_rng(3)
    n, d = 400, 6
    x = rng.standard_normal((n, d))
    y = x @ rng.standard_normal(d) + rng.standard_normal(n)
    w = rng.standard_normal(d)                                  # frozen model
    grads = (x @ w - y)[:, None] * x                            # per-example squared-loss gradients
    full = grads.mean(axis=0)
    ds = Dataset(inputs={"x": x.astype(np.float32)}, labels=None)
    s = make_sampler({"kind": "nw_sketch", "draw": "alias", "reweight": True, "refresh": 1, "mix": 0.1, "warmup": 0}, ds, 40,
                     seed=2)
    for rows, _ in s.batches(0):                                # learn a non-uniform distribution
        s.observe(rows, 0.5 * (x[rows] @ w - y[rows]) ** 2)
    p = s.probabilities()
    assert p.max() / p.min() > 3                                # the test is not trivially uniform
    # exact expectation of the weighted gradient under p
    expected = (p[:, None] * (1.0 / (n * p))[:, None] * grads).sum(axis=0)
    assert np.allclose(expected, full, atol=1e-12)
    # Monte Carlo: the sampler's own draws and weights, with the distribution frozen (no refresh)
    s.refresh_every = 10 ** 9
    total, count = np.zeros(d), 0
    for epoch in range(1, 301):
        for rows, weights in s.batches(epoch):
            assert np.allclose(weights, 1.0 / (n * p[rows]), rtol=1e-6)
            total += (weights[:, None] * grads[rows]).sum(axis=0)
            count += rows.size
    mean = total / count
    per_draw = (1.0 / (n * p))[:, None] * grads
    se = np.sqrt((p[:, None] * (per_draw - full) ** 2).sum(axis=0) / count)
    assert np.all(np.abs(mean - full) < 5 * se), (mean, full, se)


def test_state_dict_resumes_exactly_and_is_plain_data():
    ds, group = _dataset(n=800)
    hard = group == 0

    def run(sampler, epochs):
        out = []
        for e in epochs:
            for rows, _ in sampler.batches(e):
                sampler.observe(rows, np.where(hard[rows], 2.0, 0.5))
                out.append(rows)
        return np.concatenate(out)

    spec = {"kind": "nw_sketch", "draw": "alias", "refresh": 4}
    a = make_sampler(spec, ds, 32, seed=9)
    run(a, [0, 1])
    state = a.state_dict()
    tail_a = run(a, [2, 3])
    b = make_sampler(spec, ds, 32, seed=9)
    b.load_state_dict(state)
    assert np.array_equal(run(b, [2, 3]), tail_a)
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    assert json.loads(json.dumps(scalars)) == scalars
    assert all(isinstance(v, np.ndarray) for k, v in state.items() if k not in scalars)
    with pytest.raises(ValueError):
        make_sampler({"kind": "nw_sketch", "draw": "alias", "rows": 4}, ds, 32).load_state_dict(state)


def test_rank_correlation_of_predictions_with_true_losses():
    ds, group = _dataset(n=1500)
    true = 0.2 + group.astype(float)                  # loss rises with the cluster id
    s = make_sampler({"kind": "nw_sketch", "draw": "alias", "refresh": 2}, ds, 50, seed=0)
    for rows, _ in s.batches(0):
        s.observe(rows, true[rows])
    subset = np.random.default_rng(0).choice(1500, 300, replace=False)
    rho = s.rank_correlation(true[subset], subset)
    assert rho > 0.9
    assert s.stats()["rank_correlation"] == rho
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    from scipy.stats import rankdata as scipy_rankdata, spearmanr
    from boltc.runtime.sampler.adaptive import rankdata
    ties = np.array([3.0, 1.0, 3.0, 2.0, 1.0, 3.0, 0.5])
    assert np.array_equal(rankdata(ties), scipy_rankdata(ties))
    a, b = np.random.default_rng(1).random((2, 50))
    assert spearman(a, np.round(b, 1)) == pytest.approx(spearmanr(a, np.round(b, 1))[0])
    assert UniformSampler(10, 2).rank_correlation(true[:3], np.arange(3)) is None


def test_non_finite_losses_are_ignored():
    ds, _ = _dataset(n=200)
    for spec in ({"kind": "nw_sketch", "draw": "alias"}, {"kind": "nw_sketch", "key": "input"}):
        s = make_sampler(spec, ds, 20)
        s.observe(np.array([0, 1, 2]), np.array([np.nan, np.inf, 1.5]))
        assert s.sketch.total_count == 1 and np.isfinite(s.sketch.loss).all()
    s = make_sampler({"kind": "nw_sketch"}, ds, 20)            # key=example: own last loss per row
    s.observe(np.array([0, 1, 2]), np.array([np.nan, np.inf, 1.5]))
    assert s.sketch.total_count == 1 and np.array_equal(s.predict(np.array([0, 1, 2])), [1.5, 1.5, 1.5])


def test_resolve_spec_fills_defaults_with_reasons_and_rejects_bad_input():
    r = resolve_spec({"kind": "nw_sketch", "rows": 32}, n_rows=100_000, batch=256)
    assert r["rows"] == 32 and r["reasons"]["rows"] == "set in the model file"
    assert r["bits"] == 16 and "auto" in r["reasons"]["bits"]
    assert r["refresh"] == 39                       # 391 steps per epoch / 10
    assert set(r["reasons"]) >= {"rows", "bits", "mix", "refresh", "decay", "reweight", "temperature"}
    assert resolve_spec({"kind": "nw_sketch", "refresh": 0.25}, n_rows=1000, batch=10)["refresh"] == 25
    assert resolve_spec(None)["kind"] == "uniform"
    assert resolve_spec({"kind": "nw_sketch"})["bits"] == "auto"
    loc = Location("m.bolt", 12, 9)
    for bad in ({"kind": "nw_sketch", "mix": 0}, {"kind": "nw_sketch", "rows": 2.5},
                {"kind": "nw_sketch", "bogus": 1}, {"kind": "importance"},
                {"kind": "nw_sketch", "reweight": "yes"}, {"kind": "uniform", "rows": 3}):
        with pytest.raises(BoltValidationError) as e:
            resolve_spec(bad, location=loc)
        assert e.value.location == loc


def test_sparse_multi_input_datasets_are_hashed():
    rng = np.random.default_rng(0)
    a = as_csr(sp.random(300, 5000, density=0.01, random_state=1, format="csr"))
    ds = Dataset(inputs={"a": a, "b": rng.standard_normal((300, 3)).astype(np.float32)}, labels=None)
    s = make_sampler({"kind": "nw_sketch", "draw": "alias", "rows": 4, "bits": 6}, ds, 30)
    assert s.codes.shape == (300, 4) and s.codes.max() < 64
    assert isinstance(make_sampler(None, ds, 30), UniformSampler)
    assert isinstance(s, NWSketchSampler)


def test_multilabel_losses_are_learnt_above_their_floor():
    # cross entropy against a normalised multi-hot target of c labels is at least log(c)
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    labels = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=np.float32))
    ds = Dataset(inputs={"x": x}, labels=labels)
    s = make_sampler({"kind": "nw_sketch", "draw": "alias", "rows": 2, "bits": 3}, ds, 2)
    rows = np.arange(4)
    s.observe(rows, np.array([0.5, np.log(2) + 0.25, np.log(3) - 0.1, 1.0]))
    assert s.sketch.total_loss == pytest.approx(0.5 + 0.25 + 0.0 + 1.0)
    off = make_sampler({"kind": "nw_sketch", "draw": "alias", "rows": 2, "bits": 3, "excess": False}, ds, 2)
    off.observe(rows, np.array([0.5, 1.0, 1.0, 1.0]))
    assert off.sketch.total_loss == pytest.approx(3.5)
