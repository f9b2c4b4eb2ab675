"""The synthetic generator: seeded, chunk-independent, shaped as DESIGN.md section 8 says."""
import numpy as np
import pytest

from boltc.errors import BoltError
from boltc.runtime.data import synth

SPEC = dict(rows=3000, features=5000, labels=2000, seed=3, task=1, nnz=40)


def test_same_seed_same_data_and_ranges_match_the_whole():
    X, Y = synth.generate(SPEC)
    X2, Y2 = synth.generate(SPEC)
    assert (X != X2).nnz == 0 and (Y != Y2).nnz == 0
    Xs, Ys = synth.generate(SPEC, 8000 - 8000 + 1000, 2500)      # a range crossing no block edge
    assert (Xs != X[1000:2500]).nnz == 0 and (Ys != Y[1000:2500]).nnz == 0
    big = dict(SPEC, rows=synth.BLOCK + 100)
    Xb, _ = synth.generate(big)
    Xr, _ = synth.generate(big, synth.BLOCK - 50, synth.BLOCK + 60)  # crosses a block edge
    assert (Xr != Xb[synth.BLOCK - 50:synth.BLOCK + 60]).nnz == 0


def test_other_seed_other_rows():
    X, _ = synth.generate(SPEC)
    X3, _ = synth.generate(dict(SPEC, seed=4))
    assert (X != X3).nnz > 0


def test_shape_norms_and_label_counts():
    X, Y = synth.generate(SPEC)
    assert X.shape == (3000, 5000) and Y.shape == (3000, 2000)
    np.testing.assert_allclose(np.asarray(X.multiply(X).sum(axis=1)).ravel(), 1.0, rtol=1e-5)
    per_row = np.diff(Y.indptr)
    assert per_row.min() >= 1 and per_row.max() <= 3
    assert 25 <= X.nnz / X.shape[0] <= 45          # about nnz=40 after de-duplication
    assert X.indices.dtype == np.int32 and X.indptr.dtype == np.int64


def test_label_frequencies_follow_a_power_law():
    _, Y = synth.generate(dict(SPEC, rows=20000))
    counts = np.sort(np.bincount(Y.indices, minlength=2000))[::-1].astype(float)
    # frequency ~ 1/rank: the top label is about 10x the 10th and 100x the 100th (sampling noise aside)
    assert 5 < counts[0] / counts[9] < 20
    assert 40 < counts[0] / counts[99] < 250


def test_examples_carry_their_labels_prototype_features():
    spec = synth.SynthSpec.from_options(SPEC)
    task = synth.SyntheticTask(spec)
    X, Y = synth.generate(spec)
    single = np.flatnonzero(np.diff(Y.indptr) == 1)[:50]
    for i in single:
        label = Y.indices[Y.indptr[i]]
        proto, _ = task.prototype(np.full(spec.proto_nnz, label), np.arange(spec.proto_nnz))
        feats = set(X.indices[X.indptr[i]:X.indptr[i + 1]].tolist())
        # (1 - noise) * nnz = 32 draws from this label's prototype, all distinct positions
        assert len(feats & set(proto.tolist())) >= 30


def test_bad_options_are_bolt_errors():
    with pytest.raises(BoltError, match="no option"):
        synth.SynthSpec.from_options({"rows": 1, "colour": 2})
    with pytest.raises(BoltError):
        synth.SynthSpec.from_options({"rows": 1, "noise": 1.5})
