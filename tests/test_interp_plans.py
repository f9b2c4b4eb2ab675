"""Hand-built plans (CONTRACTS.md section 3) and synthetic batches shared by the runtime-math tests."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.runtime.data.dataset import Batch, Dataset, as_csr


def fc(name, inputs, in_dim, dim, activation, input_sparse=False, active=None, hash=None, bias=True):
    return {"name": name, "op": "fc", "inputs": list(inputs), "in_dim": in_dim, "dim": dim,
            "activation": activation, "bias": bias, "input_sparse": input_sparse,
            "layout": "in_major" if input_sparse else "out_major",
            "sparsity": 1.0 if hash is None else active / dim, "active": dim if active is None else active,
            "hash": hash}


def dwta(tables=8, hashes=2, reservoir=16, **kw):
    return {"family": "dwta", "hashes": hashes, "range_bits": 3 * hashes, "tables": tables,
            "reservoir": reservoir, "bin_size": 8, "rehash_every": 0.25, "rebuild_every": 0.05,
            "freeze_after": 1, **kw}


def plan(layers, in_dim, classes, output=None, loss="cross_entropy", optimizer="adam", lr=1e-3,
         batch=32, input_kind="sparse", target_kind="multi", seed=0):
    return {"format": 1, "model": "t",
            "inputs": [{"name": "x", "kind": input_kind, "dim": in_dim}],
            "target": {"name": "y", "kind": target_kind, "classes": classes, "column": None},
            "layers": layers, "output": output or layers[-1]["name"], "loss": loss,
            "metrics": ["precision@1"],
            "train": {"optimizer": optimizer, "lr": lr, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
                      "momentum": 0.0, "batch": batch, "epochs": 1, "schedule": {"kind": "constant"},
                      "sampler": {"kind": "uniform"}, "threads": 0, "seed": seed,
                      "checkpoint_every": 1, "inference": "dense"},
            "data": {}, "memory": {}}


def separable(n, in_dim, classes, seed=0, multi=False, noise=2):
    """Each class owns a random block of 4 features; an example = its class's block + `noise` random
    features (values 1, rows L2-normalised). Separable by a linear model."""
    rng = np.random.default_rng(seed)
    protos = np.stack([rng.choice(in_dim, 4, replace=False) for _ in range(classes)])
    y = rng.integers(0, classes, n)
    rows, cols = [], []
    for i, c in enumerate(y):
        f = np.unique(np.r_[protos[c], rng.integers(0, in_dim, noise)])
        rows += [i] * len(f); cols += list(f)
    x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, in_dim))
    x = sp.csr_matrix(x.multiply(1 / np.sqrt(x.multiply(x).sum(1))))
    labels = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), y)), shape=(n, classes))
    return Dataset(inputs={"x": as_csr(x, in_dim)}, labels=as_csr(labels, classes))


def batch_of(ds, rows):
    return ds.take(np.asarray(rows))


def test_separable_is_well_formed():
    ds = separable(50, 40, 5)
    assert ds.rows == 50 and ds.labels.shape == (50, 5)
    np.testing.assert_allclose(np.asarray(ds.inputs["x"].multiply(ds.inputs["x"]).sum(1)).ravel(), 1, rtol=1e-5)
