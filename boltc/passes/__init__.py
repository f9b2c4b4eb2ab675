"""The planning passes, each one `Graph -> Graph` in its own module, run as one explicit list."""
from __future__ import annotations

import networkx as nx

from boltc import debug, ir
from boltc.passes.choose_hashing import choose_hashing
from boltc.passes.choose_sparsity import choose_sparsity
from boltc.passes.infer_shapes import SHAPE_RULES, infer_shapes  # noqa: F401
from boltc.passes.plan_memory import plan_memory
from boltc.passes.validate import validate

PIPELINE = [
    ("validate", validate),
    ("infer_shapes", infer_shapes),
    ("choose_sparsity", choose_sparsity),
    ("choose_hashing", choose_hashing),
    ("plan_memory", plan_memory),
]


def run_pipeline(graph: nx.DiGraph, until: str | None = None) -> nx.DiGraph:
    """Run the passes in order (up to and including `until`); BOLTC_DEBUG>=2 prints each result."""
    for name, fn in PIPELINE:
        with debug.stage(name):
            graph = fn(graph)
        debug.dump(2, f"graph after {name}", lambda: ir.format_graph(graph))
        if name == until:
            break
    return graph
