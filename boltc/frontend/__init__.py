"""The front end: .bolt text -> syntax tree (lark) -> ir graph, and back to .bolt text.

    graph = boltc.frontend.parse(text, file="model.bolt")     # raises BoltSyntaxError / BoltErrorGroup
    text = boltc.frontend.format_source(graph)                # parse(text) gives an equal graph
"""
from __future__ import annotations

import networkx as nx

from boltc.errors import BoltError, BoltErrorGroup, BoltValidationError, Location, source_line
from boltc.frontend.build import Builder
from boltc.frontend.format import format_source, graphs_equal  # noqa: F401
from boltc.frontend.parser import parse_tree


def parse_collect(text: str, file: str = "<string>") -> tuple[nx.DiGraph, list[BoltError]]:
    """Parse and build, returning the (possibly partial) graph and every mistake found.

    A syntax error is raised (nothing can be built past it); mistakes in words, values and
    settings are returned so `boltc check` can add the validate pass's findings to them.
    """
    tree = parse_tree(text, file)
    builder = Builder(file, text)
    graph = builder.build(tree)
    errors = [BoltValidationError(p.message, Location(file, p.loc.line, p.loc.column),
                                  source_line(text, p.loc.line)) for p in builder.problems]
    return graph, errors


def parse(text: str, file: str = "<string>") -> nx.DiGraph:
    """.bolt text -> ir graph (before the passes). Raises BoltSyntaxError or BoltErrorGroup."""
    graph, errors = parse_collect(text, file)
    if errors:
        raise errors[0] if len(errors) == 1 else BoltErrorGroup(errors)
    return graph
