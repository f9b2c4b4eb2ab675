"""`boltc inspect out.boltc`: the graph, shapes, parameter counts, memory, chosen sparsity and hashing,
and the training history of a saved model (also works on a .bolt file: then nothing is trained yet)."""
from __future__ import annotations

import json

HELP = "show a saved model: graph, shapes, parameters, memory, sparsity and hashing, training history"


def add_arguments(p) -> None:
    p.add_argument("model", help="saved model (.boltc) or .bolt file")
    p.add_argument("--json", action="store_true", help="JSON on stdout")


def _mib(n) -> str:
    return f"{n / 2**20:,.1f} MiB"


def run(args) -> int:
    import boltc
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
        from boltc.runtime.train.trainer import format_record
        out.extend("  " + format_record(e) for e in epochs)
    else:
        out.append("history: not trained")
    print("\n".join(out))
    return 0
