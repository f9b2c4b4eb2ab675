"""NativeExecutor against the NumPy interpreter (the spec), fed the same active sets.

Tolerance (float32): the kernels reassociate the dot products and row sums (vectorized, `reassoc`),
so results differ from NumPy's by rounding only: rtol 1e-5 / atol 1e-6 on activations, losses and
Adam's first steps move each weight by about lr * g/|g|, so where a
gradient entry is tiny (cancellation, ~eps) its rounding shows up as up to ~lr * 1e-3 in the weight:
parameters are compared with atol = 1e-3 * lr. Integer results (hash codes,
top-k ids, active sets without random fill) must be equal.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from boltc.runtime.exec.native import NativeExecutor
from boltc.runtime.exec.state import ModelState
from native_helpers import make_batch, make_plan, pair, random_active, twin_executors

RTOL, ATOL = 1e-5, 1e-6




def assert_params_close(a, b, lr=1e-2, rtol=RTOL):
    atol = 1e-3 * lr
    for layer in a.params:
        for t in a.params[layer]:
            np.testing.assert_allclose(a.params[layer][t], b.params[layer][t], rtol=rtol, atol=atol,
                                       err_msg=f"{layer}.{t}")
            np.testing.assert_allclose(a.m[layer][t], b.m[layer][t], rtol=rtol, atol=atol)
            np.testing.assert_allclose(a.v[layer][t], b.v[layer][t], rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("shape", [(300, 24, 500, 40), (97, 17, 211, 13), (64, 33, 150, 150)])
def test_forward_each_layer_matches_interpreter(shape):
    in_dim, hidden, out_dim, k = shape
    nx, ix = pair(make_plan(in_dim, hidden, out_dim, k))
    assert nx.native, nx.fallback_reason
    rng = np.random.default_rng(1)
    batch = make_batch(rng, 9, in_dim, out_dim)
    active = {"scores": random_active(rng, batch.labels, 9, out_dim, k)} if k < out_dim else None
    for mode in ("train", "dense"):
        a = nx.forward(batch, mode, active if mode == "train" else None)
        b = ix.forward(batch, mode, active if mode == "train" else None)
        np.testing.assert_allclose(a["hidden"], b["hidden"], rtol=RTOL, atol=ATOL)
        sa, sb = a["scores"], b["scores"]
        if isinstance(sb, tuple):
            np.testing.assert_array_equal(sa[0], sb[0])
            sa, sb = sa[1], sb[1]
        np.testing.assert_allclose(sa, sb, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("hidden_act,optimizer,extra", [("relu", "adam", 0), ("sigmoid", "sgd", 1),
                                                        ("tanh", "adam", 1)])
def test_three_training_steps_match_interpreter(hidden_act, optimizer, extra):
    plan = make_plan(200, 20, 300, 30, hidden_act=hidden_act, optimizer=optimizer, extra_hidden=extra,
                     lr=1e-2, momentum=0.5 if optimizer == "sgd" else 0.0)
    # Adam's first step is lr * g / (|g| + eps): with eps 1e-7 and gradients of 1e-7 (a second small
    # hidden layer) it amplifies rounding; eps 1e-4 keeps the comparison about the kernels, not about
    # that ill-conditioning (the default eps is covered by the relu case, whose gradients are larger).
    if extra:
        plan["train"]["eps"] = 1e-4
    nx, ix = pair(plan)
    assert nx.native, nx.fallback_reason
    rng = np.random.default_rng(2)
    for step in range(3):
        batch = make_batch(rng, 12, 200, 300)
        batch.weights = rng.random(12).astype(np.float32) + 0.5 if step == 1 else None
        active = {"scores": random_active(rng, batch.labels, 12, 300, 30)}
        la = nx.train_step(batch, 1e-2, active=active)
        lb = ix.train_step(batch, 1e-2, active=active)
        np.testing.assert_allclose(la, lb, rtol=RTOL, atol=ATOL)
        assert nx.state.step == ix.state.step == step + 1
        assert_params_close(nx.state, ix.state)


@pytest.mark.parametrize("fused_dx", [False, True])
def test_both_input_gradient_paths_of_a_sparse_layer_train_like_the_interpreter(monkeypatch, fused_dx):
    """The sparse output's input gradient fused into its update (a W larger than the cache) or by
    examples before it (a small W): both as the spec, over batches on both sides of the neuron-order
    forward's threshold, and each thread-count independent."""
    import boltc.ops.fc as fc_op
    import boltc.runtime.exec.native_ops as native_ops
    monkeypatch.setattr(fc_op, "FUSED_DX_MIN_WEIGHT_BYTES", 0 if fused_dx else 1 << 40)
    monkeypatch.setattr(native_ops, "MIN_WORK_PER_THREAD", 1)       # these small kernels split too
    plan = make_plan(150, 24, 260, 37, extra_hidden=1, lr=1e-2)
    plan["train"]["eps"] = 1e-4
    nx, ix = pair(plan)
    s1, s2, one, two = twin_executors(plan)
    rng = np.random.default_rng(9)
    for B in (1, 40, 7):
        batch = make_batch(rng, B, 150, 260)
        active = {"scores": random_active(rng, batch.labels, B, 260, 37)}
        np.testing.assert_allclose(nx.train_step(batch, 1e-2, active=active),
                                   ix.train_step(batch, 1e-2, active=active), rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(one.train_step(batch, 1e-2, active=active),
                                      two.train_step(batch, 1e-2, active=active))
    assert_params_close(nx.state, ix.state)
    for layer in s1.params:
        for t in s1.params[layer]:
            np.testing.assert_array_equal(s1.params[layer][t], s2.params[layer][t])
    # a data-parallel worker's gradients() + apply_gradients() equal train_step bit for bit on either path
    s3, s4, fused_step, split = twin_executors(plan, threads=(2, 2))
    batch = make_batch(rng, 40, 150, 260)
    active = {"scores": random_active(rng, batch.labels, 40, 260, 37)}
    fused_step.train_step(batch, 1e-2, active=active)
    _, grads = split.gradients(batch, active=active)
    split.apply_gradients(grads, 1e-2)
    for layer in s3.params:
        for t in set(s3.params[layer]) - {"label_count"}:        # the caller of apply_gradients adds those
            np.testing.assert_array_equal(s3.params[layer][t], s4.params[layer][t])
            np.testing.assert_array_equal(s3.m[layer][t], s4.m[layer][t])


def test_dense_output_and_dense_input_training_match_interpreter():
    plan = make_plan(40, 16, 30, None, sparse_input=False)
    nx, ix = pair(plan)
    assert nx.native, nx.fallback_reason
    rng = np.random.default_rng(3)
    for _ in range(3):
        batch = make_batch(rng, 10, 40, 30, sparse_input=False)
        np.testing.assert_allclose(nx.train_step(batch, 1e-3), ix.train_step(batch, 1e-3), rtol=RTOL, atol=ATOL)
    assert_params_close(nx.state, ix.state, lr=1e-3)


def test_forward_and_training_identical_for_one_and_two_threads():
    plan = make_plan(300, 24, 500, 40)
    s1, s2, one, two = twin_executors(plan)
    rng = np.random.default_rng(4)
    for _ in range(3):
        batch = make_batch(rng, 33, 300, 500)
        for mode in ("dense", "sparse"):
            a, b = one.forward(batch, mode), two.forward(batch, mode)
            np.testing.assert_array_equal(a["hidden"], b["hidden"])
            if mode == "sparse":
                np.testing.assert_array_equal(a["scores"][0], b["scores"][0])
                np.testing.assert_array_equal(a["scores"][1], b["scores"][1])
            else:
                np.testing.assert_array_equal(a["scores"], b["scores"])
        # training (LSH selection included) is thread-count independent too: no racing accumulation
        np.testing.assert_array_equal(one.train_step(batch, 1e-3), two.train_step(batch, 1e-3))
    for layer in s1.params:
        for t in s1.params[layer]:
            np.testing.assert_array_equal(s1.params[layer][t], s2.params[layer][t])


def test_native_dwta_hash_equals_spec_hash():
    plan = make_plan(300, 24, 500, 40)
    nx, _ = pair(plan)
    index = nx.state.lsh["scores"]
    rng = np.random.default_rng(5)
    h = np.maximum(rng.standard_normal((50, 24)), 0).astype(np.float32)   # relu-like: empty bins occur
    h[3] = 0.0                                                             # an all-zero row
    # rows with 1-3 nonzeros: most bins empty, densification takes several rounds (or never ends)
    for r, nnz in zip(range(10, 40), np.tile([1, 2, 3], 10)):
        h[r] = 0.0
        h[r, rng.choice(24, nnz, replace=False)] = rng.random(nnz) + 0.1
    spec = type(index).hash(index, h)
    np.testing.assert_array_equal(index.hash(h), spec)
    index.rehash(index.seed + 1)                                           # new functions are picked up
    np.testing.assert_array_equal(index.hash(h), type(index).hash(index, h))


@pytest.mark.parametrize("rows,threads", [(1, 1), (16, 1), (17, 2), (1100, 3)])
def test_native_dwta_hash_equals_spec_for_any_group_and_slice(rows, threads):
    """The kernel hashes 16 examples at once from x transposed: a partial last group, and slices that
    start inside a group (1,100 rows on 3 threads), give the spec's codes."""
    plan = make_plan(300, 24, 500, 40)
    nx, _ = pair(plan, threads=threads)
    index = nx.state.lsh["scores"]
    rng = np.random.default_rng(rows)
    h = np.maximum(rng.standard_normal((rows, 24)), 0).astype(np.float32)
    h[rng.random(h.shape) < 0.5] = 0.0                                      # many empty bins
    np.testing.assert_array_equal(index.hash(h), type(index).hash(index, h))


@pytest.mark.parametrize("sorted_dims", [True, False])
def test_native_srp_hash_equals_spec_hash(sorted_dims):
    """SRP codes of the native kernel equal the spec's bit for bit: projections summed in float32 in the
    order of each hash's idx row (ascending dims as rehash draws them: every hash reads x[b, w] in
    order; an index whose rows are in another order, as a model file may hold, takes the gather path)."""
    plan = make_plan(300, 24, 500, 40, family="srp")
    nx, _ = pair(plan)
    index = nx.state.lsh["scores"]
    assert index.full_width()
    if not sorted_dims:
        order = np.random.default_rng(1).permuted(np.tile(np.arange(index.in_dim), (index.n_hashes, 1)), axis=1)
        index.idx = np.ascontiguousarray(np.take_along_axis(index.idx, order, axis=1))
        index.signs = np.ascontiguousarray(np.take_along_axis(index.signs, order, axis=1))
        assert not index.full_width()
    rng = np.random.default_rng(7)
    h = rng.standard_normal((40, 24)).astype(np.float32) * np.float32(1e3)
    h[:, :12] *= np.float32(1e-4)
    h[5] = 0.0
    # rows where the order decides a bit: where the two 1e8 cancel, adding the 1 last keeps its sign
    # (ascending dims), while adding it first loses it in the rounding of 1e8 +- 1 (bit 0)
    h[30:] = 0.0
    h[30:, [3, 11, 17]] = np.array([1e8, 1e8, 1.0], np.float32)
    h[35:, 17] = -1.0
    np.testing.assert_array_equal(index.hash(h), type(index).hash(index, h))


def lookup_kernels(k: int, dim: int = 500):
    """The training and inference lookup kernels of a 'scores' layer with k active of dim neurons."""
    from boltc import codegen
    from boltc.lower import select as sel
    from boltc.lower.builder import KernelModule
    from boltc.lower.kernels import Kernels
    km = KernelModule()
    sel.lookup(km, "lk", dim, k)
    sel.lookup_ranked(km, "lkr", dim, k)
    lib, _ = codegen.build(km.ir_text())
    return Kernels(lib, km.signatures, {"scores": {"lookup": "lk", "lookup_ranked": "lkr"}})


def _selection_cases(seed):
    """(executor, its index, batch, hidden values, layer with k active, k) for k = 5, 40, 499 of a
    500-wide output; the executor runs the lookup kernels built for that k."""
    plan = make_plan(300, 24, 500, 40)
    nx, _ = pair(plan)
    batch = make_batch(np.random.default_rng(seed), 20, 300, 500)
    h = nx.forward(batch, "dense")["hidden"]
    for k in (5, 40, 499):
        nx.k = lookup_kernels(k)
        yield nx, nx.state.lsh["scores"], batch, h, dict(plan["layers"][-1], active=k), k


def test_native_selection_follows_spec_order_and_cuts_to_exactly_k():
    for nx, index, batch, h, layer_k, k in _selection_cases(6):
        ids = nx._select(layer_k, h, batch.labels, 123, False)
        from boltc.runtime.lsh.index import training_reserve
        spec = index.select(h, batch.labels, k, np.random.default_rng(0), reserve=training_reserve(layer_k))
        assert ids.shape == (20, k)
        for b in range(20):
            assert len(set(ids[b])) == k
            labs = batch.labels.indices[batch.labels.indptr[b]:batch.labels.indptr[b + 1]]
            assert set(labs[:k]) <= set(ids[b])
            # labels then bucket contents in table order: equal to the spec up to where it fills randomly
            buckets = index.hash(h[b:b + 1])[0]
            cand = index.tables[np.arange(index.L), buckets].ravel()
            determined = len(dict.fromkeys([*labs, *cand[cand >= 0]]))
            room = max(len(labs), k - training_reserve(layer_k))     # the rest is the random fill
            n = min(k, determined, room)
            np.testing.assert_array_equal(ids[b, :n], spec[b, :n])


def test_native_inference_selection_ranks_by_collisions_like_the_spec():
    """Sparse inference: distinct bucket contents, most collisions across the tables first, ties in
    table order (LSHIndex.rank_by_collisions), then random fill; exactly k distinct ids."""
    for nx, index, batch, h, layer_k, k in _selection_cases(8):
        ids = nx._select(layer_k, h, None, 321, False)
        spec = index.select(h, None, k, np.random.default_rng(0))
        assert ids.shape == (20, k)
        for b in range(20):
            assert len(set(ids[b])) == k and ((ids[b] >= 0) & (ids[b] < 500)).all()
            cand = index.tables[np.arange(index.L), index.hash(h[b:b + 1])[0]].ravel()
            n = min(k, len(set(cand[cand >= 0].tolist())))
            np.testing.assert_array_equal(ids[b, :n], spec[b, :n])


def test_predict_matches_interpreter_dense_and_sparse():
    plan = make_plan(300, 24, 500, 40)
    nx, ix = pair(plan)
    rng = np.random.default_rng(7)
    for _ in range(3):                                         # train a little so label counts exist
        batch = make_batch(rng, 16, 300, 500)
        act = {"scores": random_active(rng, batch.labels, 16, 500, 40)}
        nx.train_step(batch, 1e-2, active=act)
        ix.train_step(batch, 1e-2, active=act)
    batch = make_batch(rng, 16, 300, 500)
    ia, sa = nx.predict(batch, 5)
    ib, sb = ix.predict(batch, 5)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-7)
    # sparse inference: scored over the same active set -> the same ranking
    active = nx.forward(batch, "sparse")["scores"][0]
    fb = ix.forward(batch, "train", {"scores": active})
    assert fb["scores"][0].shape == active.shape
    ia, sa = nx.predict(batch, 3, sparse=True)
    assert ia.shape == (16, 3) and (np.diff(sa, axis=1) <= 0).all()


