"""Pass: choose_sparsity. Every fc gets a float sparsity (1.0 = dense); each automatic one is
recorded as a Choice with its reason.

Rule (BOLT's, DESIGN.md section 3): only the model's output layer is made sparse automatically, by
its width; hidden layers stay dense (they are narrow, and a sparse hidden layer's errors compound).
A layer with hash=none has no way to choose neurons, so auto makes it dense.

Then a sparse output layer (automatic or written) whose active set is a large share of its width runs
dense when that is estimated cheaper (boltc/passes/execution_cost.py); the Choice says both estimates.
Only the output: its dense form is the function evaluated anyway (dense inference is the default), so
training it dense gives the exact softmax gradient instead of the sampled one; a sparse hidden layer
computes another function than its dense form, so a written one is kept.
"""
from __future__ import annotations

import networkx as nx

from boltc import ir
from boltc.passes import bolt_rules
from boltc.passes.execution_cost import runs_dense
from boltc.passes.common import output_name


def choose_sparsity(g: nx.DiGraph) -> nx.DiGraph:
    h = ir.copy_graph(g)
    out = output_name(h)
    batch = int((h.graph.get("train") or {}).get("batch", 256))
    for n in ir.nodes(h):
        if n.op != "fc" or n.attrs.get("sparsity", "auto") != "auto":
            if n.name == out:
                _dense_if_cheaper(h, n, batch)
            continue
        if n.attrs.get("hash") == "none":
            value, reason = 1.0, "hash=none: no hash to choose active neurons, so the layer is dense"
        elif n.name != out:
            value, reason = 1.0, "hidden layer: BOLT makes only the output layer sparse"
        else:
            value = bolt_rules.bolt_sparsity(n.dim)
            if value == 1.0:
                reason = f"output width {n.dim} < 450: BOLT's table keeps it dense"
            else:
                bound = next((b for b, s in bolt_rules.SPARSITY_TABLE if s == value), None)
                span = f"width {n.dim} < {bound}" if bound else f"width {n.dim} >= 20000"
                reason = f"BOLT's table by output width ({span}): {value:g}"
        n = n.with_attrs(sparsity=value)
        ir.replace_node(h, n)
        h.graph["choices"].append(ir.Choice(n.name, "sparsity", value, reason))
        if n.name == out:
            _dense_if_cheaper(h, n, batch)
    return h


def _dense_if_cheaper(h: nx.DiGraph, n: ir.Node, batch: int) -> None:
    sparsity = n.attrs.get("sparsity", 1.0)
    if n.op != "fc" or not isinstance(sparsity, float) or sparsity >= 1.0 or not n.dim or not n.attrs.get("in_dim"):
        return
    if n.attrs.get("hash", "auto") != "auto":
        return                        # hash parameters written by hand: the user wants this LSH layer
    active = max(1, int(sparsity * n.dim))
    dense, reason = runs_dense(n.dim, int(n.attrs["in_dim"]), active, batch)
    if dense:
        ir.replace_node(h, n.with_attrs(sparsity=1.0))
    h.graph["choices"].append(ir.Choice(n.name, "execution", "dense" if dense else "sparse", reason))
