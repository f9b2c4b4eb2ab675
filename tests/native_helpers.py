"""Small plans and batches for the native-backend tests (hand-written plans: no front end needed)."""
import ctypes

import numpy as np
import scipy.sparse as sp

from boltc import codegen
from boltc.runtime.data.dataset import Batch, as_csr


def make_plan(in_dim=300, hidden=24, out_dim=500, active=None, hidden_act="relu", optimizer="adam",
              family="dwta", extra_hidden=0, sparse_input=True, lr=1e-3, momentum=0.0):
    active = out_dim if active is None else active
    layers = [{"name": "hidden", "op": "fc", "inputs": ["features"], "in_dim": in_dim, "dim": hidden,
               "activation": hidden_act, "bias": True, "input_sparse": sparse_input,
               "layout": "in_major" if sparse_input else "out_major", "sparsity": 1.0, "active": hidden,
               "hash": None}]
    prev = "hidden"
    for i in range(extra_hidden):
        layers.append({"name": f"h{i}", "op": "fc", "inputs": [prev], "in_dim": hidden, "dim": hidden,
                       "activation": "tanh", "bias": True, "input_sparse": False, "layout": "out_major",
                       "sparsity": 1.0, "active": hidden, "hash": None})
        prev = f"h{i}"
    h = None
    if active < out_dim:
        h = ({"family": "dwta", "hashes": 2, "range_bits": 6, "tables": 8, "reservoir": 16, "bin_size": 8,
              "rehash_every": 0.25, "rebuild_every": 0.05, "freeze_after": 1} if family == "dwta" else
             {"family": "srp", "hashes": 6, "range_bits": 6, "tables": 8, "reservoir": 16,
              "rehash_every": 0.25, "rebuild_every": 0.05, "freeze_after": 1})
    layers.append({"name": "scores", "op": "fc", "inputs": [prev], "in_dim": hidden, "dim": out_dim,
                   "activation": "softmax", "bias": True, "input_sparse": False, "layout": "out_major",
                   "sparsity": active / out_dim, "active": active, "hash": h})
    return {"format": 1, "model": "t",
            "inputs": [{"name": "features", "kind": "sparse" if sparse_input else "dense", "dim": in_dim}],
            "target": {"name": "labels", "kind": "multi", "classes": out_dim, "column": None},
            "layers": layers, "output": "scores", "loss": "cross_entropy", "metrics": ["precision@1"],
            "train": {"optimizer": optimizer, "lr": lr, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
                      "momentum": momentum, "batch": 16, "epochs": 1, "schedule": {"kind": "constant"},
                      "sampler": {"kind": "uniform"}, "threads": 0, "seed": 3, "checkpoint_every": 1,
                      "inference": "dense"},
            "data": {}, "memory": {}}


def make_batch(rng, B, in_dim, out_dim, nnz=12, max_labels=3, sparse_input=True):
    if sparse_input:
        rows = []
        for _ in range(B):
            cols = rng.choice(in_dim, size=rng.integers(1, nnz + 1), replace=False)
            rows.append((cols, rng.random(cols.size).astype(np.float32) + 0.1))
        indptr = np.cumsum([0] + [len(c) for c, _ in rows])
        x = as_csr(sp.csr_matrix((np.concatenate([v for _, v in rows]), np.concatenate([c for c, _ in rows]),
                                  indptr), shape=(B, in_dim)))
    else:
        x = rng.standard_normal((B, in_dim)).astype(np.float32)
    lab_rows = [np.sort(rng.choice(out_dim, size=rng.integers(1, max_labels + 1), replace=False)) for _ in range(B)]
    lindptr = np.cumsum([0] + [len(r) for r in lab_rows])
    labels = as_csr(sp.csr_matrix((np.ones(lindptr[-1], np.float32), np.concatenate(lab_rows), lindptr),
                                  shape=(B, out_dim)))
    return Batch(inputs={"features": x}, labels=labels)


def random_active(rng, labels, B, out_dim, k):
    """Per row: the labels first, then distinct random ids, exactly k (the selection contract)."""
    out = np.empty((B, k), np.int32)
    for b in range(B):
        lab = labels.indices[labels.indptr[b]:labels.indptr[b + 1]][:k]
        rest = rng.permutation(np.setdiff1d(np.arange(out_dim), lab))[:k - len(lab)]
        out[b] = np.r_[lab, rest]
    return out


def twin_executors(plan, threads=(1, 2)):
    """Two NativeExecutors over identical fresh states (one per thread count): (state_a, state_b, ex_a, ex_b)."""
    import copy
    from boltc.runtime.exec.native import NativeExecutor
    from boltc.runtime.exec.state import ModelState
    s1 = ModelState.init(plan)
    s2 = copy.deepcopy(s1)
    return s1, s2, NativeExecutor(plan, s1, threads=threads[0]), NativeExecutor(plan, s2, threads=threads[1])


def pair(plan, threads: int = 2, must_be_native: bool = False):
    """A NativeExecutor and the NumPy interpreter (the spec) over identical fresh states."""
    import copy
    from boltc.runtime.exec.interp import NumpyExecutor
    from boltc.runtime.exec.native import NativeExecutor
    from boltc.runtime.exec.state import ModelState
    s = ModelState.init(plan)
    nx = NativeExecutor(plan, s, threads=threads)
    assert nx.native or not must_be_native, nx.fallback_reason
    return nx, NumpyExecutor(plan, copy.deepcopy(s))


def runs_right(obj: bytes) -> None:
    """out[b, k] = dot(h[b], W[k]) with h = 0..7, W rows of ones and twos: 28 and 56."""
    lib = codegen.load_object(obj)
    f = ctypes.CFUNCTYPE(None, *([ctypes.c_int64] * 2 + [ctypes.c_void_p] * 5))(lib.address("dot"))
    h = np.arange(8, dtype=np.float32).reshape(1, 8)
    W = np.ones((2, 8), np.float32)
    W[1] *= 2
    out = np.zeros((1, 2), np.float32)
    f(0, 1, h.ctypes.data, None, W.ctypes.data, None, out.ctypes.data)
    np.testing.assert_array_equal(out, [[28.0, 56.0]])