def test_unsupported_plan_runs_on_the_interpreter():
    plan = make_plan(50, 8, 20, None, hidden_act="softmax")      # a hidden softmax is not lowered
    nx, ix = pair(plan)
    assert not nx.native and "softmax" in nx.fallback_reason
    batch = make_batch(np.random.default_rng(8), 4, 50, 20)
    np.testing.assert_array_equal(nx.train_step(batch, 1e-3), ix.train_step(batch, 1e-3))


def test_large_batch_neuron_order_path_matches_interpreter():
    """B >= 32 takes the neuron-order forward and the update fused with the input gradient."""
    from boltc.runtime.exec.native import NEURON_MAJOR_MIN_BATCH
    B = NEURON_MAJOR_MIN_BATCH + 8
    plan = make_plan(200, 20, 300, 30, lr=1e-3)
    nx, ix = pair(plan)
    rng = np.random.default_rng(9)
    for _ in range(3):
        batch = make_batch(rng, B, 200, 300)
        active = {"scores": random_active(rng, batch.labels, B, 300, 30)}
        fa, fb = nx.forward(batch, "train", active), ix.forward(batch, "train", active)
        np.testing.assert_allclose(fa["scores"][1], fb["scores"][1], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(nx.train_step(batch, 1e-3, active=active),
                                   ix.train_step(batch, 1e-3, active=active), rtol=RTOL, atol=ATOL)
    assert_params_close(nx.state, ix.state, lr=1e-3)


def test_native_table_build_matches_spec_counts_and_unfull_buckets():
    """Bucket fill counts equal the spec's; a bucket that did not overflow holds exactly the same
    neurons (which neurons a full bucket keeps is random in both: a uniform subset)."""
    plan = make_plan(300, 24, 3000, 60)
    state = ModelState.init(plan)
    index = state.lsh["scores"]
    index.build(state.params["scores"]["W"])             # the spec's build, from the weights
    spec_tables, spec_counts = index.tables.copy(), index.counts.copy()
    NativeExecutor(plan, state, threads=2)               # installs the native hash + build
    index.build(state.params["scores"]["W"])
    np.testing.assert_array_equal(index.counts, spec_counts)
    for t in range(index.L):
        for bk in range(index.tables.shape[1]):
            got = index.tables[t, bk]
            if spec_counts[t, bk] <= index.reservoir:
                assert sorted(got[got >= 0]) == sorted(spec_tables[t, bk][spec_tables[t, bk] >= 0])
            else:
                assert (got >= 0).all() and len(set(got)) == index.reservoir


def test_predict_of_a_dense_two_class_output_without_label_counts_matches_interpreter():
    """A dense 2-class softmax (SST-2's shape) before any training has no label counts: the top-k
    kernel must not read the mask through a null pointer (it segfaulted), and answers like the spec."""
    import scipy.sparse as sp
    import boltc
    src = """model t {
  input x: sparse(2048)
  target y: label(2)
  h = fc(x, 8, relu)
  s = fc(h, 2, softmax)
  loss cross_entropy(s, y)
}"""
    X = sp.random(10, 2048, density=0.01, format="csr", dtype=np.float32, random_state=0)
    nat = boltc.compile(src, backend="native")
    ids, scores = nat.predict(X, top_k=1)
    ref = boltc.compile(src, backend="numpy")
    ref._set_state(nat.state)
    ids_ref, scores_ref = ref.predict(X, top_k=1)
    np.testing.assert_allclose(scores, scores_ref, rtol=1e-5, atol=1e-6)


def _native_fill_only(counts, B, k, seed):
    """Native training lookup on label-less rows and empty tables: the whole set is the fill."""
    dim = counts.size
    plan = make_plan(300, 24, dim, 40)
    nx, _ = pair(plan)
    nx.state.lsh["scores"].tables.fill(-1)
    nx.state.params["scores"]["label_count"] = counts
    nx.k = lookup_kernels(k, dim)
    h = np.random.default_rng(seed).random((B, 24)).astype(np.float32)
    labels = sp.csr_matrix((B, dim), dtype=np.float32)
    return nx._select(dict(plan["layers"][-1], active=k), h, labels, seed, False)


def test_native_frequency_fill_draws_in_proportion_like_the_spec():
    from scipy.stats import chisquare
    counts = np.arange(50, dtype=np.float32)                    # weights 1..50 (runtime/lsh/index.py training_fill)
    ids = _native_fill_only(counts, 20000, 1, seed=5)
    seen = np.bincount(ids[:, 0], minlength=50)
    w = counts + 1
    assert chisquare(seen, w / w.sum() * seen.sum()).pvalue > 1e-3
    assert chisquare(seen).pvalue < 1e-9


def test_native_frequency_fill_with_dominant_weights_is_distinct_and_exact():
    counts = np.zeros(50, np.float32)
    counts[[3, 9]] = 1e9
    ids = _native_fill_only(counts, 40, 12, seed=6)
    for row in ids:
        assert len(set(row)) == 12 and set(row[:2]) == {3, 9}


def test_native_insert_of_missed_labels_equals_the_spec():
    """The `insert` kernel (frozen tables' missed labels) writes the same tables and counts as the spec's
    apply_inserts, given the same sorted pairs and draws: full and unfull buckets, repeated cells."""
    plan = make_plan(300, 24, 3000, 60)
    state = ModelState.init(plan)
    index = state.lsh["scores"]
    index.build(state.params["scores"]["W"])
    ex = NativeExecutor(plan, state, threads=1)
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 3000, 400)
    buckets = rng.integers(0, index.tables.shape[1], (400, index.L)).astype(np.int32)
    spec_tables, spec_counts = index.tables.copy(), index.counts.copy()
    got = {}

    def native(keys, nid, u):
        got["n"] = keys.size
        fn = ex.k.fn("scores", "insert")
        keys, nid = np.ascontiguousarray(keys, np.int64), np.ascontiguousarray(nid, np.int32)
        fn(keys.size, keys.ctypes.data, nid.ctypes.data, u.ctypes.data, index.reservoir, index.tables.ctypes.data,
           index.counts.ctypes.data)

    n = index.insert(ids, buckets, np.random.default_rng(3), apply=native)
    native_tables, native_counts = index.tables.copy(), index.counts.copy()
    index.tables[...], index.counts[...] = spec_tables, spec_counts
    assert index.insert(ids, buckets, np.random.default_rng(3)) == n == got["n"] > 0
    assert (index.counts > index.reservoir).any()                    # some buckets overflowed (draws used)
    np.testing.assert_array_equal(native_tables, index.tables)
    np.testing.assert_array_equal(native_counts, index.counts)


