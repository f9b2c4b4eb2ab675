"""LOWERING_RULES: how each op of a plan becomes native kernels, and `lower_plan(plan)`.

A rule takes (km, layer, ctx) and adds the layer's kernels to the module, returning the names it made
(role -> kernel name). `HOST` marks an op that the native executor runs with its NumPy rule: today
`embedding`, `concat` and `layernorm` (cheap, dense, off the hot path of the models we ship).

Natively lowered plans are chains of `fc` layers: a first layer over a sparse (in-major W) or dense
(out-major W) input, dense hidden layers, and an output layer with softmax + cross entropy, dense or
LSH-sparse. `native_support(plan)` says why a plan is not such a chain; the executor then runs the
interpreter for it (the contract is the same; only speed differs).
"""
from __future__ import annotations

from boltc.lower import backward as bw
from boltc.lower import fc as fwd
from boltc.lower import select as sel
from boltc.lower.builder import KernelModule

HOST = "host"
SPARSE_INPUT_KINDS = ("sparse", "text", "categorical")


def _sym(layer: dict, role: str) -> str:
    return f"{layer['name']}__{role}"


def lower_fc(km: KernelModule, layer: dict, ctx: dict) -> dict:
    opt = ctx.get("update") or ctx["optimizer"]     # bw.UpdateSpec: optimizer, moment storage, decay
    name, dim, in_dim = layer["name"], layer["dim"], layer["in_dim"]
    act, bias = layer["activation"], bool(layer.get("bias", True))
    out: dict[str, str] = {}
    if ctx["is_first"] and ctx["input_sparse"]:
        out["fwd"] = _sym(layer, "fwd")
        fwd.sparse_fc_fwd(km, out["fwd"], dim, act, bias)
        out["upd"] = _sym(layer, "upd")
        bw.rows_update_in_major(km, out["upd"], dim, opt)
        out["invert"] = _sym(layer, "invert")
        bw.invert(km, out["invert"], in_dim)
        if bias:
            out["bias_upd"] = _sym(layer, "bias_upd")
            bw.dense_update(km, out["bias_upd"], opt)
        return out
    is_out = ctx["is_output"]
    f_act = "linear" if is_out else act       # the output's softmax is fused with the loss
    out["fwd"] = _sym(layer, "fwd")
    fwd.dense_fc_fwd(km, out["fwd"], in_dim, dim, f_act, bias, gather=False)
    out["upd"] = _sym(layer, "upd")
    bw.rows_update_out_major(km, out["upd"], in_dim, dim, False, bias, opt)
    if not ctx["is_first"]:
        out["dx"] = _sym(layer, "dx")
        bw.input_grad(km, out["dx"], in_dim, dim, False, ctx["in_activation"])
    if is_out:
        out["ce_all"] = _sym(layer, "ce_all")
        fwd.softmax_ce(km, out["ce_all"], dim)
        k = layer["active"]
        if k < dim:
            out["fwd_active"] = _sym(layer, "fwd_active")
            fwd.dense_fc_fwd(km, out["fwd_active"], in_dim, k, "linear", bias, gather=True)
            out["ce"] = _sym(layer, "ce")
            fwd.softmax_ce(km, out["ce"], k)
            out["upd_active"] = _sym(layer, "upd_active")
            bw.rows_update_out_major(km, out["upd_active"], in_dim, k, True, bias, opt)
            out["upd_active_dx"] = _sym(layer, "upd_active_dx")
            bw.rows_update_out_major(km, out["upd_active_dx"], in_dim, k, True, bias, opt, fuse_dx=True)
            out["fwd_neuron"] = _sym(layer, "fwd_neuron")
            bw.fwd_by_neuron(km, out["fwd_neuron"], in_dim, k, bias)
            out["dx_active"] = _sym(layer, "dx_active")
            if not ctx["is_first"]:
                bw.input_grad(km, out["dx_active"], in_dim, k, True, ctx["in_activation"])
            out["invert"] = _sym(layer, "invert")
            bw.invert(km, out["invert"], dim)
            out["topk"] = _sym(layer, "topk")
            sel.topk(km, out["topk"], k, True)
            out["lse"] = _sym(layer, "lse")
            fwd.row_logsumexp(km, out["lse"], k)
        out["topk_all"] = _sym(layer, "topk_all")
        sel.topk(km, out["topk_all"], dim, False)
        out["lse_all"] = _sym(layer, "lse_all")
        fwd.row_logsumexp(km, out["lse_all"], dim)
        if layer.get("hash"):
            h = layer["hash"]
            out.update(sel.lower_hash(km, layer, h))
    return out


LOWERING_RULES = {
    "fc": lower_fc,
    "embedding": HOST,
    "concat": HOST,
    "layernorm": HOST,
}


def native_support(plan: dict) -> str | None:
    """None when the plan lowers completely to native kernels, else the reason it does not."""
    layers = plan["layers"]
    if not layers:
        return "the model has no layers"
    if plan.get("loss") != "cross_entropy":
        return f"loss {plan.get('loss')!r} is run by the interpreter"
    inputs = {i["name"]: i for i in plan["inputs"]}
    prev = None
    for i, layer in enumerate(layers):
        if LOWERING_RULES.get(layer["op"]) is HOST:
            return f"op {layer['op']!r} of layer {layer['name']!r} runs on the host"
        want = [prev["name"]] if prev else None
        if want is not None and list(layer["inputs"]) != want:
            return f"layer {layer['name']!r} is not a chain"
        if prev is None:
            if len(layer["inputs"]) != 1 or layer["inputs"][0] not in inputs:
                return f"first layer {layer['name']!r} does not read one model input"
            sparse = inputs[layer["inputs"][0]]["kind"] in SPARSE_INPUT_KINDS
            if sparse != (layer.get("layout") == "in_major"):
                return f"layer {layer['name']!r}: layout {layer.get('layout')!r} with this input"
        elif layer.get("layout", "out_major") != "out_major":
            return f"layer {layer['name']!r}: in-major layout after the first layer"
        is_out = i == len(layers) - 1
        if not is_out and layer.get("active", layer["dim"]) < layer["dim"]:
            return f"hidden layer {layer['name']!r} is sparse"
        if is_out and layer["activation"] != "softmax":
            return f"output activation {layer['activation']!r} is run by the interpreter"
        if is_out and prev is None and layer.get("active", layer["dim"]) < layer["dim"]:
            return "a sparse output directly over the input"
        if layer["op"] != "fc":
            return f"op {layer['op']!r}"
        prev = layer
    if plan.get("output") != layers[-1]["name"]:
        return "the output is not the last layer"
    return None


def lower_plan(plan: dict) -> tuple[KernelModule, dict[str, dict[str, str]]]:
    """One module with every kernel of the plan; returns it and layer -> role -> symbol."""
    reason = native_support(plan)
    if reason is not None:
        raise ValueError(reason)
    km = KernelModule(plan.get("model", "boltc"))
    inputs = {i["name"]: i for i in plan["inputs"]}
    opt = plan.get("train", {}).get("optimizer", "adam")
    layers = plan["layers"]
    syms = {}
    for i, layer in enumerate(layers):
        ctx = {"optimizer": opt, "update": bw.update_spec(plan, layer),
               "is_first": i == 0, "is_output": i == len(layers) - 1,
               "input_sparse": i == 0 and inputs[layer["inputs"][0]]["kind"] in SPARSE_INPUT_KINDS,
               "in_activation": layers[i - 1]["activation"] if i else None}
        syms[layer["name"]] = LOWERING_RULES[layer["op"]](km, layer, ctx)
    return km, syms
