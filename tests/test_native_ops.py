"""Each op of the language run natively vs the NumPy interpreter (the spec), on random shapes.

Per op (embedding sum/mean, concat, layernorm, fc in a DAG, the sigmoid + binary cross-entropy output):
the native forward value from the same inputs, the input gradients and the parameter update of one
optimizer step from the same incoming gradient, each against the op's NumPy rule and runtime/exec/optim.py.

Tolerance (float32, the only dtype the kernels compute in): the kernels reassociate row sums
(vectorized, `reassoc`), so values and gradients differ from NumPy's by rounding only:
rtol 1e-5 / atol 1e-6 on values of order 1 (inputs here are scaled to that). Parameters after an Adam
step: atol 1e-3 * lr, as tests/test_native.py (Adam's first step lr * g/(|g| + eps) amplifies the
rounding of gradients near eps); after an SGD step the same rtol/atol as values. Where an entry is a sum
over the batch (parameter gradients, layernorm's input gradient) atol is scaled by the largest magnitude
of the compared array (at least 1): the sum carries the rounding of its largest terms even when it
cancels to ~0. Pure data movement (concat) and integer results must be equal.
"""

import native_helpers as helpers
import numpy as np
import pytest
import scipy.sparse as sp

from boltc import ir
from boltc.lower.rules import HOST, LOWERING_RULES, native_support
from boltc.runtime.data.dataset import Batch, as_csr
from boltc.runtime.exec.native import NativeExecutor
from boltc.runtime.exec.native_ops import NATIVE_OPS, Step
from boltc.runtime.exec.numpy_rules import LOSS_RULES, NUMPY_RULES
from boltc.runtime.exec.optim import make_optimizer
from boltc.runtime.exec.state import ModelState
from native_helpers import random_active

RTOL, ATOL = 1e-5, 1e-6


# ---------------------------------------------------------------- hand-built plans

def fc(name, src, in_dim, dim, act, sparse_in=False, active=None, hash_=None):
    return {"name": name, "op": "fc", "inputs": [src], "in_dim": in_dim, "dim": dim, "activation": act,
            "bias": True, "input_sparse": sparse_in, "layout": "in_major" if sparse_in else "out_major",
            "sparsity": (active or dim) / dim, "active": active or dim, "hash": hash_}


def embedding(name, src, in_dim, dim, reduce):
    return {"name": name, "op": "embedding", "inputs": [src], "in_dim": in_dim, "dim": dim, "reduce": reduce,
            "input_sparse": True, "layout": "in_major"}


def plan_of(inputs, layers, classes, loss="cross_entropy", optimizer="adam", lr=1e-2, momentum=0.0,
            target="multi"):
    return {"format": 1, "model": "ops", "inputs": inputs,
            "target": {"name": "y", "kind": target, "classes": classes, "column": None},
            "layers": layers, "output": layers[-1]["name"], "loss": loss, "metrics": ["accuracy"],
            "train": {"optimizer": optimizer, "lr": lr, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
                      "momentum": momentum, "batch": 16, "epochs": 1, "schedule": {"kind": "constant"},
                      "sampler": {"kind": "uniform"}, "threads": 0, "seed": 5, "checkpoint_every": 1,
                      "inference": "dense"},
            "data": {}, "memory": {}}


def sparse_rows(rng, B, dim, nnz, empty_row=True):
    rows = []
    for b in range(B):
        n = 0 if (empty_row and b == 1) else int(rng.integers(1, nnz + 1))
        cols = np.sort(rng.choice(dim, size=n, replace=False))
        rows.append((cols, (rng.random(n) + 0.1).astype(np.float32)))
    indptr = np.cumsum([0] + [len(c) for c, _ in rows])
    return as_csr(sp.csr_matrix((np.concatenate([v for _, v in rows]).astype(np.float32),
                                 np.concatenate([c for c, _ in rows]).astype(np.int32), indptr),
                                shape=(B, dim)))


def labels_of(rng, B, classes, max_labels=3):
    rows = [np.sort(rng.choice(classes, size=int(rng.integers(1, min(max_labels, classes) + 1)), replace=False))
            for _ in range(B)]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    return as_csr(sp.csr_matrix((np.ones(indptr[-1], np.float32), np.concatenate(rows), indptr),
                                shape=(B, classes)))


def binary_labels(rng, B):
    pos = rng.random(B) < 0.5
    return as_csr(sp.csr_matrix((np.ones(pos.sum(), np.float32), np.zeros(pos.sum(), np.int32),
                                 np.r_[0, np.cumsum(pos)]), shape=(B, 1)))


def pair(plan, threads=2):
    return helpers.pair(plan, threads, must_be_native=True)


