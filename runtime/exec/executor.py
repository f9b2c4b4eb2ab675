"""The Executor protocol (CONTRACTS.md section 6) and `make_executor`.

Both backends compute the same thing; the NumPy interpreter (`runtime/exec/interp.py`) is the specification
and the native one (`runtime/exec/native.py`, llvmlite kernels) must match it within a stated tolerance when
both are fed the same active sets (`active=` override).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from boltc.errors import BackendError
from boltc.runtime.exec.interp import NumpyExecutor


class Executor(Protocol):
    plan: dict
    state: object
    upkeep_seconds: float      # cumulative seconds spent on LSH table upkeep (rebuild/rehash/insert)

    def forward(self, batch, mode: str = "dense", active: dict | None = None) -> dict:
        """mode "train" (labels in the output's active set), "dense" (all neurons), "sparse" (LSH active
        sets, no labels). Returns name -> value for every input and layer."""

    def train_step(self, batch, lr: float, active: dict | None = None) -> np.ndarray:
        """Forward, backward, optimizer on touched rows; (B,) float32 per-example loss before the update."""

    def predict(self, batch, top_k: int, sparse: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) int32 ids and (B, k) float32 scores, descending."""

    def after_step(self, epoch: int, batch_index: int, batches_per_epoch: int) -> None:
        """Called by the trainer after every train_step: LSH table upkeep on schedule."""


def make_executor(plan: dict, state, backend: str = "numpy", threads: int = 0, kernels=None,
                  sharded_moments: bool = False) -> Executor:
    """`kernels`: prebuilt native kernels (from a compiled artifact's native/ members); native only.
    `sharded_moments`: the state holds no moments (a data-parallel worker keeps its share of them and
    trains with gradients() / apply_gradients(target=...)); train_step is then refused."""
    if backend == "numpy":
        return NumpyExecutor(plan, state, threads=threads)
    if backend == "native":
        # lazy, as an optional dependency: a platform where the native code generator cannot load
        # (no llvmlite build) still runs every model on the interpreter
        try:
            from boltc.runtime.exec.native import NativeExecutor  # optional: native backend (see above)
        except ImportError as e:
            raise BackendError(f"the native backend is not available ({e}); use backend='numpy'") from e
        return NativeExecutor(plan, state, threads=threads, kernels=kernels, sharded_moments=sharded_moments)
    raise BackendError(f"unknown backend {backend!r} (expected 'numpy' or 'native')")
