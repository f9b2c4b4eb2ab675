"""Sparse or dense: the estimated cost of one training example through an LSH-sparse fc, both ways.

Used by choose_sparsity: a sparse layer whose active set is a large share of its width runs dense when
that is estimated cheaper (issue: BOLT's table sparsifies by width only; bibtex's 159-wide output at
sparsity 0.5 spent more on hashing, gathering and per-neuron updates than a dense layer costs).

Units: multiply-adds per example, with the weight rows a sparse layer gathers counted GATHER times (a
gathered row is a random read bound by memory latency, docs/native.md "Sparse fc kernels", while the
dense layer's products are streaming sgemm calls, runtime/exec/blas.py) and the optimizer's update of
an entry as ADAM. Both are measured on the host once (boltc/calibration.py: the real generated kernels
timed, cached beside the compiled kernels), else fixed. Per example: forward, weight gradient and
input gradient (3 products), the update of every row the batch touches (a sparse layer with B * active
>= dim touches them all) and, on the sparse side, the LSH selection: the DWTA hash of BOLT's tables for
this sparsity (HASH per bin entry) and the bucket slots the lookup reads (PROBE each; the rest of the
active set is the random fill). The choice is made only for hash=auto (BOLT's DWTA parameters).
"""
from __future__ import annotations

from dataclasses import dataclass

from boltc.passes import bolt_rules as R
from boltc.plan import DEFAULT_RANDOM_SHARE

# the fixed estimate: gather and update as first set by hand; hashing and lookup as the host calibration
# measured them on the project's AMD EPYC (2026-12-07: 6.1-6.5 and 97-102, docs/results.md)
FIXED_GATHER, FIXED_ADAM, FIXED_HASH, FIXED_PROBE = 4.0, 12.0, 6.5, 100.0


@dataclass(frozen=True)
class CostModel:
    gather: float         # a multiply-add on a gathered (random) weight row, in dense multiply-adds
    adam: float           # the optimizer's update of one weight entry
    hash: float           # one DWTA bin entry hashed
    probe: float          # one bucket slot the lookup reads
    source: str           # where the numbers come from, for compile --explain


def fixed(reason: str) -> CostModel:
    return CostModel(FIXED_GATHER, FIXED_ADAM, FIXED_HASH, FIXED_PROBE, f"fixed estimate ({reason})")


def _no_calibration(measure: bool) -> CostModel:
    return fixed("no host calibration installed")


# measure -> CostModel. The passes cannot time kernels (they import no lowering or runtime): the driver
# installs the host calibration here (boltc/pipeline.py -> boltc/calibration.py host_costs).
_cost_source = _no_calibration


def install_cost_source(fn) -> None:
    global _cost_source
    _cost_source = fn

# below this share of the width a layer stays sparse whatever the estimate: BOLT's table never goes
# above 0.2, and small test-sized sparse layers (10 of 40) are estimated cheaper dense too, but a user
# who writes 25% asks for the sampled softmax; at 40% and more the sampling saves little
MIN_DENSE_SHARE = 0.4


def lsh_work(dim: int, active: int) -> tuple[int, int]:
    """(DWTA bin entries hashed, bucket slots the lookup reads) per example with BOLT's tables for the
    share. The lookup reads buckets until the training set's room (the share not left to random
    negatives) is full; a slot holds a neuron with probability dim / (buckets x reservoir) (bibtex's 159
    neurons in 512 x 4 slots a table: 8%), so it reads about room / that slots, at most every one."""
    s = active / dim
    hashes = R.dwta_hashes(s)
    bits = R.range_bits(hashes)
    tables, reservoir = R.tables(s, bits), R.reservoir(dim, bits)
    room = active - int(DEFAULT_RANDOM_SHARE * active)
    filled = min(1.0, dim / ((1 << bits) * reservoir))
    return tables * hashes * R.DEFAULT_BIN_SIZE, int(min(tables * reservoir, room / filled))


def per_example_cost(dim: int, in_dim: int, active: int, batch: int, costs: CostModel) -> tuple[float, float]:
    """(sparse, dense) estimated multiply-adds per training example."""
    touched = min(dim, batch * active)
    entries, taken = lsh_work(dim, active)
    sparse = (3 * active * in_dim * costs.gather + touched * in_dim * costs.adam / batch
              + entries * costs.hash + taken * costs.probe)
    dense = 3 * dim * in_dim + dim * in_dim * costs.adam / batch
    return sparse, dense


def runs_dense(dim: int, in_dim: int, active: int, batch: int) -> tuple[bool, str]:
    """Whether to run the layer dense, and the estimate in words (compile --explain shows it). Only a
    share where the choice can go either way measures the host (a first compile pays ~1 s, once)."""
    share = active / dim
    costs = _cost_source(share >= MIN_DENSE_SHARE)
    sparse, dense = per_example_cost(dim, in_dim, active, batch, costs)
    words = (f"active set {active} of {dim} ({100 * share:.0f}%), estimated cost per example: sparse "
             f"{sparse / 1e6:.2f}M, dense {dense / 1e6:.2f}M multiply-adds (in multiply-adds: a gathered one "
             f"{costs.gather:.2f}, an update {costs.adam:.1f}, a hashed entry {costs.hash:.2f}, a bucket slot read "
             f"{costs.probe:.0f}; {costs.source})")
    if share >= MIN_DENSE_SHARE and dense <= sparse:
        return True, "runs dense: " + words
    return False, "stays sparse: " + words