def close(a, b, atol, err_msg=""):
    """Within rtol, and atol scaled by the array's largest magnitude (at least 1): an entry that is a
    sum over the batch carries the rounding of its largest terms, even when the sum cancels to ~0."""
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=atol * max(1.0, float(np.abs(b).max(initial=0))),
                               err_msg=err_msg)


def assert_params_close(a, b, lr, adam=True):
    atol = 1e-3 * lr if adam else ATOL
    for layer in a.params:
        for t in a.params[layer]:
            close(a.params[layer][t], b.params[layer][t], atol, f"{layer}.{t}")
            close(a.m[layer][t], b.m[layer][t], atol, f"{layer}.{t} m")


# ---------------------------------------------------------------- one op at a time

def run_op(nx, name, ins, g, lr):
    """Native forward of layer `name` on `ins`, then its backward with incoming gradient g and one
    optimizer step at lr (the state counts one step): (value, input grads)."""
    layer = nx.by_name[name]
    step = Step("dense", None, g.shape[0])
    value, cache = NATIVE_OPS[layer["op"]][0](nx, layer, ins, step)
    nx.state.step += 1
    step.hyper = nx._hyper(lr)
    return value, NATIVE_OPS[layer["op"]][1](nx, layer, cache, np.ascontiguousarray(g, np.float32), step)


def spec_op(plan, state, name, ins, g, lr):
    """The same through NUMPY_RULES and runtime/exec/optim.py."""
    layer = next(l for l in plan["layers"] if l["name"] == name)
    rule = NUMPY_RULES[layer["op"]]
    value, cache = rule.forward(layer, state.params.get(name, {}), ins, None, False)
    in_grads, pgrads = rule.backward(layer, state.params.get(name, {}), cache, g)
    state.step += 1
    if pgrads:
        make_optimizer(plan["train"]).apply(state, {name: pgrads}, lr)
    return value, in_grads


def op_check(plan, name, ins, g, lr, adam=True):
    nx, ix = pair(plan)
    va, ga = run_op(nx, name, ins, g, lr)
    vb, gb = spec_op(plan, ix.state, name, ins, g, lr)
    np.testing.assert_allclose(va, vb, rtol=RTOL, atol=ATOL, err_msg="forward")
    layer = nx.by_name[name]
    assert len(ga) == len(gb) == len(layer["inputs"])
    for src, a, b in zip(layer["inputs"], ga, gb):
        if src not in nx.by_name:                  # a model input: a leaf, no gradient computed
            assert a is None
            continue
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg="input gradient")
    if layer["op"] in ("fc", "embedding", "layernorm"):
        assert_params_close(nx.state, ix.state, lr, adam)
    return va, ga


def test_every_op_of_the_language_has_a_native_lowering_and_runner():
    ops = set(ir.LAYER_OPS)
    assert set(NUMPY_RULES) == ops == set(LOWERING_RULES) == set(NATIVE_OPS)
    assert all(callable(LOWERING_RULES[op]) and LOWERING_RULES[op] is not HOST for op in ops)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_embedding_bag_matches_spec(seed, reduce):
    rng = np.random.default_rng(seed)
    in_dim, dim, B, classes = int(rng.integers(20, 400)), int(rng.integers(1, 40)), int(rng.integers(2, 40)), 9
    plan = plan_of([{"name": "x", "kind": "sparse", "dim": in_dim}],
                   [embedding("bag", "x", in_dim, dim, reduce), fc("out", "bag", dim, classes, "softmax")], classes)
    x = sparse_rows(rng, B, in_dim, 12)                        # row 1 is empty: mean's 0 scale
    g = rng.standard_normal((B, dim)).astype(np.float32)
    value, grads = op_check(plan, "bag", [x], g, 1e-2)
    assert grads == [None] and not value[1].any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concat_matches_spec_exactly(seed):
    rng = np.random.default_rng(seed)
    B = int(rng.integers(1, 30))
    widths = [int(w) for w in rng.integers(1, 40, size=int(rng.integers(2, 5)))]
    inputs = [{"name": "d", "kind": "dense", "dim": widths[0]}, {"name": "x", "kind": "sparse", "dim": 50}]
    layers = [fc(f"p{i}", "x", 50, w, "relu", sparse_in=True) for i, w in enumerate(widths[1:], 1)]
    layers += [{"name": "j", "op": "concat", "inputs": ["d"] + [f"p{i}" for i in range(1, len(widths))],
                "dim": sum(widths)}, fc("out", "j", sum(widths), 5, "softmax")]
    plan = plan_of(inputs, layers, 5)
    ins = [rng.standard_normal((B, w)).astype(np.float32) for w in widths]
    g = rng.standard_normal((B, sum(widths))).astype(np.float32)
    nx, ix = pair(plan)
    value, grads = run_op(nx, "j", ins, g, 1e-2)
    ref, ref_grads = spec_op(plan, ix.state, "j", ins, g, 1e-2)
    np.testing.assert_array_equal(value, ref)
    assert grads[0] is None                                   # a model input: a leaf
    for a, b in zip(grads[1:], ref_grads[1:]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_layernorm_matches_spec(seed, optimizer):
    rng = np.random.default_rng(seed)
    d, B = int(rng.integers(2, 200)), int(rng.integers(1, 40))
    eps = float(rng.choice([1e-5, 1e-3]))
    plan = plan_of([{"name": "d", "kind": "dense", "dim": d}],
                   [fc("h", "d", d, d, "tanh"), {"name": "n", "op": "layernorm", "inputs": ["h"], "dim": d, "eps": eps},
                    fc("out", "n", d, 4, "softmax")], 4, optimizer=optimizer, momentum=0.9)
    x = (rng.standard_normal((B, d)) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)).astype(np.float32)
    g = rng.standard_normal((B, d)).astype(np.float32)
    nx, ix = pair(plan)
    for p in (nx.state, ix.state):                      # non-trivial gamma, beta (same in both)
        p.params["n"]["gamma"][:] = np.linspace(0.5, 1.5, d, dtype=np.float32)
        p.params["n"]["beta"][:] = np.linspace(-0.3, 0.3, d, dtype=np.float32)
    va, ga = run_op(nx, "n", [x], g, 1e-2)
    vb, gb = spec_op(plan, ix.state, "n", [x], g, 1e-2)
    np.testing.assert_allclose(va, vb, rtol=RTOL, atol=ATOL)
    close(ga[0], gb[0], ATOL, "input gradient")
    assert_params_close(nx.state, ix.state, 1e-2, adam=optimizer == "adam")


