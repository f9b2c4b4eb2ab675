"""Sparse gradient exchange and byte-range sharding: checked against dense sums and a whole-file read."""
from __future__ import annotations

import numpy as np
import pytest

from boltc.errors import DataError
from boltc.runtime.distributed.shard import read_shard, row_ranges, shard_ranges
from boltc.runtime.distributed.worker import grads_nbytes, split_by_owner, sum_parts
from boltc.runtime.exec.gradients import RowGrad


def _random_sparse_grad(rng, shape, touched):
    dense = np.zeros(shape, np.float32)
    rows = np.sort(rng.choice(shape[0], touched, replace=False)).astype(np.int32)
    dense[rows] = rng.standard_normal((touched,) + shape[1:]).astype(np.float32)
    return dense, rows


def _parts(rng, n):
    shapes = {("out", "W"): (50, 4), ("out", "b"): (50,), ("hid", "W"): (3, 5)}
    dense_parts, sparse_parts = [], []
    for _ in range(n):
        dW, rows = _random_sparse_grad(rng, shapes[("out", "W")], 7)
        db = np.zeros(50, np.float32)
        db[rows] = rng.standard_normal(7).astype(np.float32)
        dh = rng.standard_normal((3, 5)).astype(np.float32)
        dense_parts.append({("out", "W"): dW, ("out", "b"): db, ("hid", "W"): dh})
        sparse_parts.append({("out", "W"): RowGrad(rows, dW[rows]), ("out", "b"): RowGrad(rows, db[rows]),
                             ("hid", "W"): RowGrad(None, dh)})
    return shapes, dense_parts, sparse_parts


def test_sum_of_row_sparse_parts_equals_the_dense_sum_in_worker_order():
    shapes, dense_parts, sparse_parts = _parts(np.random.default_rng(0), 3)
    merged = sum_parts(sparse_parts)
    for key, shape in shapes.items():
        expect = (dense_parts[0][key] + dense_parts[1][key]) + dense_parts[2][key]      # worker order
        assert merged[key].to_dense(shape).tobytes() == expect.tobytes()
    # the union of touched rows is what is kept, never more
    union = np.unique(np.concatenate([p[("out", "W")].rows for p in sparse_parts]))
    np.testing.assert_array_equal(merged[("out", "W")].rows, union)
    assert grads_nbytes(sparse_parts[0]) == 7 * 4 * 4 + 7 * 4 + 7 * 4 + 7 * 4 + 15 * 4


def test_split_by_owner_gives_each_owner_its_row_range_and_loses_nothing():
    shapes, _, sparse_parts = _parts(np.random.default_rng(1), 1)
    grads = sparse_parts[0]
    for world in (1, 2, 3):
        cut = split_by_owner(grads, shapes, world)
        for key, shape in shapes.items():
            bounds = row_ranges(shape[0], world)
            if grads[key].rows is None:
                back = np.concatenate([cut[r][key].values for r in range(world)])
                assert back.tobytes() == grads[key].values.tobytes()
                continue
            for r, (lo, hi) in enumerate(bounds):
                rows = cut[r][key].rows
                assert rows.size == 0 or (rows.min() >= lo and rows.max() < hi)
            np.testing.assert_array_equal(np.concatenate([cut[r][key].rows for r in range(world)]), grads[key].rows)
            back = np.concatenate([cut[r][key].values for r in range(world)])
            assert back.tobytes() == grads[key].values.tobytes()


def test_sum_handles_empty_parts():
    a = {("l", "W"): RowGrad(np.array([1, 3], np.int32), np.array([[1.0], [2.0]], np.float32))}
    b = {("l", "W"): RowGrad(np.array([], np.int32), np.zeros((0, 1), np.float32))}
    m = sum_parts([a, b])
    np.testing.assert_array_equal(m[("l", "W")].rows, [1, 3])
    np.testing.assert_allclose(m[("l", "W")].values, [[1.0], [2.0]])


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
