"""ir graph -> .bolt text (the formatter), and graph equality that ignores source locations.

`parse(format_source(g))` equals `g` for any graph the parser builds; that round trip is how the tests
check that the formatter and the parser agree on the whole language. A planned graph formats with its
automatic choices written out (sparsity=0.005, hash=dwta(...)), which is a valid, fully manual model.
"""
from __future__ import annotations

import dataclasses
import json

import networkx as nx

from boltc import ir
from boltc.plan import TRAIN_DEFAULTS
from boltc.frontend.blocks import OPTIONAL_TRAIN_KEYS, SGD_DEFAULT_LR
from boltc.frontend.build import CATEGORICAL_DEFAULT_DIM, HASH_KEYS, HASH_WORDS, TEXT_DEFAULT_DIM
from boltc.ops import OPS

_PLAN_TO_BOLT_HASH = {v: k for k, v in HASH_KEYS.items()}
_TARGET_WORDS = {"single": "label", "multi": "multilabel", "binary": "binary"}


def fmt_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    raise TypeError(f"cannot write {v!r} as a .bolt value")


def _call(name: str, args=(), kwargs=()) -> str:
    parts = list(args) + [f"{k}={v}" for k, v in kwargs]
    return f"{name}({', '.join(parts)})"


def _kw(d: dict, skip=("kind",), words=()) -> list[tuple[str, str]]:
    """Keyword arguments from a dict; keys in `words` are written as bare words, not strings."""
    return [(k, v if k in words else fmt_value(v)) for k, v in d.items() if k not in skip and v is not None]


def _input(n: ir.Node) -> str:
    a = n.attrs
    kind = a["kind"]
    if kind == "dense":
        return _call(kind, [str(a["dim"])])
    if kind == "sparse":
        kw = [("normalize", a["normalize"])] if a.get("normalize", "none") != "none" else []
        if a.get("keep"):
            kw.append(("keep", f"range({a['keep'][0]}, {a['keep'][1]})"))
        return _call(kind, [str(a["dim"])], kw)
    kw = []
    if a.get("column", n.name) != n.name:
        kw.append(("column", fmt_value(a["column"])))
    if kind == "text":
        if a.get("tokenizer", "words") != "words":
            kw.append(("tokenizer", f"chars({a['char_k']})"))
        for key, default in (("ngrams", 1), ("lowercase", True), ("dim", TEXT_DEFAULT_DIM)):
            if a.get(key, default) != default:
                kw.append((key, fmt_value(a[key])))
        if a.get("values", "counts") != "counts":
            kw.append(("values", a["values"]))
        if a.get("idf"):
            kw.append(("idf", "true"))
    elif a.get("dim", CATEGORICAL_DEFAULT_DIM) != CATEGORICAL_DEFAULT_DIM:
        kw.append(("dim", fmt_value(a["dim"])))
    if a.get("seed", 0) != 0:
        kw.append(("seed", fmt_value(a["seed"])))
    if a.get("normalize", "l2" if kind == "text" else "none") != ("l2" if kind == "text" else "none"):
        kw.append(("normalize", a["normalize"]))
    return _call(kind, [], kw)


def _target(n: ir.Node) -> str:
    a = n.attrs
    args = [] if a["kind"] == "binary" else [str(a["classes"])]
    kw = [("column", fmt_value(a["column"]))] if a.get("column") is not None else []
    if a.get("as_names"):
        kw.append(("as_names", "true"))
    return _call(_TARGET_WORDS[a["kind"]], args, kw)


def _hash(h) -> str:
    if isinstance(h, str):
        return h
    kw = [(_PLAN_TO_BOLT_HASH[k], v if k in HASH_WORDS else fmt_value(v)) for k, v in h.items()
          if k in _PLAN_TO_BOLT_HASH]
    if h["family"] == "srp":
        kw = [(k, v) for k, v in kw if k not in ("range", "bin_size")]   # srp: range == hashes
    return _call(h["family"], [], kw)


class _FormatKit:
    """What an op's `to_bolt(inputs, attrs, kit)` writes its call with."""
    call = staticmethod(_call)
    value = staticmethod(fmt_value)
    hash = staticmethod(_hash)


def _layer(n: ir.Node) -> str:
    return OPS[n.op].to_bolt(n.inputs, n.attrs, _FormatKit)


