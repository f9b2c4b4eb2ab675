"""`boltc compile model.bolt [--explain] [-o out.boltc]`: plan the model and print what was planned
(graph with shapes and parameter counts, memory per buffer and in total, every automatic choice with
its reason); with -o, lower it to native code through boltc.runtime.savefile.artifact.
"""
from __future__ import annotations

import sys

from boltc import debug, ir
from boltc.commands.check import check_source
from boltc.errors import BoltError
from boltc.frontend import format_source
from boltc.ops import OPS
from boltc.passes.choose_hashing import train_rows
from boltc.passes.plan_memory import param_count
from boltc.passes.to_plan import to_plan
from boltc.pipeline import read_source
from boltc.runtime.sampler.adaptive import resolve_spec

HELP = "plan a model, explain every automatic choice, and (with -o) emit native code"


def add_arguments(p):
    p.add_argument("model", help="the .bolt file")
    p.add_argument("--explain", action="store_true",
                   help="also print every memory buffer and the model with all choices written out")
    p.add_argument("-o", "--output", help="write a compiled artifact (.boltc) here")


def _size(b: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:,.2f} {unit}"
    return f"{b} B"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _notes(n) -> str:
    a = n.attrs
    if n.op == "input":
        extra = f" column={a['column']}" if "column" in a else ""
        return f"{a['kind']}{extra}"
    if n.op == "target":
        return {"single": "single label", "multi": "multi-label", "binary": "binary"}[a["kind"]]
    if n.op in OPS:
        return OPS[n.op].notes(a, n.dim)
    return ""


def _sampler_lines(graph, plan: dict) -> list[str]:
    """The training sampler's settings with the runtime's reasons (it resolves its own defaults)."""
    spec = plan["train"]["sampler"]
    if spec.get("kind") not in ("nw_sketch", "auto"):
        return []
    rows, _ = train_rows(graph)
    resolved = resolve_spec(spec, rows, plan["train"]["batch"])
    reasons = resolved.get("reasons", {})
    return ["", f"sampler {spec['kind']}" + ("" if rows else " (training rows unknown: bits and refresh decided at run time)")] + \
        _table([[key, str(resolved[key]), reasons.get(key, "")] for key in reasons if key != "kind"])


def explain(graph, plan: dict, full: bool) -> str:
    out = [f"model {graph.graph['model']} ({graph.graph.get('file')})", "", "graph:"]
    rows = [["name", "op", "inputs", "shape", "params", "notes"]]
    total_params = 0
    for n in ir.nodes(graph):
        count = param_count(n)
        total_params += count
        rows.append([n.name, n.op, ", ".join(n.inputs) or "-", f"(batch, {n.dim})", f"{count:,}" if count else "-",
                     _notes(n)])
    out += _table(rows)
    out += [f"  parameters: {total_params:,}", f"  loss: {plan['loss']}({plan['output']}, {plan['target']['name']})",
            f"  metrics: {', '.join(plan['metrics']) or '-'}", "", "memory:"]
    mem = graph.graph["memory"]
    if full:
        out += _table([["buffer", "kind", "bytes"]] +
                      [[b["name"], b["kind"], _size(b["bytes"])] for b in mem["buffers"]])
        out.append("")
    out += _table([[k, _size(mem[k])] for k in ("weights", "optimizer", "gradients", "activations", "hash_tables")])
    out.append(f"  total        {_size(mem['total'])}" + (
        f"  (machine: {_size(mem['machine_total'])}, available now: {_size(mem['machine_available'])})"
        if mem.get("machine_total") else ""))
    out += ["", "automatic choices:"]
    choices = graph.graph.get("choices", [])
    out += _table([[f"{c.node}.{c.key}", str(c.value), c.reason] for c in choices]) if choices else ["  (none)"]
    out += _sampler_lines(graph, plan)
    tunable = graph.graph.get("tunable", ())
    if tunable:
        out += ["", "values written auto (`boltc tune` searches them; untuned, each takes its default):"]
        out += _table([[".".join(map(str, t.where[1:])), str(t.default), f"line {t.loc.line}, {t.kind}"]
                       for t in tunable])
    if any(l.get("patience") for l in [plan.get("train") or {}]):
        t = plan["train"]
        out += ["", f"early stopping: at most {t['epochs']} epochs, stop after {t['patience']} without a better "
                    f"validation {(plan.get('metrics') or ['precision@1'])[0]}; validation data: the data block's, else "
                    f"{100 * t.get('holdout', 0):g}% of the training rows held out"]
    if full:
        out += ["", "the model with every choice written out:", ""]
        out += ["  " + line if line else "" for line in format_source(graph).splitlines()]
    return "\n".join(out)


def run(args) -> int:
    text, file = read_source(args.model)
    with debug.stage("parse + passes"):
        graph = check_source(text, file)
    plan = to_plan(graph)
    print(explain(graph, plan, args.explain))
    if not args.output:
        print("\n(planning only: give -o model.boltc to emit native code)")
        return 0
    try:
        # optional, as in make_executor: the plan above is complete without a native code generator
        from boltc.runtime.savefile.artifact import write_artifact  # optional: native backend
    except ImportError as e:
        raise BoltError(f"native lowering is not available in this build ({e}); the plan above is complete") from None
    with debug.stage("lower + codegen"):
        write_artifact(graph, plan, args.output)
    print(f"\nwrote {args.output}", file=sys.stdout)
    return 0
