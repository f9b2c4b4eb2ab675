"""LSHIndex: active-set invariants, tables, insertion, persistence, and retrieval against brute force."""
import collections
import copy

import numpy as np
import pytest
import scipy.sparse as sp

from boltc.runtime.lsh.index import LSHIndex, _CHUNK


def _labels(rows, dim):
    r = [i for i, ls in enumerate(rows) for _ in ls]
    c = [l for ls in rows for l in ls]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), dim))


def _index(family="dwta", in_dim=32, dim=300, tables=6, reservoir=8, seed=0):
    bits = 6 if family == "dwta" else 6
    idx = LSHIndex(family, in_dim, dim, 2 if family == "dwta" else bits, bits, tables, reservoir, seed=seed)
    W = np.random.default_rng(seed).standard_normal((dim, in_dim)).astype(np.float32)
    idx.build(W)
    return idx, W


@pytest.mark.parametrize("family", ["dwta", "srp"])
@pytest.mark.parametrize("wide", [False, True])
def test_active_set_invariants(family, wide, monkeypatch):
    """Labels first (in order), exact size, no duplicates, ids in range; then bucket contents."""
    if wide:                       # force the sort-based path used by wide layers
        monkeypatch.setattr("boltc.runtime.lsh.index._CHUNK", 1)
    idx, W = _index(family)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 32)).astype(np.float32)
    lab = [list(rng.choice(300, rng.integers(0, 5), replace=False)) for _ in range(20)]
    labels = _labels(lab, 300)
    for k in (1, 7, 40, 299, 300):
        a = idx.select(x, labels, k, np.random.default_rng(2))
        assert a.shape == (20, k) and a.dtype == np.int32
        assert ((a >= 0) & (a < 300)).all()
        assert all(len(set(r)) == k for r in a)
        for r, ls in zip(a, lab):
            ls = sorted(ls)
            assert list(r[:min(k, len(ls))]) == ls[:k]          # labels first, cut to k when too many
    # with labels, the example's bucket contents follow in table order
    a = idx.select(x, labels, 40, np.random.default_rng(2))
    b = idx.hash(x)
    for i in range(20):
        cand = [c for c in idx.tables[np.arange(idx.L), b[i]].ravel() if c >= 0 and c not in lab[i]]
        first = list(dict.fromkeys(cand))[:40 - len(lab[i])]
        assert list(a[i, len(lab[i]):len(lab[i]) + len(first)]) == first
    # at inference (no labels) distinct candidates come most-collisions first, ties in table order
    a = idx.select(x, None, 40, np.random.default_rng(2))
    for i in range(20):
        cand = [int(c) for c in idx.tables[np.arange(idx.L), b[i]].ravel() if c >= 0]
        pos = {c: cand.index(c) for c in set(cand)}
        ranked = sorted(pos, key=lambda c: (-cand.count(c), pos[c]))[:40]
        assert list(a[i, :len(ranked)]) == ranked


def test_dense_and_sorted_paths_agree_on_the_deterministic_part(monkeypatch):
    idx, W = _index()
    x = np.random.default_rng(3).standard_normal((10, 32)).astype(np.float32)
    labels = _labels([[1, 2]] * 10, 300)
    a = idx.select(x, labels, 50, np.random.default_rng(0))
    monkeypatch.setattr("boltc.runtime.lsh.index._CHUNK", 1)
    b = idx.select(x, labels, 50, np.random.default_rng(0))
    b_hash = idx.hash(x)
    for i in range(10):
        n_det = len(set([1, 2]) | set(c for c in idx.tables[np.arange(idx.L), b_hash[i]].ravel() if c >= 0))
        n_det = min(n_det, 50)
        assert list(a[i, :n_det]) == list(b[i, :n_det])


def test_random_fill_is_uniform():
    idx, W = _index(tables=1, reservoir=1)
    x = np.zeros((4000, 32), np.float32)                     # all examples hash alike
    a = idx.select(x, None, 3, np.random.default_rng(0))
    fixed = idx.tables[0, idx.hash(x[:1])[0, 0], 0]          # the one bucket entry: always position 0
    assert (a[:, 0] == fixed).all()
    counts = np.delete(np.bincount(a[:, 1:].ravel(), minlength=300), fixed)
    expected = a[:, 1:].size / 299
    assert counts.sum() == a[:, 1:].size
    assert counts.max() < expected * 2 and counts.min() > expected * 0.3
    # chi-square against uniform: 298 degrees of freedom, far below the 1e-6 tail (about 420)
    assert ((counts - expected) ** 2 / expected).sum() < 420


