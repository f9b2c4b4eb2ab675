"""Helpers shared by the passes: located errors, finding a word on a source line, the output layer."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import networkx as nx

from boltc import ir
from boltc.errors import BoltErrorGroup, BoltValidationError, Location, source_line as line_of


def source_line(g: nx.DiGraph, line: int) -> str | None:
    return line_of(g.graph.get("source") or "", line)


def error(g: nx.DiGraph, message: str, loc: ir.Loc | None) -> BoltValidationError:
    file = g.graph.get("file") or "<string>"
    if loc is None or not loc.line:
        return BoltValidationError(message, Location(file, 0, 0))
    return BoltValidationError(message, Location(file, loc.line, loc.column), source_line(g, loc.line))


def raise_all(errors: list) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise BoltErrorGroup(errors)


def word_loc(g: nx.DiGraph, loc: ir.Loc, word: str) -> ir.Loc:
    """Where `word` appears as a whole word on loc's line at or after loc's column (else loc itself).

    Nodes keep one location (the statement's); an error about one argument points at that argument.
    """
    text = source_line(g, loc.line) if loc.line else None
    if text is None:
        return loc
    m = re.compile(r"(?<![A-Za-z0-9_])" + re.escape(word) + r"(?![A-Za-z0-9_])").search(text, max(loc.column, 1))
    return ir.Loc(loc.line, m.start() + 1) if m else loc


def model_loc(g: nx.DiGraph) -> ir.Loc:
    """The `model <name>` line, for errors about the model as a whole."""
    for i, text in enumerate((g.graph.get("source") or "").splitlines(), 1):
        m = re.match(r"\s*(model)\b", text)
        if m:
            return ir.Loc(i, m.start(1) + 1)
    return ir.Loc()


def output_name(g: nx.DiGraph) -> str | None:
    loss = g.graph.get("loss")
    return loss.output if loss is not None else None


def target_node(g: nx.DiGraph) -> ir.Node | None:
    for name in g.nodes:
        n = g.nodes[name].get("node")
        if n is not None and n.op == "target":
            return n
    return None


def xc_header(path: Path) -> tuple[int, int, int] | None:
    """(rows, features, labels) from an XC file's first line `N D L` (plain or gzip), else None.
    Reading one line is cheap enough to do at compile time, and it tells the passes the data's size."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            head = f.readline(4096).split()
    except (OSError, EOFError):
        return None
    if len(head) == 3 and all(x.isdigit() for x in head):
        return int(head[0]), int(head[1]), int(head[2])
    return None