def test_layernorm_param_grads_identical_for_one_and_two_threads():
    rng = np.random.default_rng(4)
    d, B = 70, 33
    plan = plan_of([{"name": "d", "kind": "dense", "dim": d}],
                   [{"name": "n", "op": "layernorm", "inputs": ["d"], "dim": d, "eps": 1e-5},
                    fc("out", "n", d, 4, "softmax")], 4)
    x = rng.standard_normal((B, d)).astype(np.float32)
    g = rng.standard_normal((B, d)).astype(np.float32)
    states = []
    for threads in (1, 2):
        nx, _ = pair(plan, threads)
        run_op(nx, "n", [x], g, 1e-2)
        states.append(nx.state.params["n"])
    for t in ("gamma", "beta"):
        np.testing.assert_array_equal(states[0][t], states[1][t])


@pytest.mark.parametrize("seed", [0, 1])
def test_fc_reading_a_layer_in_a_dag_matches_spec(seed):
    """fc b reads fc a, whose value has a second reader (the concat): b's input gradient is the
    gradient of a's value (a applies its activation derivative after the sum)."""
    rng = np.random.default_rng(seed)
    d, h, B = int(rng.integers(3, 60)), int(rng.integers(2, 50)), int(rng.integers(1, 30))
    plan = plan_of([{"name": "d", "kind": "dense", "dim": d}],
                   [fc("a", "d", d, h, "sigmoid"), fc("b", "a", h, h, "relu"),
                    {"name": "j", "op": "concat", "inputs": ["a", "b"], "dim": 2 * h},
                    fc("out", "j", 2 * h, 3, "softmax")], 3)
    x = rng.standard_normal((B, h)).astype(np.float32)
    g = rng.standard_normal((B, h)).astype(np.float32)
    op_check(plan, "b", [x], g, 1e-2)


# ---------------------------------------------------------------- sigmoid + binary cross-entropy