def test_build_places_every_neuron_in_its_bucket():
    idx, W = _index(reservoir=300)                           # big enough that nothing overflows
    b = idx.hash(W)
    for t in range(idx.L):
        for n in range(0, 300, 37):
            assert n in idx.tables[t, b[n, t]]
    assert idx.counts.sum() == 300 * idx.L
    assert ((idx.tables >= 0).sum(axis=2) == idx.counts).all()


def test_reservoir_overflow_keeps_exactly_reservoir():
    idx = LSHIndex("dwta", 8, 500, 1, 3, 2, 4, seed=0)
    idx.build(np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32))
    full = idx.counts >= 4
    assert ((idx.tables >= 0).sum(axis=2)[full] == 4).all()
    for t in range(2):
        for bkt in range(8):
            got = idx.tables[t, bkt][idx.tables[t, bkt] >= 0]
            assert len(set(got)) == len(got)


def test_hash_dense_equals_csr_and_dwta_is_argmax():
    idx, W = _index()
    x = sp.random(15, 32, density=0.3, format="csr", random_state=np.random.RandomState(0), dtype=np.float32)
    np.testing.assert_array_equal(idx.hash(x), idx.hash(x.toarray()))
    # a non-empty bin's code is the argmax over its dims
    v = W[:, idx.idx.ravel()].reshape(300, idx.n_hashes, 8)
    codes = v.argmax(axis=2).reshape(300, idx.L, idx.hashes)
    expect = (codes << (3 * np.arange(idx.hashes))).sum(axis=2)
    np.testing.assert_array_equal(idx.hash(W), expect)


def test_missed_labels_are_inserted_into_probed_buckets():
    idx, W = _index(reservoir=2)
    x = np.random.default_rng(4).standard_normal((3, 32)).astype(np.float32)
    labels = _labels([[17], [42, 43], []], 300)
    idx.select(x, labels, 20, np.random.default_rng(0), insert_missed=True)
    b = idx.hash(x)
    for i, ls in enumerate([[17], [42, 43], []]):
        for l in ls:
            for t in range(idx.L):
                bucket = idx.tables[t, b[i, t]]
                # inserted, unless the bucket was already full and the reservoir draw kept the old ones
                assert l in bucket or idx.counts[t, b[i, t]] > 2
    # on a fresh index with room, every probed bucket gains the label
    idx2, _ = _index(reservoir=64)
    idx2.select(x, labels, 20, np.random.default_rng(0), insert_missed=True)
    for t in range(idx2.L):
        assert 17 in idx2.tables[t, b[0, t]]


def test_persistence_round_trip():
    idx, W = _index("srp")
    idx.frozen = True
    again = LSHIndex.from_state(idx.state_dict())
    x = np.random.default_rng(5).standard_normal((8, 32)).astype(np.float32)
    np.testing.assert_array_equal(again.select(x, None, 30, np.random.default_rng(0)),
                                  idx.select(x, None, 30, np.random.default_rng(0)))
    assert again.frozen


def _angle(a, b):
    return np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))


def test_srp_collision_rate_matches_formula():
    """One SRP table of K bits: P(same bucket) = (1 - theta/pi)^K (hyperplanes on all dims; +-1 entries,
    close to the Gaussian formula in 128 dims)."""
    rng = np.random.default_rng(0)
    d, K, L = 128, 4, 1000
    q = rng.standard_normal(d)
    neurons = np.stack([q * c + rng.standard_normal(d) for c in (0.0, 0.5, 1.0, 2.0, 4.0)]).astype(np.float32)
    idx = LSHIndex("srp", d, 5, K, K, L, 8, seed=1)
    hq, hn = idx.hash(q[None].astype(np.float32)), idx.hash(neurons)
    rate = (hn == hq).mean(axis=1)
    theory = np.array([(1 - _angle(q, n) / np.pi) ** K for n in neurons])
    np.testing.assert_allclose(rate, theory, atol=0.05)


