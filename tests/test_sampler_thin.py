"""Thinning (draw=thin) and `sampler auto`: unbiased weights, the keep law, the auto switch, uniform equality."""
import numpy as np
import pytest

from boltc.runtime.data.dataset import Dataset
from boltc.runtime.sampler.adaptive import UniformSampler
from boltc.runtime.sampler.choose import make_sampler
from boltc.runtime.sampler.thin import AUTO_ON, weighted_rank_correlation


def _clusters(n=3000, d=40, seed=0, clusters=8):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)) * 3
    group = rng.integers(0, clusters, n)
    x = (centres[group] + rng.standard_normal((n, d))).astype(np.float32)
    return Dataset(inputs={"x": x}, labels=None), group


def _rows(sampler, epoch, loss_of):
    out = []
    for rows, w in sampler.batches(epoch):
        out.append((rows, w))
        sampler.observe(rows, loss_of(rows))
    return out


def test_thinned_epoch_gradient_is_unbiased_for_a_frozen_model_exactly():
    """With the sketch frozen, example i is kept with probability k_i and carries weight w_i; the
    expected epoch gradient sum_i k_i w_i g_i must equal the uniform epoch's sum_i g_i (exact), and
    the sampler's own coins must keep each row at frequency k_i."""
    rng = np.random.default_rng(3)
    n, d = 300, 5
    ds, group = _clusters(n=n, d=d)
    x = ds.inputs["x"].astype(np.float64)
    y = x @ rng.standard_normal(d) + rng.standard_normal(n)
    wt = rng.standard_normal(d) * 0.3                             # frozen linear model
    grads = (x @ wt - y)[:, None] * x
    s = make_sampler({"kind": "nw_sketch", "warmup": 0, "key": "input", "floor": 0.05, "keep": 1.0,
                                  "reweight": True}, ds, 25, seed=1)
    _rows(s, 0, lambda r: 0.5 * (x[r] @ wt - y[r]) ** 2)          # the sketch learns the losses
    s.observe = lambda rows, losses: None                         # frozen from here on
    s._age = lambda n_cand: None
    k = s.keep_probabilities(np.arange(n))
    assert k.min() < 0.5 and k.max() == 1.0                       # genuinely non-uniform
    weight_of = np.full(n, np.nan)
    kept = np.zeros(n)
    epochs = 3000
    for e in range(1, epochs + 1):
        for rows, w in s.batches(e):
            weight_of[rows] = w
            kept[rows] += 1
    seen = ~np.isnan(weight_of)
    assert seen.all()
    expected = (k[:, None] * weight_of[:, None] * grads).sum(axis=0)
    assert np.allclose(expected, grads.sum(axis=0), rtol=1e-6, atol=1e-9)
    freq = kept / epochs
    sigma = np.sqrt(k * (1 - k) / epochs)
    assert np.all(np.abs(freq - k) <= 5 * sigma + 1e-12), np.max(np.abs(freq - k) / (sigma + 1e-12))
    # and the keep rule: hard rows (high predicted loss) are kept more
    pred = s.predict_rows(np.arange(n))
    assert np.corrcoef(pred, k)[0, 1] > 0.5


def test_thinning_skips_easy_examples_and_the_lr_clock_walks_the_whole_epoch():
    ds, group = _clusters(n=2000)
    hard = group == 0
    s = make_sampler({"kind": "nw_sketch", "warmup": 1, "floor": 0.1}, ds, 50, seed=0)
    loss = lambda r: np.where(hard[r], 3.0, 0.03)
    first = _rows(s, 0, loss)
    assert sum(r.size for r, _ in first) == 2000                  # warm-up: every example once
    second = _rows(s, 1, loss)
    rows = np.concatenate([r for r, _ in second])
    assert np.unique(rows).size == rows.size                      # each example at most once an epoch
    share_hard = hard[rows].mean()
    assert share_hard > 3 * hard.mean()                           # hard examples kept, easy ones skipped
    assert rows.size < 0.5 * 2000
    assert s.epoch_position == 2000


def test_auto_switches_on_for_a_planted_signal():
    ds, group = _clusters(n=3000)
    hard = group == 0
    s = make_sampler({"kind": "auto", "key": "input", "min_rows": 0}, ds, 50, seed=0)
    assert not s.thinning
    _rows(s, 0, lambda r: np.where(hard[r], 3.0, 0.05) + 0.01 * np.random.default_rng(r[0]).random(r.size))
    assert s.thinning and s.switches and s.switches[0][1] is True
    assert s.switches[0][2] >= AUTO_ON
    rows = np.concatenate([r for r, _ in _rows(s, 1, lambda r: np.where(hard[r], 3.0, 0.05))])
    assert rows.size < 0.6 * 3000 and hard[rows].mean() > 2 * hard.mean()