@pytest.mark.parametrize("optimizer,moments,decay", [("sgd", "f32", 0.0), ("adam", "bf16", 0.0), ("adam", "f32", 0.01)])
def test_blocked_fused_update_equals_the_by_examples_path(monkeypatch, optimizer, moments, decay):
    """The blocked fused update + input gradient (boltc/lower/backward.py rows_update_blocked) moves the
    output layer's weights and moments exactly as its update alone (`upd_active`, after the by-examples
    input gradient) for each optimizer and moment storage, with blocks cut short by a small `cap`; and
    it is thread-count independent."""
    import boltc.ops.fc as fc_op
    import boltc.runtime.exec.native_ops as native_ops
    monkeypatch.setattr(native_ops, "MIN_WORK_PER_THREAD", 1)
    monkeypatch.setattr(fc_op, "BLOCKED_MIN_CAP", 5)
    plan = make_plan(150, 40, 400, 50, optimizer=optimizer, lr=1e-2, momentum=0.5 if optimizer == "sgd" else 0.0)
    plan["train"]["moments"] = moments
    plan["train"]["weight_decay"] = decay
    rng = np.random.default_rng(12)
    batches = [make_batch(rng, 40, 150, 400) for _ in range(2)]
    actives = [{"scores": random_active(rng, b.labels, 40, 400, 50)} for b in batches]
    s_fused, s_split, fused, by_examples = twin_executors(plan, threads=(1, 1))
    monkeypatch.setattr(fc_op, "FUSED_DX_MIN_WEIGHT_BYTES", 0)
    fused.train_step(batches[0], 1e-2, active=actives[0])
    monkeypatch.setattr(fc_op, "FUSED_DX_MIN_WEIGHT_BYTES", 1 << 40)
    by_examples.train_step(batches[0], 1e-2, active=actives[0])
    for group in ("params", "m", "v"):
        for t, a in getattr(s_fused, group)["scores"].items():
            np.testing.assert_array_equal(a, getattr(s_split, group)["scores"][t], err_msg=f"{group} scores.{t}")
    monkeypatch.setattr(fc_op, "FUSED_DX_MIN_WEIGHT_BYTES", 0)
    s1, s2, one, two = twin_executors(plan)
    for b, act in zip(batches, actives):
        np.testing.assert_array_equal(one.train_step(b, 1e-2, active=act), two.train_step(b, 1e-2, active=act))
    for group in ("params", "m", "v"):
        for layer, ts in getattr(s1, group).items():
            for t, a in ts.items():
                np.testing.assert_array_equal(a, getattr(s2, group)[layer][t], err_msg=f"{group} {layer}.{t}")