@pytest.mark.parametrize("family", ["dwta", "srp"])
def test_retrieval_of_top_inner_products_rises_with_tables(family):
    """The fraction of an example's true top-5 neurons (by inner product) found in its buckets rises with
    L as 1 - (1 - p)^L predicts, where p is the single-table collision rate measured on the same data."""
    rng = np.random.default_rng(0)
    d, dim = 32, 2000
    W = rng.standard_normal((dim, d)).astype(np.float32)
    x = rng.standard_normal((60, d)).astype(np.float32)
    top = np.argsort(-(x @ W.T), axis=1)[:, :5]
    K = 2 if family == "dwta" else 6
    bits = 6
    recalls = []
    idx = LSHIndex(family, d, dim, K, bits, 64, dim, seed=3)
    idx.build(W)
    bx, bw = idx.hash(x), idx.hash(W)
    hit = (bw[top] == bx[:, None, :])                       # (60, 5, L): same bucket in table t
    p = hit.mean()
    for L in (1, 4, 16, 64):
        found = hit[:, :, :L].any(axis=2).mean()
        recalls.append(found)
        # collisions in different tables are independent given the pair: average the formula over pairs
        per_pair = hit.mean(axis=2)
        assert abs(found - (1 - (1 - per_pair) ** L).mean()) < 0.12
    assert recalls == sorted(recalls) and recalls[-1] > recalls[0] + 0.3
    # top neurons collide more often than random ones
    rand = rng.integers(0, dim, (60, 5))
    assert p > (bw[rand] == bx[:, None, :]).mean() * 1.5
    # the active set (cut at 400 ids, reached after the first ~13 tables' buckets) holds them at least
    # at the 4-table rate
    a = idx.select(x, None, 400, np.random.default_rng(0))
    assert np.mean([np.isin(top[i], a[i]).mean() for i in range(60)]) >= recalls[1] - 0.05


@pytest.mark.parametrize("wide", [False, True])
def test_reserve_keeps_room_for_random_negatives(wide, monkeypatch):
    if wide:
        monkeypatch.setattr("boltc.runtime.lsh.index._CHUNK", 1)
    idx, W = _index(tables=12, reservoir=16)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((30, 32)).astype(np.float32)
    lab = [sorted(rng.choice(300, rng.integers(0, 4), replace=False)) for _ in range(30)]
    a = idx.select(x, _labels(lab, 300), 40, np.random.default_rng(0), reserve=15)
    b = idx.hash(x)
    for i in range(30):
        assert list(a[i, :len(lab[i])]) == lab[i] and len(set(a[i])) == 40
        cand = [c for c in idx.tables[np.arange(idx.L), b[i]].ravel() if c >= 0 and c not in lab[i]]
        distinct = list(dict.fromkeys(cand))
        allowed = 40 - 15 - len(lab[i])
        assert len(distinct) > allowed                      # the cut binds in this setting
        assert list(a[i, len(lab[i]):len(lab[i]) + allowed]) == distinct[:allowed]


def test_random_initial_tables_are_valid_and_seeded():
    a = LSHIndex("dwta", 32, 300, 2, 6, 6, 8, seed=4)
    b = LSHIndex("dwta", 32, 300, 2, 6, 6, 8, seed=4)
    a.build_random(); b.build_random()
    np.testing.assert_array_equal(a.tables, b.tables)
    assert a.counts.sum() == 300 * 6
    assert ((a.tables >= 0).sum(axis=2) == np.minimum(a.counts, 8)).all()
    for t in range(6):                                       # each neuron at most once per table
        ids = a.tables[t][a.tables[t] >= 0]
        assert len(ids) == len(set(ids))


def test_training_fill_is_cumulative_count_plus_one_unless_uniform():
    from boltc.runtime.lsh.index import training_fill
    layer = {"hash": {"family": "dwta"}}
    counts = np.array([3, 0, 1], np.float32)
    np.testing.assert_array_equal(training_fill(layer, counts).cum, [4, 5, 7])
    assert training_fill({"hash": {"negatives": "uniform"}}, counts) is None
    assert training_fill(layer, None) is None                      # no label counts: uniform


def _fill_only(dim, counts, B, k, seed):
    """Active sets of B label-less rows from empty tables: everything is the weighted fill."""
    from boltc.runtime.lsh.index import training_fill
    idx, _ = _index(dim=dim)
    idx.tables.fill(-1)
    x = np.random.default_rng(seed).standard_normal((B, 32)).astype(np.float32)
    fill = training_fill({"hash": {}}, counts)
    return idx.select(x, _labels([[]] * B, dim), k, np.random.default_rng(seed), fill=fill)


