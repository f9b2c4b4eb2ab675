"""Pass: validate. Names, cycles, types, and that the loss fits the target, all reported at once.

A sparse input (sparse, text, categorical) is a CSR value that only fc and embedding can read: they
are the layers with an input-major weight layout built for it; everything else needs dense values.
"""
from __future__ import annotations

import difflib

import networkx as nx

from boltc import ir
from boltc.ops import OPS
from boltc.passes.common import error, model_loc, raise_all, word_loc

SPARSE_KINDS = ("sparse", "text", "categorical")
LOSS_FITS = {   # loss -> (target kinds, output activation)
    "cross_entropy": (("single", "multi"), "softmax"),
    # one-vs-rest on a multi-label target: each label its own sigmoid, as the linear one-vs-rest tools
    # (napkinXC OVR) that beat softmax on delicious do; a single-label target stays softmax's
    "binary_cross_entropy": (("binary", "multi"), "sigmoid"),
}


def _undefined(g, name: str, loc) -> object:
    """'x' is not defined, with the closest defined name when one is near (a typo)."""
    known = [n for n in g.nodes if g.nodes[n].get("node") is not None]
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return error(g, f"'{name}' is not defined{hint}", loc)


def _is_sparse_input(n: ir.Node | None) -> bool:
    return n is not None and n.op == "input" and n.attrs.get("kind") in SPARSE_KINDS


def find_errors(g: nx.DiGraph) -> list:
    errs = []
    get = lambda name: g.nodes[name].get("node") if name in g.nodes else None   # noqa: E731
    broken = {n for n in g.nodes if g.nodes[n].get("broken")}    # declared, but with a mistake reported
    defined = [get(n) for n in g.nodes if get(n) is not None]
    for n in defined:          # references to names that were never defined
        for src in n.inputs:
            if get(src) is None and src not in broken:
                errs.append(_undefined(g, src, word_loc(g, n.loc, src) if n.loc.line else n.loc))
    loss = g.graph.get("loss")
    mloc = model_loc(g)
    inputs = [n for n in defined if n.op == "input"]
    targets = [n for n in defined if n.op == "target"]
    if g.graph.get("incomplete"):
        pass                   # the parser's errors explain what is missing
    elif not inputs:
        errs.append(error(g, "the model has no input; add e.g. `input features: sparse(1000)`", mloc))
    if not targets and not g.graph.get("incomplete"):
        errs.append(error(g, "the model has no target; add e.g. `target labels: multilabel(100)`", mloc))
    if loss is None and not g.graph.get("incomplete"):
        errs.append(error(g, "the model has no loss; add e.g. `loss cross_entropy(scores, labels)`", mloc))
    try:
        cycle = nx.find_cycle(g)
        names = [u for u, _ in cycle] + [cycle[0][0]]
        first = get(cycle[0][1]) or get(cycle[0][0])
        errs.append(error(g, "layers form a cycle: " + " -> ".join(names), first.loc if first else mloc))
        return errs            # everything below walks the graph in order
    except nx.NetworkXNoCycle:
        pass
    for n in defined:
        errs += _type_errors(g, n, get)
    if loss is not None:
        loss_errs = _loss_errors(g, loss, get)
        errs += loss_errs
        # a typo'd name or a rejected layer is the real mistake, not the layers it leaves unused
        if not g.graph.get("incomplete") and not loss_errs and not any("is not defined" in e.message for e in errs):
            errs += _unused(g, loss.output, get)
    errs += _metric_errors(g, targets[0] if targets else None)
    return errs


