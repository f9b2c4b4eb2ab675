"""The inversion kernels (boltc/lower/backward.py `invert`, `invert_range`) against NumPy's stable sort,
on the edge cases of their branch-free scans: no ids, every id distinct (uniq full to its last slot
while unused neurons follow), one id repeated, ids at the first and last neuron, a range nothing falls
in. Buffers are exactly the sizes the executor documents (uniq n, seg n + 1, pos n), so a write past
them shows up as a changed guard element."""
from __future__ import annotations

import numpy as np
import pytest

from boltc.lower import backward
from boltc.lower.builder import KernelModule
from boltc.lower.kernels import build
from boltc.ops.numeric import ptr

DIM = 64


@pytest.fixture(scope="module")
def lib():
    km = KernelModule("test_invert")
    backward.invert(km, "invert", DIM)
    backward.invert_range(km, "invert_range")
    return build(km)


def _spec(ids, lo, hi):
    keep = np.flatnonzero((ids >= lo) & (ids < hi))
    order = keep[np.argsort(ids[keep], kind="stable")]
    uniq, counts = np.unique(ids[order], return_counts=True)
    return uniq, np.concatenate([[0], np.cumsum(counts)]), order


def _guarded(n, dtype):
    buf = np.full(n + 1, -7, dtype)          # the last element guards the end of the buffer
    return buf


CASES = {"empty": [], "distinct": [5, 1, 9, 0, 33], "repeated": [7] * 6, "ends": [63, 0, 63, 0, 1],
         "dense": list(np.random.default_rng(1).integers(0, DIM, 300))}


@pytest.mark.parametrize("case", CASES)
def test_invert_equals_the_stable_sort(lib, case):
    ids = np.array(CASES[case], np.int32)
    n = ids.size
    counts, offs = np.zeros(DIM, np.int32), np.empty(DIM, np.int64)
    uniq, seg, pos, nu = _guarded(max(n, 1), np.int32), _guarded(n + 1, np.int64), _guarded(n, np.int32), np.zeros(1, np.int64)
    lib.symbol("invert")(ptr(ids), n, ptr(counts), ptr(offs), ptr(uniq), ptr(seg), ptr(pos), ptr(nu))
    want_u, want_seg, want_pos = _spec(ids, 0, DIM)
    k = int(nu[0])
    np.testing.assert_array_equal(uniq[:k], want_u)
    np.testing.assert_array_equal(seg[:k + 1], want_seg)
    np.testing.assert_array_equal(pos[:n], want_pos)
    assert uniq[max(n, 1)] == seg[n + 1] == pos[n] == -7 and not counts.any()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("lo,hi", [(0, DIM), (0, 1), (5, 40), (63, 64), (20, 20)])
def test_invert_range_equals_the_stable_sort_of_the_ids_in_range(lib, case, lo, hi):
    ids = np.array(CASES[case], np.int32)
    n, span = ids.size, hi - lo
    counts, offs = np.zeros(span + 1, np.int32), np.empty(span + 1, np.int64)
    m = min(span, n) + 1
    uniq, seg, pos, nu = _guarded(m, np.int32), _guarded(m, np.int64), _guarded(max(n, 1), np.int32), np.zeros(1, np.int64)
    lib.symbol("invert_range")(ptr(ids), n, lo, hi, ptr(counts), ptr(offs), ptr(uniq), ptr(seg), ptr(pos), ptr(nu))
    want_u, want_seg, want_pos = _spec(ids, lo, hi)
    k = int(nu[0])
    np.testing.assert_array_equal(uniq[:k], want_u)
    np.testing.assert_array_equal(seg[:k + 1], want_seg)
    np.testing.assert_array_equal(pos[:want_seg[-1]], want_pos)
    assert uniq[m] == seg[m] == pos[max(n, 1)] == -7 and not counts.any()
