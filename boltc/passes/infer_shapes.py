"""Pass: infer_shapes. Every node's output width from a per-op rule table (SHAPE_RULES), the input
width of each weighted layer (attrs["in_dim"]), and the checks that need widths: the loss output is as
wide as the target has classes, and a synthetic data source matches the model's input and target.
"""
from __future__ import annotations

from pathlib import Path

import networkx as nx

from boltc import ir
from boltc.ops import OPS
from boltc.passes.common import error, raise_all, word_loc, xc_header


def _given(n: ir.Node, dims: dict) -> int:
    return n.attrs["dim"]


def _declared(op):
    return lambda n, dims: op.shape(n.attrs, [dims[i] for i in n.inputs])


SHAPE_RULES = {           # op -> (node, {input name: width}) -> output width; layer ops: boltc/ops/<op>.py
    "input": _given,
    "target": lambda n, dims: n.attrs["classes"],
    **{name: _declared(op) for name, op in OPS.items()},
}


def infer_shapes(g: nx.DiGraph) -> nx.DiGraph:
    h = ir.copy_graph(g)
    dims: dict[str, int] = {}
    for n in ir.nodes(h):
        dims[n.name] = SHAPE_RULES[n.op](n, dims)
        new = ir.replace(n, dim=dims[n.name])
        if n.op in OPS and OPS[n.op].weighted_input:
            new = new.with_attrs(in_dim=dims[n.inputs[0]])
        ir.replace_node(h, new)
    raise_all(_loss_width(h, dims) + _data_shapes(h))
    return h


def _loss_width(g, dims) -> list:
    loss = g.graph.get("loss")
    if loss is None:
        return []
    out, tgt = ir.node(g, loss.output), ir.node(g, loss.target)
    if dims[out.name] != dims[tgt.name]:
        what = "1 output (a binary target)" if tgt.attrs["kind"] == "binary" else f"{dims[tgt.name]} outputs"
        return [error(g, f"'{out.name}' has {dims[out.name]} outputs but '{tgt.name}' needs {what}",
                      word_loc(g, out.loc, str(out.attrs["dim"])))]
    return []


def _path(g, path: str) -> Path:
    p = Path(path).expanduser()
    file = g.graph.get("file") or "<string>"
    return p if p.is_absolute() or file.startswith("<") else Path(file).parent / p


def _data_shapes(g) -> list:
    errs = []
    inputs = [n for n in ir.nodes(g) if n.op == "input"]
    targets = [n for n in ir.nodes(g) if n.op == "target"]
    for split, src in (g.graph.get("data") or {}).items():
        if src is None:
            continue
        if src.kind == "synthetic":
            feats, labels = src.options.get("features"), src.options.get("labels")
            if len(inputs) != 1 or inputs[0].attrs["kind"] not in ("sparse", "dense"):
                kinds = ", ".join(f"{n.name} ({n.attrs['kind']})" for n in inputs)
                errs.append(error(g, f"synthetic(...) data feeds a model with exactly one sparse or dense input; "
                                     f"this one has {kinds}", src.loc))
                continue
            for n in inputs:
                if feats is not None and feats > n.dim:
                    errs.append(error(g, f"synthetic {split} data has {feats} features but input '{n.name}' "
                                         f"has {n.dim}", word_loc(g, src.loc, "features")))
            for t in targets:
                if labels is not None and t.attrs["kind"] != "binary" and labels > t.dim:
                    errs.append(error(g, f"synthetic {split} data has {labels} labels but target '{t.name}' "
                                         f"has {t.dim} classes", word_loc(g, src.loc, "labels")))
        elif src.format in ("xc", None) and (header := xc_header(_path(g, src.path))) is not None:
            # an XC file says its width in its first line: a mismatch is caught here, not mid-training
            _, feats, labels = header
            for n in inputs:
                if n.attrs["kind"] in ("sparse", "dense") and feats > n.dim:
                    errs.append(error(g, f"the {split} file has {feats} features but input '{n.name}' has {n.dim}",
                                      src.loc))
            for t in targets:
                if t.attrs["kind"] != "binary" and labels > t.dim:
                    errs.append(error(g, f"the {split} file has {labels} labels but target '{t.name}' has "
                                         f"{t.dim} classes", src.loc))
        if src.kind == "file" and src.format in ("xc", "svmlight"):
            for n in inputs:
                if n.attrs["kind"] in ("text", "categorical"):
                    errs.append(error(g, f"a {src.format} file has no columns for the {n.attrs['kind']} input "
                                         f"'{n.name}'; use a csv or tsv file", src.loc))
    return errs
