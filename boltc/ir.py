"""The IR: a few plain-data classes and a networkx graph of them.

A `Node` is one named value of the model (an input, the target, or a layer's output); its id in the
graph is the name from the .bolt file. Edges run from a node's inputs to the node, in argument order
(edge attribute `index`). Model-level facts (loss, metrics, train and data blocks, source text) live in
`graph.graph`, a plain dict, under the keys listed in GRAPH_KEYS.

Passes never mutate a node: they build a new one with `dataclasses.replace` and return a new graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx

from boltc.ops import LAYER_OPS as _LAYER_OPS
from boltc.ops.fc import ACTIVATIONS as _ACTIVATIONS

# op names; the layer ops and everything about each are declared in boltc/ops/ (one module per op).
INPUT_OPS = ("input",)                 # attrs: kind in INPUT_KINDS, dim, plus featuriser attrs
TARGET_OPS = ("target",)               # attrs: kind in TARGET_KINDS, classes
LAYER_OPS = _LAYER_OPS
OPS = INPUT_OPS + TARGET_OPS + LAYER_OPS

INPUT_KINDS = ("sparse", "dense", "text", "categorical")
TARGET_KINDS = ("single", "multi", "binary")       # .bolt: label(n), multilabel(n), binary
ACTIVATIONS = _ACTIVATIONS
LOSSES = ("cross_entropy", "binary_cross_entropy")

GRAPH_KEYS = (
    "model",      # str: model name
    "file",       # str: path of the .bolt file (for error locations)
    "source",     # str: the .bolt text
    "loss",       # Loss
    "metrics",    # tuple[Metric, ...]
    "train",      # dict: the train block, resolved (see boltc/plan/contract.py TRAIN_DEFAULTS)
    "data",       # dict: {"train": DataSource|None, "test": DataSource|None, "validation": ...}
    "choices",    # list[Choice]: every automatic decision with its reason (filled by passes)
    "memory",     # dict: the memory plan (filled by plan_memory)
    "tunable",    # tuple[Tunable, ...]: the values written `auto` that `boltc tune` searches
)


@dataclass(frozen=True)
class Loc:
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class Tunable:
    """A value written `auto` that `boltc tune` searches (boltc/tune/space.py says over what). Untuned,
    the model uses `default`, which the builder has already put in its place. `where` names the place:
    ("layer", name, attr), ("input", name, attr) or ("train", key)."""
    where: tuple
    kind: str            # what it is: width, lr, batch, weight_decay, ngrams, text_dim, dropout
    default: Any
    loc: Loc = Loc()


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    loc: Loc = Loc()
    dim: int | None = None            # output width, set by the parser where literal, else by infer_shapes

    def with_attrs(self, **changes: Any) -> "Node":
        return replace(self, attrs={**self.attrs, **changes})


@dataclass(frozen=True)
class Loss:
    kind: str                 # in LOSSES
    output: str               # the scores node
    target: str               # the target node
    loc: Loc = Loc()


RANKING_METRICS = ("precision", "recall", "ndcg")     # written name@k
PLAIN_METRICS = ("accuracy", "macro_f1")              # written alone


@dataclass(frozen=True)
class Metric:
    kind: str                 # in RANKING_METRICS or PLAIN_METRICS
    k: int = 1                # @k; 1 for accuracy and macro_f1
    loc: Loc = Loc()

    def __str__(self) -> str:
        return self.kind if self.kind in PLAIN_METRICS else f"{self.kind}@{self.k}"


@dataclass(frozen=True)
class DataSource:
    kind: str                 # "file" or "synthetic"
    path: str | None = None   # for files, relative to the .bolt file's folder when not absolute
    format: str | None = None # "xc", "svmlight", "csv", "tsv"; None = guess from the name/contents
    options: dict[str, Any] = field(default_factory=dict)   # synthetic(...) args, csv options
    loc: Loc = Loc()


@dataclass(frozen=True)
class Choice:
    """One automatic decision, shown by `boltc compile --explain`."""
    node: str
    key: str
    value: Any
    reason: str


def new_graph(**graph_attrs: Any) -> nx.DiGraph:
    g = nx.DiGraph()
    g.graph.update({"choices": [], "memory": {}, "metrics": (), "train": {}, "data": {}})
    g.graph.update(graph_attrs)
    return g


def add_node(g: nx.DiGraph, node: Node) -> None:
    g.add_node(node.name, node=node)
    for i, src in enumerate(node.inputs):
        g.add_edge(src, node.name, index=i)


def node(g: nx.DiGraph, name: str) -> Node:
    return g.nodes[name]["node"]


def nodes(g: nx.DiGraph) -> list[Node]:
    """Nodes in a deterministic topological order (ties broken by name)."""
    return [g.nodes[n]["node"] for n in nx.lexicographical_topological_sort(g)]


def copy_graph(g: nx.DiGraph) -> nx.DiGraph:
    """A new graph sharing the (immutable) nodes; graph-level lists copied so a pass can append."""
    h = g.copy()
    h.graph = dict(g.graph)
    h.graph["choices"] = list(g.graph.get("choices", []))
    h.graph["memory"] = dict(g.graph.get("memory", {}))
    return h


def replace_node(g: nx.DiGraph, new: Node) -> None:
    g.nodes[new.name]["node"] = new


def format_graph(g: nx.DiGraph) -> str:
    """One line per node: `name = op(inputs, attrs) : dim`. Used by BOLTC_DEBUG and --explain."""
    lines = []
    for n in nodes(g):
        args = ", ".join(list(n.inputs) + [f"{k}={v}" for k, v in sorted(n.attrs.items())])
        dim = "?" if n.dim is None else str(n.dim)
        lines.append(f"{n.name} = {n.op}({args}) : {dim}")
    loss = g.graph.get("loss")
    if loss is not None:
        lines.append(f"loss {loss.kind}({loss.output}, {loss.target})")
    return "\n".join(lines)