def test_frequency_fill_draws_in_proportion_to_count_plus_one():
    from scipy.stats import chisquare
    dim = 50
    counts = np.arange(dim, dtype=np.float32)                   # weights 1..50
    a = _fill_only(dim, counts, 20000, 1, seed=3)                # one slot: exactly the first draw
    seen = np.bincount(a[:, 0], minlength=dim)
    w = counts + 1
    assert chisquare(seen, w / w.sum() * seen.sum()).pvalue > 1e-3
    assert chisquare(seen).pvalue < 1e-9                         # and clearly not uniform


def test_frequency_fill_stays_distinct_and_exact_with_dominant_weights():
    dim = 50
    counts = np.zeros(dim, np.float32)
    counts[[3, 9]] = 1e9                                         # all but certain to be drawn first
    a = _fill_only(dim, counts, 40, 12, seed=4)
    for row in a:
        assert len(set(row)) == 12 and set(row[:2]) == {3, 9}  # the rest: uniform fallback, distinct


def test_fill_guide_never_starts_past_the_answer():
    from boltc.runtime.lsh.index import FillTable
    counts = np.random.default_rng(3).poisson(2.0, 37).astype(np.float32)
    counts[[5, 6, 30]] = [40, 0, 90]
    t = FillTable(counts)
    u = np.arange(t.cum[-1])
    want = np.searchsorted(t.cum, u, side="right")
    start = t.guide[u * t.cum.size // t.cum[-1]]
    assert (start <= want).all() and (want < t.cum.size).all()
    # the forward scan the native lookup does from there lands on the spec's draw
    got = np.array([next(j for j in range(s, t.cum.size) if t.cum[j] > x) for s, x in zip(start, u)])
    np.testing.assert_array_equal(got, want)


def test_sorted_unique_equals_numpy_unique():
    """The insert's de-duplication (a sort and a neighbour test) against np.unique, with repeats and empty."""
    from boltc.runtime.lsh.index import sorted_unique
    rng = np.random.default_rng(5)
    for n, hi in ((0, 5), (1, 5), (1000, 50), (1000, 1 << 16), (20000, 1 << 40)):
        a = rng.integers(0, hi, n, dtype=np.int64)
        got = sorted_unique(a)
        np.testing.assert_array_equal(got, np.unique(a))
        assert got.dtype == np.int64


@pytest.mark.parametrize("built", [False, True])      # empty buckets; full ones (reservoir replacement)
def test_insert_tables_divided_by_tables_equals_one_insert_into_all(built):
    """Data-parallel workers insert a global batch's missed labels each into its share of one set of
    tables (LSHIndex.insert_tables): any division gives the tables of one insert into all tables;
    each (table, bucket, id) pair is offered once; a pair whose bucket has room for all its new
    pairs is in it afterwards (reservoir insertion)."""
    rng = np.random.default_rng(3)
    index = LSHIndex("dwta", in_dim=16, dim=200, hashes=2, range_bits=3, tables=6, reservoir=8, seed=1)
    if built:
        index.build(rng.normal(size=(200, 16)).astype(np.float32))
    ids = rng.integers(0, 200, size=40)
    buckets = rng.integers(0, 8, size=(40, 6)).astype(np.int32)
    ids[1], buckets[1] = ids[0], buckets[0]                 # a duplicate pair: offered once
    whole, parts = copy.deepcopy(index), copy.deepcopy(index)
    n = whole.insert_tables(ids, buckets, (7, 11))
    assert n == parts.insert_tables(ids, buckets, (7, 11), (0, 2)) + parts.insert_tables(ids, buckets, (7, 11), (2, 6))
    np.testing.assert_array_equal(whole.tables, parts.tables)
    np.testing.assert_array_equal(whole.counts, parts.counts)
    pairs = {(t, int(b), int(i)) for i, row in zip(ids, buckets) for t, b in enumerate(row)}
    assert n == len(pairs) and (whole.counts - index.counts).sum() == n
    new_in = collections.Counter((t, b) for t, b, _ in pairs)
    roomy = [(t, b, i) for t, b, i in pairs if index.counts[t, b] + new_in[(t, b)] <= index.reservoir]
    assert bool(roomy) != built
    assert all(i in whole.tables[t, b] for t, b, i in roomy)