def test_auto_on_pure_noise_stays_off_and_draws_exactly_like_uniform():
    ds, _ = _clusters(n=3000)
    noise = np.random.default_rng(7)
    s = make_sampler({"kind": "auto", "min_rows": 0}, ds, 64, seed=5)
    u = UniformSampler(3000, 64, seed=5)
    for epoch in range(3):
        got = _rows(s, epoch, lambda r: noise.exponential(size=r.size))
        want = list(u.batches(epoch))
        assert len(got) == len(want)
        for (ra, wa), (rb, _) in zip(got, want):
            assert np.array_equal(ra, rb)
            assert wa is None or np.all(wa == 1.0)
    assert not s.thinning and not s.switches
    assert s.last_correlation is not None and abs(s.last_correlation) < AUTO_ON / 3


def test_auto_below_min_rows_is_the_uniform_sampler_even_with_a_planted_signal():
    """A training set under min_rows (default 50,000) never thins: auto is the uniform sampler there, its
    draws uniform's, batch for batch, whatever the losses say."""
    ds, group = _clusters(n=3000)
    hard = group == 0
    for spec in ({"kind": "auto", "key": "input"}, {"kind": "auto", "key": "input", "min_rows": 3001}):
        s = make_sampler(spec, ds, 50, seed=0)
        assert isinstance(s, UniformSampler)
        u = UniformSampler(3000, 50, seed=0)
        for epoch in range(2):
            got = _rows(s, epoch, lambda r: np.where(hard[r], 3.0, 0.05))
            assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(got, u.batches(epoch)))
    assert not isinstance(make_sampler({"kind": "auto", "min_rows": 3000}, ds, 50), UniformSampler)


def test_auto_switches_off_when_the_signal_goes():
    ds, group = _clusters(n=3000)
    hard = group == 0
    s = make_sampler({"kind": "auto", "key": "input", "min_rows": 0}, ds, 50, seed=0)
    _rows(s, 0, lambda r: np.where(hard[r], 3.0, 0.05))
    assert s.thinning
    noise = np.random.default_rng(1)
    for epoch in (1, 2, 3):
        _rows(s, epoch, lambda r: noise.exponential(size=r.size))
    assert not s.thinning and [on for _, on, _ in s.switches][:2] == [True, False]


def test_weighted_rank_correlation_matches_spearman_and_corrects_selection():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    a = rng.standard_normal(2000)
    b = a + rng.standard_normal(2000)
    assert weighted_rank_correlation(a, b) == pytest.approx(spearmanr(a, b)[0], abs=1e-12)
    assert weighted_rank_correlation(a, np.ones(2000)) is None


def test_auto_and_thin_specs_are_checked():
    from boltc.errors import BoltValidationError
    ds, _ = _clusters(n=100)
    for bad in ({"kind": "auto", "draw": "alias"}, {"kind": "nw_sketch", "draw": "poisson"},
                {"kind": "nw_sketch", "floor": 0}, {"kind": "nw_sketch", "key": "hidden"},
                {"kind": "auto", "keep": -1}, {"kind": "auto", "min_rows": -5},
                {"kind": "nw_sketch", "min_rows": 10}):
        with pytest.raises(BoltValidationError):
            make_sampler(bad, ds, 10)


def test_auto_resumes_from_its_state_dict_exactly_after_switching_on():
    ds, group = _clusters(n=2000)
    hard = group == 0
    loss = lambda r: np.where(hard[r], 3.0, 0.05) + 0.01 * (r % 7)

    def run(s, epochs):
        return [rows for e in epochs for rows, _ in _rows(s, e, loss)]

    whole = make_sampler({"kind": "auto", "min_rows": 0}, ds, 40, seed=3)
    ref = run(whole, range(4))
    first = make_sampler({"kind": "auto", "min_rows": 0}, ds, 40, seed=3)
    done = run(first, [0, 1])
    assert first.thinning                                         # the state being resumed is "on"
    again = make_sampler({"kind": "auto", "min_rows": 0}, ds, 40, seed=3)
    again.load_state_dict({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in first.state_dict().items()})
    rest = run(again, [2, 3])
    assert len(done) + len(rest) == len(ref)
    for a, b in zip(done + rest, ref):
        assert np.array_equal(a, b)