def _train_lines(t: dict) -> list[str]:
    d = TRAIN_DEFAULTS
    lines = []
    if t["optimizer"] == "adam":
        kw = [(k, fmt_value(t[k])) for k in ("lr", "beta1", "beta2", "eps", "weight_decay") if t[k] != d[k]]
        if t.get("moments", d["moments"]) != d["moments"]:
            kw.append(("moments", t["moments"]))         # a word (f32 / bf16), not a string
    else:
        kw = [(k, fmt_value(t[k])) for k, dv in (("lr", SGD_DEFAULT_LR), ("momentum", 0.0), ("weight_decay", 0.0))
              if t.get(k, dv) != dv]
    if t["optimizer"] != "adam" or kw:
        lines.append("optimizer " + (_call(t["optimizer"], [], kw) if kw else t["optimizer"]))
    for key, word in (("batch", "batch"), ("epochs", "epochs"), ("threads", "threads"), ("seed", "seed"),
                      ("checkpoint_every", "checkpoint"), ("holdout", "holdout")):
        if t.get(key, d[key]) != d[key]:
            lines.append(f"{word} {fmt_value(t[key])}")
    for key in ("schedule", "sampler"):
        if t[key] != d[key]:
            s = t[key]
            kw = _kw(s)          # every option as a keyword (step's `every` may be positional; this is clearer)
            lines.append(f"{key} " + (_call(s["kind"], [], kw) if kw else s["kind"]))
    if t["inference"] != d["inference"]:
        lines.append(f"inference {t['inference']}")
    for key in OPTIONAL_TRAIN_KEYS:
        if key == "blend" and key in t:
            lines.append("blend " + _call(t[key]["kind"], [], _kw(t[key])))
        elif key == "class_weights" and key in t:
            v = t[key]
            lines.append(f"class_weights {v if isinstance(v, str) else ', '.join(fmt_value(float(w)) for w in v)}")
        elif key in t:
            lines.append(f"{key} {fmt_value(t[key])}")
    if t.get("tune"):
        lines.append(_call("tune", [], _kw(t["tune"])))
    if t.get("distributed"):
        lines.append(_call("distributed", [], _kw(t["distributed"], words=("exchange",))))
    return lines


def _data_line(split: str, src: ir.DataSource) -> str:
    if src.kind == "synthetic":
        return f"{split} " + _call("synthetic", [], _kw(src.options, skip=()))
    if src.format is None and not src.options:
        return f"{split} {fmt_value(src.path)}"
    kw = ([("format", src.format)] if src.format else []) + _kw(src.options, skip=())
    return f"{split} " + _call("file", [fmt_value(src.path)], kw)


def format_source(g: nx.DiGraph) -> str:
    """The graph as .bolt text (inputs, target, layers in order, loss, metrics, train, data)."""
    out = [f"model {g.graph.get('model', 'model')} {{"]
    all_nodes = ir.nodes(g)
    for n in all_nodes:
        if n.op == "input":
            out.append(f"  input {n.name}: {_input(n)}")
    for n in all_nodes:
        if n.op == "target":
            out.append(f"  target {n.name}: {_target(n)}")
    out.append("")
    for n in all_nodes:
        if n.op in ir.LAYER_OPS:
            out.append(f"  {n.name} = {_layer(n)}")
    loss = g.graph.get("loss")
    if loss is not None or g.graph.get("metrics"):
        out.append("")
    if loss is not None:
        out.append(f"  loss {loss.kind}({loss.output}, {loss.target})")
    if g.graph.get("metrics"):
        out.append("  metrics " + ", ".join(str(m) for m in g.graph["metrics"]))
    train = _train_lines(g.graph.get("train") or dict(TRAIN_DEFAULTS))
    if train:
        out += ["", "  train {"] + [f"    {line}" for line in train] + ["  }"]
    data = g.graph.get("data") or {}
    data_lines = [_data_line(s, data[s]) for s in ("train", "test", "validation") if data.get(s)]
    if data_lines:
        out += ["", "  data {"] + [f"    {line}" for line in data_lines] + ["  }"]
    out.append("}")
    return "\n".join(out) + "\n"


def _strip(x):
    """Replace every `loc` field by Loc() so graphs from differently laid-out text compare equal."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        fields = {f.name: _strip(getattr(x, f.name)) for f in dataclasses.fields(x) if f.name != "loc"}
        if any(f.name == "loc" for f in dataclasses.fields(x)):
            fields["loc"] = ir.Loc()
        return type(x)(**fields)
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_strip(v) for v in x)
    return x


COMPARED_KEYS = ("model", "loss", "metrics", "train", "data", "choices")


def graph_summary(g: nx.DiGraph):
    """What defines a model: its nodes and edges plus the model-level facts, without locations."""
    nodes = {name: _strip(g.nodes[name].get("node")) for name in g.nodes}
    edges = {(u, v, d.get("index")) for u, v, d in g.edges(data=True)}
    facts = {k: _strip(g.graph.get(k)) for k in COMPARED_KEYS}
    return nodes, edges, facts


def graphs_equal(a: nx.DiGraph, b: nx.DiGraph) -> bool:
    return graph_summary(a) == graph_summary(b)
