"""The wide output's input gradient computed by the row owners, in the pass that updates their rows.

One process fuses the LSH-sparse output's input gradient into its update: one pass over the touched
rows of W (`upd_active_dx`, boltc/ops/fc.py), the input gradient read from each row before it moves.
A worker that handed out its factors (active sets, logits' gradient, input rows) and computed its input
gradient itself read those rows twice, once for its own examples' input gradient and once as their
owner's update: 3.8 of a synth100k worker's 37 CPU ms per update. Here the owners compute it:
  1. a worker hands out the output's factors and, for the layer below (an fc reading the sparse input,
     whose activation derivative the output's input gradient applies), its batch rows, without dz;
  2. each owner runs the single-process fused kernel over its rows for the whole batch (every worker's
     examples): its rows' update, and its neurons' share of every example's input gradient, in
     OWNER_DX_CHUNKS fixed chunks of its id range (a buffer each, summed in order);
  3. the owners' shares meet (every owner gets every share: the whole batch's input gradient is a few
     hundred KB) and are summed in owner order; each owner applies the activation derivative and runs
     the sparse input's fused update on its rows with that dz, as before.
Per update that is one meeting more than workers that compute their own input gradient (factors in,
input-gradient shares, rows done) and a pass over W less.

The same arithmetic without owners (`local_dx`): workers that keep replicas on separate machines, and
the tests' oracle, compute their examples' input gradient themselves, per owner's id range and chunk,
and add the same terms in the same order: the same bits as the owners' (tested). Per example, a chunk
adds its neurons' terms in increasing id order (the blocked kernel and `rows_dx` both do), so only the
chunks' id bounds matter, not which examples share the batch.

Which plans: `deferrable(plan)` (two layers, the fused path of the output; boltc/ops/fc.py decides
the fused path by W's size, FUSED_DX_MIN_WEIGHT_BYTES). Other plans keep the two-meeting protocol.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from boltc.lower.rules import fused_input_activation, reads_sparse_input
from boltc.ops import fc as fc_op
from boltc.ops.numeric import act_grad, ptr
from boltc.ops.runners import owned_inversion, shifted

# The owners take the output's input gradient only for a W at least this large: their extra meeting
# per update (the shares) pays where the second pass over W it saves is long.
OWNER_DX_MIN_WEIGHT_BYTES = 64 << 20

# Fixed chunks of an owner's id range for its share of the input gradient: a buffer (batch x in_dim)
# each, summed in chunk order, so the result does not depend on the thread count (a worker has 1 or 2)
OWNER_DX_CHUNKS = 2


@dataclass(frozen=True)
class OwnerDx:
    output: str          # the LSH-sparse output layer
    source: str          # the fc below it, reading the sparse input
    activation: str      # the source's activation, whose derivative the output's input gradient applies


def deferrable(plan: dict, weight_bytes: int) -> OwnerDx | None:
    """The owners compute the output's input gradient when the plan is a sparse-input fc under an
    LSH-sparse output whose W (`weight_bytes`) takes one process's fused update + input gradient,
    and nothing else trains; else None."""
    layers = {l["name"]: l for l in plan["layers"]}
    out = layers.get(plan.get("output"))
    if out is None or out["op"] != "fc" or len(plan["layers"]) != 2 or len(out["inputs"]) != 1:
        return None
    src = layers.get(out["inputs"][0])
    inputs = {i["name"]: i for i in plan["inputs"]}
    if (src is None or src["op"] != "fc" or not reads_sparse_input(src, inputs)
            or out.get("active", out["dim"]) >= out["dim"] or out.get("layout") == "in_major"
            or weight_bytes <= max(fc_op.FUSED_DX_MIN_WEIGHT_BYTES, OWNER_DX_MIN_WEIGHT_BYTES)):
        return None
    act = fused_input_activation(plan, out)
    return OwnerDx(out["name"], src["name"], act) if act is not None else None


def id_chunks(lo: int, hi: int) -> list[int]:
    """The chunks' id bounds over an owner's rows [lo, hi)."""
    return [lo + (hi - lo) * c // OWNER_DX_CHUNKS for c in range(OWNER_DX_CHUNKS + 1)]


def sum_in_order(bufs) -> np.ndarray:
    out = np.array(bufs[0], np.float32)
    for b in bufs[1:]:
        out += b
    return out


def owner_update_dx(ex, layer: dict, f: dict, lo: int, hi: int, moments: dict, hyper, copy_out: bool):
    """The owner of rows [lo, hi) of the output: the fused update of its rows from the whole batch's
    factors `f` and its neurons' share of every example's input gradient, from W before the update.
    -> ({"W": (rows, new rows or None), "b": ...}, share (batch x in_dim))."""
    name, in_dim = layer["name"], layer["in_dim"]
    p = ex.state.params[name]
    W, b = p["W"], p.get("b")
    ids = np.ascontiguousarray(f["ids"], dtype=np.int32)
    g, x = np.ascontiguousarray(f["g"], np.float32), np.ascontiguousarray(f["x"], np.float32)
    B = ids.shape[0]
    uniq, seg, pos, nu = owned_inversion(ex, name, ids, lo, hi)
    cuts = np.searchsorted(uniq[:nu], id_chunks(lo, hi)).tolist()
    bounds = list(zip(cuts[:-1], cuts[1:]))
    cap = max(fc_op.BLOCKED_MIN_CAP, int(np.diff(seg[:nu + 1]).max(initial=0)))
    blk = fc_op._blocked_scratch(ex, name, B, cap, in_dim)
    bufs = ex.kernel_scratch.get(("owner_dx", name))
    if bufs is None or bufs.shape != (OWNER_DX_CHUNKS, B, in_dim):
        bufs = ex.kernel_scratch[("owner_dx", name)] = np.zeros((OWNER_DX_CHUNKS, B, in_dim), np.float32)
    else:
        bufs.fill(0.0)
    (mW, vW), (mb, vb) = moments["W"], moments.get("b", (None, None))
    args = (ptr(uniq), ptr(seg), ptr(pos), B, ptr(g), ptr(x), ptr(W), ptr(b), shifted(mW, lo), shifted(vW, lo),
            shifted(mb, lo), shifted(vb, lo), ptr(hyper), cap)
    per_chunk = [(ptr(s["scratch"]), ptr(bufs[c]), ptr(s["cnt"]), ptr(s["lb"]), ptr(s["lg"]), ptr(s["bn"]),
                  ptr(s["bg"])) for c, s in enumerate(blk[:OWNER_DX_CHUNKS])]
    fn = ex.k.fn(name, "upd_active_dx")
    if ex.worth_two_threads(nu * in_dim * (2 * ids.size / max(1, nu) + fc_op.ADAM_OPS)):
        ex.pool.run_chunks(fn, bounds, *args, per_chunk=per_chunk)
    else:
        for (u0, u1), extra in zip(bounds, per_chunk):
            if u1 > u0:
                fn(u0, u1, *args, *extra)
    rows = np.array(uniq[:nu])
    out = {"W": (rows, W[rows] if copy_out else None)}
    if b is not None:
        out["b"] = (rows, b[rows] if copy_out else None)
    return out, sum_in_order(bufs)


def local_dx(ex, layer: dict, f: dict, ranges: list[tuple[int, int]]) -> np.ndarray:
    """A worker's own examples' input gradient with the owners' arithmetic (owner ranges `ranges` of
    the output's rows, in owner order): per owner, per chunk, its neurons' terms (`rows_dx`, the
    split kernel) into a fresh buffer; chunks summed in order, then owners in order."""
    name, in_dim = layer["name"], layer["in_dim"]
    W = ex.state.params[name]["W"]
    ids = np.ascontiguousarray(f["ids"], dtype=np.int32)
    g = np.ascontiguousarray(f["g"], np.float32)
    B = ids.shape[0]
    uniq, seg, pos, nu = ex.invert(ids, layer["dim"], ex.k.fn(name, "invert"))
    fn = ex.split_kernels.fn(name, "dx_active")
    shares = []
    for lo, hi in ranges:
        cuts = np.searchsorted(uniq[:nu], id_chunks(lo, hi)).tolist()
        bufs = np.zeros((OWNER_DX_CHUNKS, B, in_dim), np.float32)
        for c, (u0, u1) in enumerate(zip(cuts[:-1], cuts[1:])):
            if u1 > u0:
                fn(u0, u1, ptr(uniq), ptr(seg), ptr(pos), ptr(g), ptr(W), ptr(bufs[c]))
        shares.append(sum_in_order(bufs))
    return sum_in_order(shares)


def with_dz(factors: dict, plan_dx: OwnerDx, dx: np.ndarray) -> dict:
    """The factors with the source layer's dz: the activation derivative at the output's input rows
    applied to the input gradient `dx` (rows in the factors' example order)."""
    out = dict(factors)
    out[plan_dx.source] = dict(factors[plan_dx.source],
                               dz=act_grad(plan_dx.activation, factors[plan_dx.output]["x"], dx))
    return out
