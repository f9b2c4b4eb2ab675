"""BOLT's published automatic choices (DESIGN.md section 3), kept in one place so both passes and the
tests quote the same numbers. These are the baseline; our own refinements must state their reason.
"""
from __future__ import annotations

import math

# (exclusive upper bound on the output width, sparsity)
SPARSITY_TABLE = ((450, 1.0), (900, 0.2), (1800, 0.1), (4000, 0.05), (10000, 0.02), (20000, 0.01))
WIDE_SPARSITY = 0.005
DEFAULT_BIN_SIZE = 8
REHASH_EVERY = 0.25          # new hash functions every quarter epoch
REBUILD_EVERY_LARGE = 0.01   # tables refilled every 1/100 epoch on datasets of 100k+ rows
REBUILD_EVERY_SMALL = 0.05   # ... else every 1/20 epoch
LARGE_DATASET_ROWS = 100_000
FREEZE_AFTER = 1             # tables frozen after the first epoch


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))     # not Python's round(): BOLT's C++ std::round rounds halves up


def bolt_sparsity(dim: int) -> float:
    for bound, s in SPARSITY_TABLE:
        if dim < bound:
            return s
    return WIDE_SPARSITY


def dwta_hashes(sparsity: float) -> int:
    return min(8, max(2, round_half_up(math.log2(128 / sparsity) / 3)))


def range_bits(hashes: int, bin_size: int = DEFAULT_BIN_SIZE) -> int:
    return hashes * int(math.log2(bin_size))


def tables(sparsity: float, bits: int) -> int:
    return max(1, round_half_up(sparsity * 2 ** bits))


def reservoir(dim: int, bits: int) -> int:
    return 4 * max(dim // 2 ** bits, 1)


def hash_table_bytes(h: dict) -> int:
    return h["tables"] * 2 ** h["range_bits"] * h["reservoir"] * 4
