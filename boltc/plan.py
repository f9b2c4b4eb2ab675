"""The plan: the planned graph as one JSON-able dict (docs/CONTRACTS.md section 3), the only thing the
runtime and the native lowering read. Data paths are made absolute against the .bolt file's folder.

    graph, plan = load_model_source("models/tiny.bolt")     # parse + passes + to_plan
"""
from __future__ import annotations

import os
from pathlib import Path

import networkx as nx

from boltc import debug, ir
from boltc.errors import BoltError
from boltc.frontend.blocks import TRAIN_DEFAULTS  # noqa: F401  (the defaults live with the train block)

PLAN_FORMAT = 1
SPARSE_KINDS = ("sparse", "text", "categorical")
TEXT_KEYS = ("column", "tokenizer", "char_k", "ngrams", "lowercase", "values", "seed", "normalize", "idf")
CATEGORICAL_KEYS = ("column", "seed", "normalize")
MEMORY_KEYS = ("weights", "optimizer", "gradients", "activations", "hash_tables", "total")
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
    from boltc.passes.common import xc_header
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
    entry = {"name": n.name, "op": n.op, "inputs": list(n.inputs)}
    a = n.attrs
    if n.op in ("fc", "embedding"):
        src = ir.node(g, n.inputs[0])
        sparse_in = src.op == "input" and src.attrs["kind"] in SPARSE_KINDS
        # a sparse input's row per feature is contiguous (in_major); every other fc reads a neuron's row
        layout = "in_major" if sparse_in or n.op == "embedding" else "out_major"
        entry.update(in_dim=a["in_dim"], dim=n.dim)
        if n.op == "fc":
            sparsity = float(a["sparsity"])
            entry.update(activation=a["activation"], bias=a.get("bias", True), input_sparse=sparse_in,
                         layout=layout, sparsity=sparsity, active=max(1, int(sparsity * n.dim)),
                         hash=dict(a["hash"]) if isinstance(a.get("hash"), dict) else None)
        else:
            entry.update(reduce=a.get("reduce", "sum"), input_sparse=sparse_in, layout=layout)
    elif n.op == "concat":
        entry["dim"] = n.dim
    elif n.op == "layernorm":
        entry.update(dim=n.dim, eps=a.get("eps", 1e-5))
    return entry


def to_plan(graph: nx.DiGraph) -> dict:
    """The plan dict of a graph (planned, or parsed: then the passes run first)."""
    from boltc.passes import run_pipeline
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
    import json
    return json.dumps(plan, indent=2)


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
    from boltc.frontend import parse
    from boltc.passes import run_pipeline
    text, file = read_source(path_or_text)
    with debug.stage("parse + passes", part="compile", quiet=True):
        with debug.stage("parse"):
            graph = parse(text, file)
        debug.dump(2, "graph after parse", lambda: ir.format_graph(graph))
        graph = run_pipeline(graph)
        return graph, to_plan(graph)
