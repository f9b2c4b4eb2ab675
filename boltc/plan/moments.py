"""How Adam's moments are stored, per tensor: float32, or bfloat16 (uint16 storage). One rule, read by
the plan_memory pass (which writes the result into the plan), the runtime (ModelState, savefile,
runtime/exec/optim.py) and the native lowering (boltc/lower/backward.py). Plain Python: no graph, no numpy.

The option is `optimizer adam(moments=f32|bf16|auto)` (default auto); the resolved choice is written
into the plan as `train["moment_dtypes"] = {layer: {tensor: "f32"|"bf16"}}`, so a saved model keeps
the storage it was trained with even if this rule changes. A plan without that entry (hand-written,
or saved before the option existed) is resolved here from `train["moments"]`; a plan without either
was trained with float32 moments, so absent means f32.

bf16 semantics (both backends, bit for bit): a moment is a bfloat16 number. An update widens the
stored m and v exactly (bits << 16), computes the new moments in float32 as before, rounds them to
bfloat16 with round-to-nearest-even (NaN stays NaN, quietened; overflow rounds to inf) and stores
them; the weight step is computed from the rounded moments, so the state is a function of what is
stored (a resumed run repeats the uninterrupted one).

Decision, `auto`: bf16 for a tensor whose float32 moments (m + v, 8 bytes per weight) would exceed
AUTO_BF16_MIN_BYTES = 1 GiB, f32 otherwise. Why 1 GiB: at that size the saving (half, >= 0.5 GiB) is
what decides whether a model fits a machine (Amazon-670K's output layer: 1.28 GiB of f32 moments, the
4 GiB goal), and m and v are two thirds of the bytes lazy Adam reads and writes per touched row (W, m,
v), so bf16 also cuts that traffic by a third. Below the threshold the
saving is small against Python's own ~0.1 GiB and the libraries, while bf16 has a cost in principle:
with 8 significant bits, v's per-step decay by beta2 = 0.999 (0.1%) is below half an ulp, so a
moment that is not refreshed by large gradients keeps its value instead of decaying (step sizes then
err on the small side). Every shipped model except amazon670k stays below the threshold (the largest,
news20's hidden W, has exactly 256 MiB of moments), so their accuracy is unchanged.
"""
from __future__ import annotations

import math

from boltc.ops import OPS

MOMENT_KINDS = ("f32", "bf16", "auto")
MOMENT_BYTES = {"f32": 4, "bf16": 2}
AUTO_BF16_MIN_BYTES = 1 << 30       # f32 m + v of one tensor above this -> bf16 under `auto`


def choose(setting: str, optimizer: str, sizes: dict[str, dict[str, int]]) -> dict[str, dict[str, str]]:
    """{layer: {tensor: "f32"|"bf16"}} for the tensors in `sizes` ({layer: {tensor: elements}}).
    Only Adam's moments may be bf16 (SGD's momentum buffer stays float32)."""
    if setting not in MOMENT_KINDS:
        raise ValueError(f"moments must be one of {', '.join(MOMENT_KINDS)}, not {setting!r}")
    out = {}
    for layer, tensors in sizes.items():
        out[layer] = {}
        for tensor, n in tensors.items():
            if optimizer != "adam" or setting == "f32":
                kind = "f32"
            elif setting == "bf16":
                kind = "bf16"
            else:
                kind = "bf16" if 2 * MOMENT_BYTES["f32"] * n > AUTO_BF16_MIN_BYTES else "f32"
            out[layer][tensor] = kind
    return out


def plan_param_sizes(plan: dict) -> dict[str, dict[str, int]]:
    """{layer: {tensor: elements}} of a plan's trainable tensors (CONTRACTS.md section 4)."""
    sizes = {}
    for layer in plan.get("layers", []):
        op = OPS.get(layer["op"])
        shapes = op.params(layer) if op is not None else {}
        if shapes:
            sizes[layer["name"]] = {t: math.prod(s) for t, s in shapes.items()}
    return sizes


def moment_dtypes(plan: dict) -> dict[str, dict[str, str]]:
    """The plan's storage per tensor: its resolved `moment_dtypes`, else the rule applied to its
    `moments` setting (absent: f32); f32 for any optimizer but Adam. Tensors not listed (e.g.
    label_count, never updated) are f32."""
    train = plan.get("train") or {}
    optimizer = train.get("optimizer", "adam")
    resolved = train.get("moment_dtypes")
    if resolved is None or optimizer != "adam":       # (a plan switched to sgd keeps no bf16 buffers)
        return choose(train.get("moments", "f32"), optimizer, plan_param_sizes(plan))
    return {layer: dict(t) for layer, t in resolved.items()}


def moment_kind(dtypes: dict, layer: str, tensor: str) -> str:
    return (dtypes.get(layer) or {}).get(tensor, "f32")