def _type_errors(g, n: ir.Node, get) -> list:
    errs = []
    op = OPS.get(n.op)
    reads = op.reads if op is not None else "any"
    for src in n.inputs:
        s = get(src)
        if s is None:
            continue
        where = word_loc(g, n.loc, src)
        if s.op == "target":
            errs.append(error(g, f"'{src}' is the target; only the loss may read it", where))
        elif reads == "sparse" and not _is_sparse_input(s):
            errs.append(error(g, f"{n.op} needs a sparse input (sparse, text or categorical); '{src}' is "
                                 f"{'a dense input' if s.op == 'input' else 'a layer'}", where))
        elif reads == "dense" and _is_sparse_input(s):
            errs.append(error(g, f"{n.op} needs dense values; '{src}' is a {s.attrs['kind']} input: read it "
                                 "with fc or embedding first", where))
    if op is not None:
        for message, word in op.check(n.attrs):
            errs.append(error(g, message, word_loc(g, n.loc, word)))
    return errs


def _loss_errors(g, loss: ir.Loss, get) -> list:
    errs = []
    out, tgt = get(loss.output), get(loss.target)
    if out is None and loss.output not in g.nodes:
        errs.append(_undefined(g, loss.output, word_loc(g, loss.loc, loss.output)))
    if tgt is None and loss.target not in g.nodes:
        errs.append(_undefined(g, loss.target, word_loc(g, loss.loc, loss.target)))
    if out is None or tgt is None:
        return errs
    if tgt.op != "target":
        errs.append(error(g, f"the second argument of {loss.kind} must be the target; '{tgt.name}' is not",
                          word_loc(g, loss.loc, loss.target)))
    if out.op != "fc":
        errs.append(error(g, f"the loss needs the scores of an fc layer; '{out.name}' is "
                             f"{'an input' if out.op == 'input' else 'a ' + out.op}", word_loc(g, loss.loc, loss.output)))
        return errs
    kinds, activation = LOSS_FITS[loss.kind]
    if tgt.op == "target" and tgt.attrs["kind"] not in kinds:
        fits = {"binary": "binary_cross_entropy", "multi": "cross_entropy or binary_cross_entropy"}.get(
            tgt.attrs["kind"], "cross_entropy")
        errs.append(error(g, f"{loss.kind} does not fit a {tgt.attrs['kind']} target; use {fits}", loss.loc))
    if out.attrs.get("activation", activation) != activation:   # absent: already reported by the parser
        errs.append(error(g, f"{loss.kind} needs a {activation} output; '{out.name}' uses "
                             f"{out.attrs.get('activation')}", word_loc(g, out.loc, out.attrs.get("activation", ""))))
    if g.out_degree(out.name):
        after = sorted(g.successors(out.name))[0]
        errs.append(error(g, f"the loss output '{out.name}' cannot feed other layers ('{after}' reads it)",
                          word_loc(g, get(after).loc, out.name)))
    return errs


def _unused(g, output: str, get) -> list:
    if output not in g.nodes:
        return []
    used = nx.ancestors(g, output) | {output}
    errs = []
    for name in sorted(g.nodes):
        n = get(name)
        if n is not None and n.op != "target" and name not in used:
            errs.append(error(g, f"'{name}' is not used by the loss output '{output}'", n.loc))
    return errs


def _metric_errors(g, target: ir.Node | None) -> list:
    errs = []
    if target is None:
        return errs
    for m in g.graph.get("metrics", ()):
        if m.kind not in ir.PLAIN_METRICS and target.attrs["kind"] == "binary":
            errs.append(error(g, f"{m} needs a label or multilabel target; use accuracy or macro_f1 for "
                                 "binary", m.loc))
        elif m.kind == "macro_f1" and target.attrs["kind"] == "multi":
            errs.append(error(g, "macro_f1 needs a label(n) or binary target (one class per example); "
                                 f"'{target.name}' is multilabel", m.loc))
        elif m.k > target.attrs.get("classes", 1):
            errs.append(error(g, f"{m} asks for more than the {target.attrs['classes']} classes of "
                                 f"'{target.name}'", m.loc))
    return errs


def validate(g: nx.DiGraph) -> nx.DiGraph:
    """Raise every mistake found (BoltValidationError or BoltErrorGroup); return the graph unchanged."""
    raise_all(find_errors(g))
    return g
