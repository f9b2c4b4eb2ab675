"""The whole front half as one list of named stages: .bolt text -> parse -> passes -> plan.

    graph, plan = load_model_source("models/tiny.bolt")
"""
from __future__ import annotations

from pathlib import Path

import networkx as nx

from boltc import debug, ir
from boltc.errors import BoltError
from boltc.frontend import parse
from boltc.passes import execution_cost, run_pipeline
from boltc.passes.to_plan import to_plan


def _host_costs(measure: bool):
    # lazy: the host calibration loads the kernel library and the runtime, which a compile needs only
    # when a layer's sparse-or-dense choice can go either way (boltc/calibration.py)
    from boltc.calibration import host_costs
    return host_costs(measure)


execution_cost.install_cost_source(_host_costs)


def read_source(path_or_text) -> tuple[str, str]:
    """(text, file name) from a path or from .bolt text itself (anything holding a '{')."""
    if isinstance(path_or_text, str) and "{" in path_or_text:
        return path_or_text, "<string>"
    path = Path(path_or_text)
    try:
        return path.read_text(encoding="utf-8-sig"), str(path)   # -sig: a BOM is not a character
    except FileNotFoundError:
        raise BoltError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BoltError(f"cannot read {path}: {e}") from None


def load_model_source(path_or_text) -> tuple[nx.DiGraph, dict]:
    """Parse, run the passes and build the plan: (planned graph, plan)."""
    text, file = read_source(path_or_text)
    with debug.stage("parse + passes", part="compile", quiet=True):
        with debug.stage("parse"):
            graph = parse(text, file)
        debug.dump(2, "graph after parse", lambda: ir.format_graph(graph))
        graph = run_pipeline(graph)
        return graph, to_plan(graph)
