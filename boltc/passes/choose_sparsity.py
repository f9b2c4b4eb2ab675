"""Pass: choose_sparsity. Every fc gets a float sparsity (1.0 = dense); each automatic one is
recorded as a Choice with its reason.

Rule (BOLT's, DESIGN.md section 3): only the model's output layer is made sparse automatically, by
its width; hidden layers stay dense (they are narrow, and a sparse hidden layer's errors compound).
A layer with hash=none has no way to choose neurons, so auto makes it dense.
"""
from __future__ import annotations

import networkx as nx

from boltc import ir
from boltc.passes import bolt_rules
from boltc.passes.common import output_name


def choose_sparsity(g: nx.DiGraph) -> nx.DiGraph:
    h = ir.copy_graph(g)
    out = output_name(h)
    for n in ir.nodes(h):
        if n.op != "fc" or n.attrs.get("sparsity", "auto") != "auto":
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
        ir.replace_node(h, n.with_attrs(sparsity=value))
        h.graph["choices"].append(ir.Choice(n.name, "sparsity", value, reason))
    return h