@pytest.mark.parametrize("width,active", [(1, None), (7, None), (40, 9)])
def test_sigmoid_bce_kernel_matches_spec(width, active):
    from boltc.runtime.exec.native import _csr
    rng = np.random.default_rng(width)
    B = 23
    h = {"family": "srp", "hashes": 4, "range_bits": 4, "tables": 4, "reservoir": 8, "rehash_every": 0.25,
         "rebuild_every": 0.05, "freeze_after": 1} if active else None
    plan = plan_of([{"name": "d", "kind": "dense", "dim": 6}], [fc("out", "d", 6, width, "sigmoid", active=active,
                                                                   hash_=h)],
                   width, loss="binary_cross_entropy", target="binary" if width == 1 else "multi")
    nx, _ = pair(plan)
    k = active or width
    z = (rng.standard_normal((B, k)) * 8).astype(np.float32)
    z[0, 0], z[1, 0] = 40.0, -40.0                                     # saturated: finite loss, exact grad
    ids = (np.stack([rng.permutation(width)[:k] for _ in range(B)]) if active
           else np.tile(np.arange(width), (B, 1))).astype(np.int32)
    lab = _csr(binary_labels(rng, B) if width == 1 else labels_of(rng, B, width))
    scale = np.full(B, 1 / B, np.float32)
    loss, grad = np.empty(B, np.float32), np.empty_like(z)
    role = "bce" if active else "bce_all"
    zz = z.copy()
    nx.k.fn("out", role)(0, B, zz.ctypes.data, ids.ctypes.data, lab.indptr.ctypes.data, lab.indices.ctypes.data,
                         scale.ctypes.data, loss.ctypes.data, grad.ctypes.data, nx.marks(width)[0].ctypes.data)
    assert not nx.marks(width)[0].any()                                # the label bitset is left empty
    ref_loss, ref_dz = LOSS_RULES["binary_cross_entropy"](z, ids if active else None, lab, width)
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, ref_dz / B, rtol=RTOL, atol=ATOL)
    assert np.isfinite(loss).all()


@pytest.mark.parametrize("active", [None, 12])
def test_sigmoid_bce_model_trains_like_spec(active):
    """text -> fc relu -> fc sigmoid (text_tiny's shape, multilabel when wide), dense or over an active set."""
    rng = np.random.default_rng(11)
    in_dim, hid, width, B = 300, 16, 1 if active is None else 60, 20
    h = {"family": "dwta", "hashes": 2, "range_bits": 6, "tables": 8, "reservoir": 16, "bin_size": 8,
         "rehash_every": 0.25, "rebuild_every": 0.05, "freeze_after": 1} if active else None
    plan = plan_of([{"name": "t", "kind": "text", "dim": in_dim}],
                   [fc("hidden", "t", in_dim, hid, "relu", sparse_in=True),
                    fc("score", "hidden", hid, width, "sigmoid", active=active, hash_=h)],
                   width, loss="binary_cross_entropy", target="binary" if width == 1 else "multi")
    nx, ix = pair(plan)
    for step in range(3):
        x = sparse_rows(rng, B, in_dim, 10, empty_row=False)
        y = binary_labels(rng, B) if width == 1 else labels_of(rng, B, width)
        batch = Batch(inputs={"t": x}, labels=y)
        act = None
        if active:
            act = {"score": random_active(rng, y, B, width, active)}
        fa, fb = nx.forward(batch, "train", act), ix.forward(batch, "train", act)
        sa, sb = (fa["score"][1], fb["score"][1]) if active else (fa["score"], fb["score"])
        np.testing.assert_allclose(sa, sb, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(nx.train_step(batch, 1e-2, active=act), ix.train_step(batch, 1e-2, active=act),
                                   rtol=RTOL, atol=ATOL)
        assert_params_close(nx.state, ix.state, 1e-2)
    ia, sa = nx.predict(batch, 1)
    ib, sb = ix.predict(batch, 1)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, rtol=RTOL, atol=ATOL)


def test_plans_still_run_on_the_interpreter_say_why():
    p = plan_of([{"name": "x", "kind": "sparse", "dim": 30}],
                [fc("out", "x", 30, 20, "softmax", sparse_in=True, active=5,
                    hash_={"family": "srp", "hashes": 4, "range_bits": 4, "tables": 4, "reservoir": 8})], 20)
    assert "sparse input" in native_support(p)


def test_native_srp_table_build_matches_spec_counts_and_unfull_buckets():
    """SRP indexes refill their tables with the native kernel too (the spec's SRP hash feeds it): bucket
    counts equal the spec's, buckets that did not overflow hold the same neurons."""
    h = {"family": "srp", "hashes": 6, "range_bits": 6, "tables": 8, "reservoir": 16, "rehash_every": 0.25,
         "rebuild_every": 0.05, "freeze_after": 1}
    plan = plan_of([{"name": "d", "kind": "dense", "dim": 24}],
                   [fc("out", "d", 24, 2000, "softmax", active=50, hash_=h)], 2000)
    state = ModelState.init(plan)
    index = state.lsh["out"]
    index.build(state.params["out"]["W"])                 # the spec's build
    spec_tables, spec_counts = index.tables.copy(), index.counts.copy()
    NativeExecutor(plan, state, threads=2)                # installs the native build
    assert index._native_hash and index.family == "srp"
    index.build(state.params["out"]["W"])
    np.testing.assert_array_equal(index.counts, spec_counts)
    for t in range(index.L):
        for bk in range(index.tables.shape[1]):
            got, want = index.tables[t, bk], spec_tables[t, bk]
            if spec_counts[t, bk] <= index.reservoir:
                assert sorted(got[got >= 0]) == sorted(want[want >= 0])
