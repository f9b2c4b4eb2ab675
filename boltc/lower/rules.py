"""LOWERING_RULES: how each op of a plan becomes native kernels, and `lower_plan(plan)`.

A rule is an op's `lower(km, layer, ctx)` (boltc/ops/<op>.py): it adds the layer's kernels to the
module and returns the names it made (role -> kernel name); the op's native runner calls those roles.
Its typed context (boltc/ops/base.py LowerContext) says where the layer sits in the plan and hands it
the kernel-writing library (boltc/lower/library.py); the output layer's loss (fused with its softmax /
sigmoid), top-k and log-sum-exp kernels come from loss.py OUTPUT_RULES. `HOST` (an op the executor would run with its NumPy rule) is no longer used by
any op; it stays as the marker a new op can start with.

A plan lowers when every layer does and its shape is one the executor runs natively:
`native_support(plan)` is None, or the reason it is not (the executor then runs the whole plan on the
interpreter: same contract, only slower). Not lowered today: a sparse (LSH) fc reading a sparse input
directly (its in-major W has no contiguous neuron rows to gather), a hidden softmax.

Activation gradients: a gradient flows between layers as the gradient of a layer's *value*; the fc
that made the value turns it into the gradient of its pre-activation. Where an fc's value has exactly
one reader and that reader is an fc (every chain), the reader's input-gradient kernel applies the
activation derivative itself (`fused_input_activation`): one pass less, and the chain's kernels stay
what they were (a saved artifact's object code keeps its meaning).
"""
from __future__ import annotations

from boltc.lower import backward as bw, library
from boltc.lower.builder import KernelModule
from boltc.lower.loss import OUTPUT_RULES
from boltc.ops import OPS
from boltc.ops.base import LowerContext

HOST = "host"
SPARSE_INPUT_KINDS = ("sparse", "text", "categorical")



def is_sparse_layer(layer: dict) -> bool:
    return layer["op"] == "fc" and layer.get("active", layer["dim"]) < layer["dim"]


def reads_sparse_input(layer: dict, inputs: dict) -> bool:
    """Whether the layer's first input is a sparse model input (`inputs`: model input name -> spec)."""
    src = layer["inputs"][0]
    return src in inputs and inputs[src]["kind"] in SPARSE_INPUT_KINDS


def fused_input_activation(plan: dict, layer: dict) -> str | None:
    """The activation of `layer`'s input whose derivative `layer`'s input-gradient kernels apply, or
    None: when `layer` is an fc reading a dense fc's value that nothing else reads."""
    if layer["op"] != "fc" or len(layer["inputs"]) != 1:
        return None
    src = layer["inputs"][0]
    prod = next((l for l in plan["layers"] if l["name"] == src), None)
    if prod is None or prod["op"] != "fc" or is_sparse_layer(prod):
        return None
    readers = [l for l in plan["layers"] if src in l["inputs"]]
    return prod["activation"] if len(readers) == 1 else None


LOWERING_RULES = {name: op.lower for name, op in OPS.items()}     # each op's `lower` (boltc/ops/<op>.py)


def native_support(plan: dict) -> str | None:
    """None when the plan lowers completely to native kernels, else the reason it does not."""
    layers = plan["layers"]
    if not layers:
        return "the model has no layers"
    loss = plan.get("loss")
    if loss not in OUTPUT_RULES:
        return f"loss {loss!r} has no native lowering"
    if plan.get("output") != layers[-1]["name"]:
        return "the output is not the last layer"
    inputs = {i["name"]: i for i in plan["inputs"]}
    done = set()
    for layer in layers:
        name, op = layer["name"], layer["op"]
        rule = LOWERING_RULES.get(op)
        if rule is None or rule is HOST:
            return f"op {op!r} of layer {name!r} runs on the host"
        missing = [s for s in layer["inputs"] if s not in inputs and s not in done]
        if missing:
            return f"layer {name!r} reads {missing[0]!r} before it is computed"
        is_out = name == plan["output"]
        if op == "fc":
            sparse_in = reads_sparse_input(layer, inputs)
            if sparse_in != (layer.get("layout") == "in_major"):
                return f"layer {name!r}: layout {layer.get('layout')!r} with this input"
            if is_sparse_layer(layer) and sparse_in:
                return f"sparse layer {name!r} reads a sparse input directly"
            if not is_out and layer["activation"] == "softmax":
                return f"hidden layer {name!r} has a softmax activation"
        if is_out:
            want = OUTPUT_RULES[loss][0]
            if op != "fc" or layer.get("activation") != want:
                return f"{loss} needs an fc output with a {want} activation"
        done.add(name)
    return None


def lower_plan(plan: dict) -> tuple[KernelModule, dict[str, dict[str, str]]]:
    """One module with every kernel of the plan; returns it and layer -> role -> symbol."""
    reason = native_support(plan)
    if reason is not None:
        raise ValueError(reason)
    km = KernelModule(plan.get("model", "boltc"))
    inputs = {i["name"]: i for i in plan["inputs"]}
    dims = {i["name"]: i["dim"] for i in plan["inputs"]} | {l["name"]: l["dim"] for l in plan["layers"]}
    opt = plan.get("train", {}).get("optimizer", "adam")
    syms = {}
    for layer in plan["layers"]:
        src = layer["inputs"][0]
        weighted = OPS[layer["op"]].weighted_input
        ctx = LowerContext(plan=plan, optimizer=opt, loss=plan["loss"], is_output=layer["name"] == plan["output"],
                           input_sparse=reads_sparse_input(layer, inputs), needs_dx=src not in inputs,
                           in_activation=fused_input_activation(plan, layer),
                           in_dims=[dims[s] for s in layer["inputs"]],
                           update=bw.update_spec(plan, layer) if weighted else None, lib=library)
        syms[layer["name"]] = LOWERING_RULES[layer["op"]](km, layer, ctx)
    return km, syms
