"""NATIVE_OPS: how the native executor runs each op's kernels (the runtime side of boltc/lower/rules.py),
keyed by op like NUMPY_RULES and built from the ops' runners (boltc/ops/<op>.py):
    run_forward(ex, layer, ins, step) -> (value, cache)
    run_backward(ex, layer, cache, g, step) -> input gradients (one per input; None for a leaf)

`ex` is the NativeExecutor (pool, kernels, state, scratch); `ins` the layer's input values (a CSR batch
for a sparse input, C-contiguous float32 arrays otherwise); `step` the per-call context (mode, active
sets, seeds, hyper-parameters, the inversions of sparse inputs shared by the layers reading them).
`g` is the gradient of the layer's value, except for (a) the output layer, which gets the gradient of
its logits from the fused loss kernel, and (b) an fc whose only reader applied its activation
derivative (rules.fused_input_activation), which gets its pre-activation gradient.

Every kernel writes only rows (or columns) its own slice owns, and gradients are summed in a fixed
order, so every result is the same for any thread count. Each layer's input gradient is computed from
its parameters before it updates them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from boltc.ops import OPS
from boltc.ops.base import Context
from boltc.ops.fc import (DENSE_BLAS_MIN_BATCH_BACKWARD, DENSE_BLAS_MIN_MACS,  # noqa: F401; (tuning knobs, here too)
                          DENSE_GEMM_MIN_WEIGHTS, N_CHUNKS, NEURON_MAJOR_MIN_BATCH, dense_blas)
from boltc.ops.runners import ADAM_OPS  # noqa: F401

# Handing a slice to the pool costs about 0.1 ms (a lock hand-off each way), more than a small kernel
# spends on its whole range: text_tiny.bolt (64 hidden units, batch 64) trained at 80k ex/s on 2 threads
# and 188k on 1. So a kernel takes a second thread only for at least this many multiply-adds (or bytes
# of a copy) per thread, estimated per item at each call (`run`'s `work`). Wide layers (the 670k
# chain) always split; results never depend on the split (every kernel is slice-independent).
MIN_WORK_PER_THREAD = 1 << 18


@dataclass
class Step(Context):
    """What one forward (and backward) call shares between layers: the rules' context (mode, seed,
    step: boltc/ops/base.py RunContext) and the executor's per-call state."""
    mode: str
    batch: object
    B: int
    active: dict | None = None
    seed: int = 0
    insert_missed: bool = False
    hyper: np.ndarray | None = None
    inversions: dict = field(default_factory=dict)     # sparse input name -> (uniq, seg, pos, n, prow)
    # gradient mode (executor.gradients, data-parallel workers): the backward runners store each
    # tensor's gradient here as (layer, tensor) -> (rows or None, values) instead of updating
    # (boltc/lower/split.py)
    grads: dict | None = None
    # factor mode (executor.gradients(factors=True)): layers that can hand out what their weight
    # gradient is made of store it here, layer -> {"kind": ..., arrays} (boltc/ops factor rules), and
    # compute only their input gradient; the other layers store gradients in `grads`
    factors: dict | None = None
    # factor mode, the wide output's input gradient left to its row owners (runtime/distributed/
    # owner_dx.py): (output, the layer below) or None
    defer_dx: tuple | None = None
    step: int = 0


def min_items(work: float) -> int:
    """Items per thread below which a kernel whose items cost `work` each stays on one thread."""
    return max(1, int(MIN_WORK_PER_THREAD // max(1.0, work)))


def run(ex, name: str, role: str, n: int, *args, work: float, **kw) -> None:
    """Layer `name`'s kernel `role` over n items, each about `work` multiply-adds (see MIN_WORK_PER_THREAD)."""
    ex.pool.run(ex.k.fn(name, role), n, *args, min_per_thread=min_items(work), **kw)


def worth_two_threads(total_work: float) -> bool:
    return total_work >= 2 * MIN_WORK_PER_THREAD


NATIVE_OPS = {name: (op.run_forward, op.run_backward) for name, op in OPS.items()}
