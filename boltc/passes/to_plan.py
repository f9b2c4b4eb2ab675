"""The last stage: a planned graph -> the plan dict (docs/CONTRACTS.md section 3; boltc/plan/ holds the
contract), the only thing the lowering and the runtime read. Data paths are made absolute against the
.bolt file's folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import networkx as nx

from boltc import debug, ir
from boltc.ops import OPS
from boltc.passes import run_pipeline
from boltc.passes.common import xc_header
from boltc.plan import CATEGORICAL_KEYS, MEMORY_KEYS, PLAN_FORMAT, SPARSE_KINDS, TEXT_KEYS, TRAIN_DEFAULTS

_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".svm": "svmlight", ".svmlight": "svmlight",
                   ".libsvm": "svmlight", ".xc": "xc"}


def is_planned(g: nx.DiGraph) -> bool:
    return bool(g.graph.get("memory"))


def guess_format(path: Path) -> str | None:
    """From the name (.csv, .tsv, .svm...), else an XC header line `rows features labels`; else None
    (the data loader sniffs the contents)."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    if suffixes and suffixes[-1].lower() in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffixes[-1].lower()]
    return "xc" if xc_header(path) is not None else None


def _data_entry(src: ir.DataSource, base: Path) -> dict:
    if src.kind == "synthetic":
        return {"kind": "synthetic", **src.options}
    path = Path(src.path).expanduser()
    if not path.is_absolute():
        path = base / path
    path = Path(os.path.normpath(path))
    return {"kind": "file", "path": str(path), "format": src.format or guess_format(path), **src.options}


def _layer_entry(g: nx.DiGraph, n: ir.Node) -> dict:
    src = ir.node(g, n.inputs[0])
    sparse_in = src.op == "input" and src.attrs["kind"] in SPARSE_KINDS
    return {"name": n.name, "op": n.op, "inputs": list(n.inputs), **OPS[n.op].plan_entry(n.attrs, n.dim, sparse_in)}


def to_plan(graph: nx.DiGraph) -> dict:
    """The plan dict of a graph (planned, or parsed: then the passes run first)."""
    g = graph if is_planned(graph) else run_pipeline(graph)
    file = g.graph.get("file") or "<string>"
    base = Path(file).resolve().parent if not file.startswith("<") else Path.cwd()
    nodes = ir.nodes(g)
    inputs = []
    for n in nodes:
        if n.op == "input":
            entry = {"name": n.name, "kind": n.attrs["kind"], "dim": n.dim}
            if n.attrs["kind"] == "text":
                entry.update({k: n.attrs[k] for k in TEXT_KEYS})
            elif n.attrs["kind"] == "categorical":
                entry.update({k: n.attrs[k] for k in CATEGORICAL_KEYS})
            elif n.attrs["kind"] == "sparse" and n.attrs.get("normalize", "none") != "none":
                entry["normalize"] = n.attrs["normalize"]      # absent = none (plans of older files)
            if n.attrs["kind"] == "sparse" and n.attrs.get("keep"):
                entry["keep"] = list(n.attrs["keep"])          # absent = every feature
            inputs.append(entry)
    t = next(n for n in nodes if n.op == "target")
    loss = g.graph["loss"]
    data = {split: _data_entry(src, base) for split, src in (g.graph.get("data") or {}).items() if src}
    memory = g.graph.get("memory") or {}
    plan = {
        "format": PLAN_FORMAT, "model": g.graph.get("model"),
        "inputs": inputs,
        "target": {"name": t.name, "kind": t.attrs["kind"], "classes": t.attrs["classes"],
                   "column": t.attrs.get("column"), **({"as_names": True} if t.attrs.get("as_names") else {})},
        "layers": [_layer_entry(g, n) for n in nodes if n.op in ir.LAYER_OPS],
        "output": loss.output, "loss": loss.kind, "metrics": [str(m) for m in g.graph.get("metrics", ())],
        "train": _plain(g.graph.get("train") or TRAIN_DEFAULTS),
        "data": data,
        "memory": {k: int(memory.get(k, 0)) for k in MEMORY_KEYS},
        "choices": [{"node": c.node, "key": c.key, "value": c.value, "reason": c.reason}
                    for c in g.graph.get("choices", [])],
        # values written `auto` that `boltc tune` searches; untuned, the plan holds their defaults
        "tunable": [{"where": list(t.where), "kind": t.kind, "default": t.default, "line": t.loc.line}
                    for t in g.graph.get("tunable", ())],
    }
    debug.dump(3, "plan", lambda: _json(plan))
    return plan


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _json(plan: dict) -> str:
    return json.dumps(plan, indent=2)
