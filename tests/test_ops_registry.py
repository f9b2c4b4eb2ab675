"""Every op is declared in one module under boltc/ops/ and declares every part; every layer's table is
built from those declarations and covers exactly the declared ops."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from boltc import ir
from boltc.frontend.build import LAYER_WORDS
from boltc.lower.rules import LOWERING_RULES
from boltc.ops import OPS
from boltc.ops.base import Op, RunContext
from boltc.passes.infer_shapes import SHAPE_RULES
from boltc.plan.moments import plan_param_sizes
from boltc.runtime.exec.native_ops import NATIVE_OPS
from boltc.runtime.exec.numpy_rules import NUMPY_RULES
from boltc.runtime.exec.state import init_params

CALLABLE_PARTS = ("args", "check", "to_bolt", "shape", "params", "plan_entry", "notes", "forward", "backward",
                  "lower", "run_forward", "run_backward", "split_params", "split_row_sparse", "lower_split")


def test_every_module_declares_one_op_with_every_part():
    assert set(OPS) >= {"fc", "embedding", "concat", "layernorm"}
    for name, op in OPS.items():
        assert isinstance(op, Op) and op.name == name
        for f in dataclasses.fields(Op):
            if f.name == "extra":
                continue
            assert getattr(op, f.name) is not None, f"{name} does not declare {f.name}"
        for part in CALLABLE_PARTS:
            assert callable(getattr(op, part)), f"{name}.{part} is not callable"
        assert op.reads in ("dense", "sparse", "any")
        assert set(op.param_init.values()) <= {"normal", "zeros", "ones"}
        assert op.forward.__module__ == op.lower.__module__ == op.run_forward.__module__ == f"boltc.ops.{name}", \
            f"{name}: its rules live in boltc/ops/{name}.py"
        # split-kernel rules: its own, or base.py's shared empty ones for an op that trains nothing
        homes = {f"boltc.ops.{name}"} if op.param_init else {f"boltc.ops.{name}", "boltc.ops.base"}
        for part in ("split_params", "split_row_sparse", "lower_split"):
            assert getattr(op, part).__module__ in homes, f"{name}.{part} lives outside boltc/ops/{name}.py"


def test_every_table_is_built_from_the_declarations():
    assert tuple(OPS) == ir.LAYER_OPS == LAYER_WORDS
    assert set(SHAPE_RULES) == set(OPS) | {"input", "target"}
    assert set(NUMPY_RULES) == set(OPS) == set(LOWERING_RULES) == set(NATIVE_OPS)
    for name, op in OPS.items():
        assert NUMPY_RULES[name].forward is op.forward and NUMPY_RULES[name].backward is op.backward
        assert LOWERING_RULES[name] is op.lower
        assert NATIVE_OPS[name] == (op.run_forward, op.run_backward)


@pytest.mark.parametrize("name", sorted(OPS))
def test_parameter_shapes_are_written_once(name):
    """Planning (sizes), state init and the interpreter's gradients agree on the declared shapes."""
    op = OPS[name]
    layer = {"name": "l", "op": name, "inputs": ["x"], "dim": 6, "in_dim": 5, "activation": "relu", "bias": True,
             "layout": "out_major", "sparsity": 1.0, "active": 6, "hash": None, "reduce": "sum", "eps": 1e-5,
             "rate": 0.5}
    shapes = op.params(layer)
    assert set(shapes) == set(op.param_init)
    params = init_params(layer, seed=3)
    assert {t: a.shape for t, a in params.items()} == {t: tuple(s) for t, s in shapes.items()}
    sizes = plan_param_sizes({"layers": [layer]})
    assert sizes.get("l", {}) == {t: int(np.prod(s)) for t, s in shapes.items()}


@pytest.mark.parametrize("name", sorted(OPS))
def test_split_rules_cover_exactly_the_trained_tensors(name):
    """The split kernels hand out and apply every trained tensor: split_params names exactly the declared
    parameters, each row width is the tensor's elements per first-dimension row, and lower_split makes
    one apply kernel per tensor (plus grad kernels only for ops that have trained tensors)."""
    from boltc.lower.builder import KernelModule
    from boltc.lower import split
    from boltc.ops.base import SplitContext

    op = OPS[name]
    for layout, active, in_sparse in (("out_major", 6, False), ("out_major", 3, False), ("in_major", 6, True)):
        if name == "embedding" and not in_sparse:
            continue
        layer = {"name": "l", "op": name, "inputs": ["h"], "dim": 6, "in_dim": 5, "activation": "relu",
                 "bias": True, "layout": layout, "sparsity": active / 6, "active": active, "hash": None,
                 "reduce": "sum", "eps": 1e-5, "rate": 0.5}
        widths = op.split_params(layer)
        assert split.param_widths(layer) == widths
        assert set(widths) == set(op.params(layer))
        for tensor, width in widths.items():
            shape = tuple(op.params(layer)[tensor])
            assert width == (int(np.prod(shape[1:])) if len(shape) > 1 else 1)
            assert isinstance(op.split_row_sparse(layer, tensor), bool)
            assert split.row_sparse(layer, tensor) == op.split_row_sparse(layer, tensor)
        plan = {"layers": [layer], "inputs": [], "train": {"optimizer": "adam"}}
        km = KernelModule("registry.split")
        syms = op.lower_split(km, layer, SplitContext(plan, input_sparse=in_sparse, input_is_layer=True, lib=split))
        assert {r for r in syms if r.startswith("apply_")} == {f"apply_{t}" for t in widths}
        # grad kernels hand out gradients, dx kernels the input gradient alone (factor mode), invert_range
        # a row owner's inversion of its own ids (row-sparse tensors only)
        assert all(r.startswith(("apply_", "grad", "dx_", "invert_range")) for r in syms)
        if "invert_range" in syms:
            assert any(op.split_row_sparse(layer, t) for t in widths)
        if not widths:
            assert syms == {}
    for kind, fns in op.extra.get("factor_kinds", {}).items():      # (merge, apply) per factor kind
        assert isinstance(kind, str) and len(fns) == 2 and all(callable(f) for f in fns)


def test_rule_context_is_typed_and_seeded():
    ctx = RunContext("train", seed=123, step=4)
    assert ctx.training and not RunContext("dense", 1, 0).training
    assert ctx.layer_seed("a") != ctx.layer_seed("b") and ctx.layer_seed("a") == RunContext("train", 123, 9).layer_seed("a")