def test_distributed_training_refuses_nw_sketch_and_runs_auto_uniformly(tmp_path, capsys):
    from pathlib import Path

    from boltc.cli import main
    from boltc.errors import BoltValidationError
    from boltc.runtime.sampler.adaptive import check_distributed
    with pytest.raises(BoltValidationError, match="not supported with distributed training"):
        check_distributed({"kind": "nw_sketch"})
    said = []
    check_distributed({"kind": "auto"}, said.append)
    assert said and "uniform" in said[0]
    check_distributed({"kind": "uniform"}, said.append)
    assert len(said) == 1
    tiny = (Path(__file__).parents[1] / "models" / "tiny.bolt").read_text()
    src = tmp_path / "d.bolt"
    src.write_text(tiny.replace("epochs    3", "epochs    1\n    sampler   nw_sketch"))
    out = tmp_path / "d.boltc"
    assert main(["train", str(src), "--workers", "2", "-o", str(out), "--no-progress"]) == 1
    assert "not supported with distributed training" in capsys.readouterr().err
    assert not out.exists()


def test_keep_auto_leaves_out_at_most_drop_of_the_loss():
    from boltc.runtime.sampler.thin import keep_scale_for
    rng = np.random.default_rng(4)
    for r in (rng.exponential(size=5000) ** 3, np.ones(5000), rng.gamma(0.1, size=5000)):
        r = r / r.mean()
        for drop in (0.05, 0.1, 0.3):
            c = keep_scale_for(r, 0.1, drop)
            left_out = lambda c: ((1 - np.clip(c * r, 0.1, 1)) * r).sum() / r.sum()
            assert left_out(c) <= drop + 1e-9
            assert left_out(c * 0.98) > drop or c * 0.98 < 1e-3      # the smallest such scale
    # even losses: nothing to gain, almost everything kept; concentrated ones: most skipped
    assert np.clip(keep_scale_for(np.ones(100), 0.1, 0.1) * np.ones(100), 0.1, 1).mean() >= 0.9
    heavy = rng.gamma(0.1, size=5000)
    heavy /= heavy.mean()
    assert np.clip(keep_scale_for(heavy, 0.1, 0.1) * heavy, 0.1, 1).mean() < 0.5


def test_nw_sketch_with_distributed_or_streamed_training_is_refused_at_its_line(tmp_path, capsys):
    """Both are known from the .bolt file alone: the error names the `sampler` setting's line and column."""
    from pathlib import Path

    from boltc.cli import main
    tiny = (Path(__file__).parents[1] / "models" / "tiny.bolt").read_text()
    lines = tiny.replace("epochs    3", "epochs    1\n    sampler   nw_sketch\n    distributed(workers=2)")
    line = lines.splitlines().index("    sampler   nw_sketch") + 1
    src = tmp_path / "dist.bolt"
    src.write_text(lines)
    assert main(["check", str(src)]) == 1
    err = capsys.readouterr().err
    assert f"dist.bolt:{line}:5: error: sampler nw_sketch cannot run with distributed(...) training" in err
    data = tmp_path / "t.txt"
    data.write_text("2 256 500\n1 3:1.0 7:0.5\n4 2:1.0\n")
    streamed = tiny.replace("epochs    3", "epochs    1\n    sampler   nw_sketch")
    start = streamed.index("  data {")
    streamed = streamed[:start] + f'  data {{\n    train file("{data}", stream=true)\n  }}\n}}\n'
    src = tmp_path / "stream.bolt"
    src.write_text(streamed)
    line = streamed.splitlines().index("    sampler   nw_sketch") + 1
    assert main(["check", str(src)]) == 1
    err = capsys.readouterr().err
    assert f"stream.bolt:{line}:5: error: sampler nw_sketch needs the training set in memory" in err


def test_plain_walk_learns_every_loss_it_defers():
    """auto while off learns the plain walk's losses 8 batches at a time: after an epoch every example's
    memory holds exactly the loss it was given, whatever the grouping (the oracle: the losses themselves)."""
    ds, _ = _clusters(n=1000)
    s = make_sampler({"kind": "auto", "min_rows": 0}, ds, 30, seed=2)
    given = np.full(1000, np.nan)
    noise = np.random.default_rng(3)
    for epoch in range(2):
        for rows, _ in s.batches(epoch):
            losses = noise.exponential(size=rows.size).astype(np.float32)
            given[rows] = losses
            s.observe(rows, losses)
        assert not s.thinning and not s._deferred                 # nothing left unlearnt at the epoch's end
        np.testing.assert_array_equal(s.sketch.loss, given)
