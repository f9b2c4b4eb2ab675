"""`boltc inspect out.boltc`: the graph, shapes, parameter counts, memory, chosen sparsity and hashing,
and the training history of a saved model (also works on a .bolt file: then nothing is trained yet)."""
from __future__ import annotations

import json

import boltc
from boltc.runtime.train.trainer import format_record

HELP = "show a saved model: graph, shapes, parameters, memory, sparsity and hashing, training history"


def add_arguments(p) -> None:
    p.add_argument("model", help="saved model (.boltc) or .bolt file")
    p.add_argument("--json", action="store_true", help="JSON on stdout")


def _mib(n) -> str:
    return f"{n / 2**20:,.1f} MiB"


def training_curve(history: dict) -> list[str]:
    """How many epochs ran, why training stopped, and the validation curve of the watched metric
    (the kept epoch in brackets)."""
    epochs = history.get("epochs") or []
    es = history.get("early_stopping")
    metric = (es or {}).get("metric") or next(
        (k for k in (epochs[-1].get("validation") or epochs[-1].get("validation_sparse") or {})
         if k != "examples_per_s"), None)
    lines = [f"epochs trained: {len(epochs)}"]
    if es:
        why = (f"stopped early: no better validation {es['metric']} for {es['patience']} epochs" if es["stopped_early"]
               else "ran every epoch allowed")
        lines[0] += f" ({why}; weights of epoch {es['best_epoch']} kept)"
    tuned = history.get("tune")
    if tuned:
        (k, v), = tuned["validation"].items()
        lines.append(f"tuned by boltc tune: {tuned['trials']} trials in {tuned['search_s']:.0f}s of a "
                     f"{tuned['budget_s']:g}s budget; trial {tuned['best_trial']} chosen (validation {k} {v:.2f}); "
                     f"trained on {tuned['final_data'].split(':')[0]}")
    if metric:
        vals = []
        for e in epochs:
            v = (e.get("validation") or e.get("validation_sparse") or {}).get(metric)
            text = "-" if v is None else f"{v:.2f}"
            vals.append(f"[{text}]" if es and e["epoch"] == es["best_epoch"] else text)
        lines.append(f"validation {metric} by epoch: " + " ".join(vals))
    members = history.get("members") or []
    if members:
        lines.append(f"ensemble: {len(members) + 1} networks (outputs averaged); the others trained "
                     + ", ".join(str(len(m.get("epochs") or [])) for m in members) + " epochs")
        ev = history.get("ensemble_validation") or {}
        if metric and metric in ev:
            lines.append(f"validation {metric} of the ensemble: {ev[metric]:.2f}")
    return lines


def run(args) -> int:
    if str(args.model).endswith(".bolt"):
        model = boltc.compile(args.model, backend="numpy")
    else:
        model = boltc.load(args.model, backend="numpy")
    s = model.summary()
    if args.json:
        print(json.dumps(s, indent=1, default=float))
        return 0
    out = [f"model {s['model']}"]
    for i in s["inputs"]:
        out.append(f"  input  {i['name']}: {i['kind']}({i['dim']})")
    t = s["target"]
    out.append(f"  target {t['name']}: {t['kind']}({t['classes']})")
    out.append("")
    out.append(f"{'layer':<12}{'op':<10}{'inputs':<16}{'shape':<26}{'params':>14}  sparsity / hashing")
    for l in s["layers"]:
        shapes = ", ".join(f"{k}{tuple(v)}" for k, v in l["shapes"].items())
        h = l["hash"]
        if h:
            how = (f"{l['sparsity']:g} ({l['active']} of {l['dim']} active); {h['family']} "
                   f"K={h.get('hashes')} L={h.get('tables')} range=2^{h.get('range_bits')} reservoir={h.get('reservoir')}")
        else:
            how = "dense"
        out.append(f"{l['name']:<12}{l['op']:<10}{','.join(l['inputs']):<16}{shapes:<26}{l['parameters']:>14,}  {how}")
    out.append("")
    m = s["memory"]
    out.append(f"parameters {s['parameters']:,}; weights {_mib(m['weights_bytes'])}; "
               f"hash tables {_mib(m['hash_table_bytes'])}; planned training memory {_mib((m['planned'] or {}).get('total', 0))}")
    tr = s["train"] or {}
    out.append(f"train: {tr.get('optimizer')} lr={tr.get('lr')} batch={tr.get('batch')} epochs={tr.get('epochs')} "
               f"seed={tr.get('seed')} sampler={(tr.get('sampler') or {}).get('kind')}")
    epochs = (s["history"] or {}).get("epochs") or []
    if epochs:
        out.append("")
        out.append("history:")
        out.extend("  " + format_record(e) for e in epochs)
        out.extend(training_curve(s["history"]))
    else:
        out.append("history: not trained")
    print("\n".join(out))
    return 0
