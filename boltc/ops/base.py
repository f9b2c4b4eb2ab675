"""What an op declares, and the typed contexts its rules receive.

An op is one module under boltc/ops/ holding everything the compiler and the runtime know about it:
its .bolt arguments and their checks, its shape rule, its parameter shapes (written once: planning,
memory, state init and saving read them), its plan entry, its interpreter forward/backward (the
specification), its lowering rule and its native runner. The module sets `OP = Op(...)`; boltc/ops/
__init__.py discovers the modules and builds the registries every layer reads, and
tests/test_ops_registry.py checks that every op declares every part.

Decision: an op module imports nothing of the other layers (numpy, scipy and boltc.errors only). What
a rule needs from a layer comes in through its argument: the front end hands `args` its binding kit,
the lowering hands `lower` the kernel-writing library in `LowerContext.lib`, the native executor hands
its runner itself (`ex.run`, `ex.state`). So the op modules sit under every layer, the IR and the plan
can read the registries without knowing LLVM, and no layer imports another one backwards.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

MODES = ("train", "dense", "sparse")      # a training step; dense or LSH-sparse inference
_M64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 chained): plain integer arithmetic, no SeedSequence
    (0.2 ms, half a batch-1 inference)."""
    h = 0
    for p in parts:
        h = splitmix64((h ^ (int(p) & _M64)) & _M64)
    return h >> 1


SPARSE_INFERENCE_SEED = 0x5EED


def step_seed(train_seed: int, step: int, mode: str) -> int:
    """The seed of one call: a function of (train seed, step, mode) only, so a resumed run draws what
    the uninterrupted one drew, both backends draw the same, and sparse inference is reproducible."""
    if mode == "sparse":
        return mix_seed(train_seed, SPARSE_INFERENCE_SEED)
    return mix_seed(train_seed, step, 0xF0 if mode != "train" else 0)


class Context:
    """The methods of a rule context; subclasses hold `mode`, `seed` and `step`."""
    mode: str
    seed: int
    step: int

    @property
    def training(self) -> bool:
        return self.mode == "train"

    def layer_seed(self, name: str) -> int:
        """This call's seed mixed with a layer's name, so layers do not draw the same stream."""
        return (self.seed ^ zlib.crc32(name.encode()) * 0x9E3779B97F4A7C15) & ((1 << 63) - 1)


@dataclass
class RunContext(Context):
    """What an interpreter rule may know about the call besides its layer, parameters and inputs (the
    native executor's Step carries the same three fields for the ops' runners)."""
    mode: str            # in MODES; only "train" is a training step
    seed: int            # step_seed(...): the only source of randomness a rule may use
    step: int            # optimizer steps taken before this call (state.step)


@dataclass
class LowerContext:
    """What a lowering rule knows about its layer's place in the plan."""
    plan: dict
    optimizer: str                  # "adam" or "sgd"
    loss: str
    is_output: bool
    input_sparse: bool              # the first input is a sparse model input (CSR batches)
    needs_dx: bool                  # the first input is a layer (its gradient is needed)
    in_activation: str | None       # the input's activation derivative this layer's dx kernel applies
    in_dims: list[int]
    update: Any = None              # the optimizer update spec of a weighted layer
    lib: Any = None                 # the kernel-writing library (boltc/lower/library.py)


@dataclass
class SplitContext:
    """What a split-kernel rule (data-parallel gradient / apply kernels) knows about its layer."""
    plan: dict
    input_sparse: bool              # the first input is a sparse model input (CSR batches)
    input_is_layer: bool            # the first input is a layer, not a model input
    lib: Any = None                 # the split-kernel library (boltc/lower/split.py)


@dataclass(frozen=True)
class Op:
    """One op of the language. Every field is required (tests/test_ops_registry.py)."""
    name: str
    order: int                                     # place in listings ("expected fc, embedding, ...")
    summary: str                                   # one line: what it computes
    # --- front end
    args: Callable                                 # (kit) -> tuple of kit.Param: arguments and checks
    reads: str                                     # what its inputs may be: "dense", "sparse" or "any"
    check: Callable                                # (attrs) -> [(message, word of the call to point at)]
    to_bolt: Callable                              # (inputs, attrs, kit) -> the call as .bolt text
    # --- passes and plan
    shape: Callable                                # (attrs, input widths) -> output width
    weighted_input: bool                           # records attrs["in_dim"] (a weight matrix reads it)
    params: Callable                               # (layer) -> {tensor: shape}: the one place they are written
    param_init: dict                               # tensor -> "normal" | "zeros" | "ones"
    plan_entry: Callable                           # (attrs, dim, input_sparse) -> its keys of the plan entry
    notes: Callable                                # (attrs, dim) -> text for `boltc compile --explain`
    # --- interpreter (the specification)
    forward: Callable                              # (layer, params, inputs, active, as_pairs, ctx) -> (value, cache)
    backward: Callable                             # (layer, params, cache, grad, wrt_pre, ctx) -> (input grads, param grads)
    # --- native backend
    lower: Callable                                # (km, layer, LowerContext) -> {role: kernel symbol}
    run_forward: Callable                          # (ex, layer, inputs, step) -> (value, cache)
    run_backward: Callable                         # (ex, layer, cache, grad, step) -> input grads
    # --- split kernels of data-parallel workers (boltc/lower/split.py)
    split_params: Callable                         # (layer) -> {trained tensor: row width}; {} if none
    split_row_sparse: Callable                     # (layer, tensor) -> a step touches only some of its rows
    lower_split: Callable                          # (km, layer, SplitContext) -> {role: kernel symbol}
    extra: dict = field(default_factory=dict)      # anything else an op wants to publish


def no_checks(attrs: dict) -> list:
    return []


def no_split_params(layer: dict) -> dict:
    """split_params of an op without trained tensors."""
    return {}


def no_row_sparse(layer: dict, tensor: str) -> bool:
    return False


def no_split_kernels(km, layer: dict, ctx: SplitContext) -> dict:
    """lower_split of an op without trained tensors: it has no gradient to hand out."""
    return {}


def plain_layer(n) -> dict:
    """An IR node seen as a plan layer entry (the keys `params` and `shape` read)."""
    return {**n.attrs, "name": n.name, "op": n.op, "inputs": list(n.inputs), "dim": n.dim}
