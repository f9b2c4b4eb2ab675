"""Sparse gradient exchange and byte-range sharding: checked against dense sums and a whole-file read."""
from __future__ import annotations

import numpy as np
import pytest

from boltc.errors import DataError
from boltc.runtime.distributed.exchange import RowGrad, combine, densify, grads_nbytes, sparse_from_dense
from boltc.runtime.distributed.shard import read_shard, row_ranges, shard_ranges


def _random_sparse_grad(rng, shape, touched):
    dense = np.zeros(shape, np.float32)
    rows = rng.choice(shape[0], touched, replace=False)
    dense[rows] = rng.standard_normal((touched,) + shape[1:]).astype(np.float32)
    return dense, rows


def test_combine_equals_weighted_dense_sum():
    rng = np.random.default_rng(0)
    shapes = {("out", "W"): (50, 4), ("out", "b"): (50,), ("hid", "W"): (3, 5)}
    counts = [3, 5, 2]
    dense_parts, sparse_parts = [], []
    for _ in counts:
        dW, rows = _random_sparse_grad(rng, shapes[("out", "W")], 7)
        db = np.zeros(50, np.float32)
        db[rows] = rng.standard_normal(7).astype(np.float32)
        dh = rng.standard_normal((3, 5)).astype(np.float32)
        dense_parts.append({("out", "W"): dW, ("out", "b"): db, ("hid", "W"): dh})
        sparse_parts.append({("out", "W"): sparse_from_dense(dW, rows), ("out", "b"): sparse_from_dense(db, rows),
                             ("hid", "W"): sparse_from_dense(dh, None)})
    merged = combine(sparse_parts, counts)
    for key, shape in shapes.items():
        expect = sum(p[key] * (n / sum(counts)) for p, n in zip(dense_parts, counts))
        np.testing.assert_allclose(merged[key].to_dense(shape), expect, rtol=1e-6, atol=1e-7)
    # the union of touched rows is what is sent back, never more
    union = np.unique(np.concatenate([p[("out", "W")].rows for p in sparse_parts]))
    np.testing.assert_array_equal(merged[("out", "W")].rows, union)
    # dense all-reduce of the same gradients gives the same numbers and costs the full tensor
    merged_dense = combine([densify(p, shapes) for p in sparse_parts], counts)
    for key, shape in shapes.items():
        np.testing.assert_allclose(merged_dense[key].values, merged[key].to_dense(shape), rtol=1e-6, atol=1e-7)
    assert grads_nbytes(sparse_parts[0]) == 7 * 4 * 4 + 7 * 4 + 7 * 4 + 7 * 4 + 15 * 4
    assert grads_nbytes(densify(sparse_parts[0], shapes)) == (200 + 50 + 15) * 4


def test_combine_is_order_stable_and_handles_empty():
    a = {("l", "W"): RowGrad(np.array([1, 3], np.int32), np.array([[1.0], [2.0]], np.float32))}
    b = {("l", "W"): RowGrad(np.array([], np.int32), np.zeros((0, 1), np.float32))}
    m = combine([a, b], [1, 1])
    np.testing.assert_array_equal(m[("l", "W")].rows, [1, 3])
    np.testing.assert_allclose(m[("l", "W")].values, [[0.5], [1.0]])


def _write_xc(path, rows, features=20, classes=6, seed=0, header=True):
    rng = np.random.default_rng(seed)
    lines, truth = [], []
    for _ in range(rows):
        labs = sorted(rng.choice(classes, rng.integers(0, 3), replace=False).tolist())
        feats = sorted(rng.choice(features, rng.integers(1, 5), replace=False).tolist())
        vals = [round(float(v), 3) for v in rng.random(len(feats))]
        truth.append((labs, feats, vals))
        lab = ",".join(map(str, labs))
        lines.append((lab if lab else "") + " " + " ".join(f"{f}:{v}" for f, v in zip(feats, vals)))
    text = (f"{rows} {features} {classes}\n" if header else "") + "\n".join(lines) + "\n"
    path.write_text(text)
    return truth


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_byte_range_shards_cover_every_row_once(tmp_path, n):
    path = tmp_path / "train.txt"
    truth = _write_xc(path, 41)
    ranges = shard_ranges(str(path), n)
    assert len(ranges) == n and ranges[-1][1] == path.stat().st_size
    got = []
    for start, end in ranges:
        X, Y = read_shard(str(path), start, end, "xc", 20, 6)
        for i in range(X.shape[0]):
            x = X[i]
            got.append((Y[i].indices.tolist(), x.indices.tolist(), np.round(x.data.astype(np.float64), 3).tolist()))
    assert got == [(l, f, v) for l, f, v in truth]


def test_shard_reads_only_its_range_and_reports_global_line(tmp_path):
    path = tmp_path / "bad.txt"
    _write_xc(path, 10)
    lines = path.read_text().splitlines()
    lines[8] = "1 3:x"                     # file line 9
    path.write_text("\n".join(lines) + "\n")
    ranges = shard_ranges(str(path), 2)
    read_shard(str(path), *ranges[0], "xc", 20, 6)   # the first half does not hold the bad row
    with pytest.raises(DataError) as err:
        read_shard(str(path), *ranges[1], "xc", 20, 6)
    assert err.value.location.line == 9


def test_gzip_is_refused_with_advice(tmp_path):
    with pytest.raises(DataError, match="decompress"):
        shard_ranges(str(tmp_path / "t.txt.gz"), 2)


def test_row_ranges():
    assert row_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
