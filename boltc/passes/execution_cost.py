"""Sparse or dense: the estimated cost of one training example through an LSH-sparse fc, both ways.

Used by choose_sparsity: a sparse layer whose active set is a large share of its width runs dense when
that is estimated cheaper (issue: BOLT's table sparsifies by width only; bibtex's 159-wide output at
sparsity 0.5 spent more on hashing, gathering and per-neuron updates than a dense layer costs).

Units: multiply-adds per example, with the weight rows a sparse layer gathers counted GATHER_COST times
(a gathered row is a random read bound by memory latency, docs/native.md "Sparse fc kernels", while
the dense layer's products are streaming sgemm calls, runtime/exec/blas.py) and the optimizer's update
of an entry as ADAM_COST (runtime/exec/native_ops.py ADAM_OPS). Hashing is left out of the sparse side,
which only favours sparse. Per example: forward, weight gradient and input gradient (3 products), and
the update of every row the batch touches (a sparse layer with B * active >= dim touches them all).
"""
from __future__ import annotations

GATHER_COST = 4.0
ADAM_COST = 12.0
# below this share of the width a layer stays sparse whatever the estimate: BOLT's table never goes
# above 0.2, and small test-sized sparse layers (10 of 40) are estimated cheaper dense too, but a user
# who writes 25% asks for the sampled softmax; at 40% and more the sampling saves little
MIN_DENSE_SHARE = 0.4


def per_example_cost(dim: int, in_dim: int, active: int, batch: int) -> tuple[float, float]:
    """(sparse, dense) estimated multiply-adds per training example."""
    touched = min(dim, batch * active)
    sparse = 3 * active * in_dim * GATHER_COST + touched * in_dim * ADAM_COST / batch
    dense = 3 * dim * in_dim + dim * in_dim * ADAM_COST / batch
    return sparse, dense


def runs_dense(dim: int, in_dim: int, active: int, batch: int) -> tuple[bool, str]:
    """Whether to run the layer dense, and the estimate in words (compile --explain shows it)."""
    sparse, dense = per_example_cost(dim, in_dim, active, batch)
    share = active / dim
    words = (f"active set {active} of {dim} ({100 * share:.0f}%), estimated cost per example: sparse "
             f"{sparse / 1e6:.2f}M, dense {dense / 1e6:.2f}M multiply-adds")
    if share >= MIN_DENSE_SHARE and dense <= sparse:
        return True, "runs dense: " + words
    return False, "stays sparse: " + words
