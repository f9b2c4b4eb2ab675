"""`boltc check model.bolt`: parse and validate; one line when valid, else every error found.

Mistakes in words and values (the builder) and in the graph (the validate pass) are reported
together; the later passes (shapes, memory) run only on a graph with neither.
"""
from __future__ import annotations

import sys

from boltc import debug, ir
from boltc.errors import BoltErrorGroup
from boltc.frontend import parse_collect
from boltc.passes import run_pipeline
from boltc.passes.validate import find_errors
from boltc.pipeline import read_source

HELP = "parse and validate a .bolt file; print every error with its location"


def add_arguments(p):
    p.add_argument("model", help="the .bolt file")


def check_source(text: str, file: str):
    """Return the planned graph; raise BoltError / BoltErrorGroup holding every error found."""
    with debug.stage("parse"):
        graph, errors = parse_collect(text, file)
    if not errors:
        debug.dump(2, "graph after parse", lambda: ir.format_graph(graph))
    errors = errors + find_errors(graph)
    if errors:
        raise errors[0] if len(errors) == 1 else BoltErrorGroup(_dedupe(errors))
    return run_pipeline(graph)


def _dedupe(errors):
    seen, out = set(), []
    for e in errors:
        key = (str(e.location), e.message)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def run(args) -> int:
    text, file = read_source(args.model)
    graph = check_source(text, file)
    layers = [n for n in ir.nodes(graph) if n.op in ir.LAYER_OPS]
    sparse = [n.name for n in layers if n.op == "fc" and n.attrs["sparsity"] < 1.0]
    extra = f", sparse: {', '.join(sparse)}" if sparse else ""
    print(f"{file}: ok: model {graph.graph['model']}, {len(layers)} layers{extra}", file=sys.stdout)
    return 0
