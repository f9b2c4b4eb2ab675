"""Pass: choose_hashing. Every sparse fc gets a complete hash spec (the plan's "hash" dict); dense
layers get hash "none". Values the user gave are kept; each missing one is filled by BOLT's rule and
recorded as a Choice with its reason.

DWTA (BOLT's default): K = clamp(round(log2(128/s)/3), 2, 8), range = K*log2(bin size 8) bits,
L = round(s * 2^range), reservoir = 4 * max(dim // 2^range, 1).
SRP (decision: same bucket count as the DWTA rule, one sign bit per bucket bit): K = range of the
DWTA rule, range_bits = K, L and reservoir as above.
"""
from __future__ import annotations

import math
from pathlib import Path

import networkx as nx

from boltc import ir
from boltc.passes import bolt_rules as R
from boltc.passes.common import xc_header
from boltc.plan import DEFAULT_NEGATIVES, DEFAULT_RANDOM_SHARE


def train_rows(g: nx.DiGraph) -> tuple[int | None, str]:
    """Rows of the training data if cheaply known: synthetic(rows=), or an XC file's header line."""
    src = (g.graph.get("data") or {}).get("train")
    if src is None:
        return None, "no training data named"
    if src.kind == "synthetic":
        return src.options.get("rows"), f"synthetic data of {src.options.get('rows')} rows"
    path = Path(src.path)
    if not path.is_absolute():
        path = Path(g.graph.get("file") or ".").parent / path
    header = xc_header(path)
    if header is not None:
        return header[0], f"{header[0]} rows (header of {path.name})"
    return None, "training rows unknown at compile time"


def _schedule(spec: dict, rows: int | None, rows_reason: str, choices: list, name: str) -> None:
    def fill(key, value, reason):
        if key not in spec:
            spec[key] = value
            choices.append(ir.Choice(name, f"hash.{key}", value, reason))
    fill("rehash_every", R.REHASH_EVERY, "BOLT: new hash functions every quarter epoch")
    large = rows is not None and rows >= R.LARGE_DATASET_ROWS
    fill("rebuild_every", R.REBUILD_EVERY_LARGE if large else R.REBUILD_EVERY_SMALL,
         f"BOLT: refill tables every {'1/100' if large else '1/20'} epoch ({rows_reason}; "
         f"1/100 from {R.LARGE_DATASET_ROWS} rows)")
    fill("freeze_after", R.FREEZE_AFTER, "BOLT: freeze tables after the first epoch, insert missed labels")


def hash_spec(n: ir.Node, given: dict | str, rows, rows_reason, choices: list, is_output: bool = False) -> dict:
    s, dim = n.attrs["sparsity"], n.dim
    spec = {"family": "dwta"} if given == "auto" else dict(given)
    fam = spec["family"]

    def fill(key, value, reason):
        if key not in spec:
            spec[key] = value
            choices.append(ir.Choice(n.name, f"hash.{key}", value, reason))
    if given == "auto":
        choices.append(ir.Choice(n.name, "hash.family", "dwta", "BOLT's default for neuron selection"))
    if fam == "dwta":
        fill("bin_size", R.DEFAULT_BIN_SIZE, "BOLT: DWTA bin size 8")
        per_hash = int(math.log2(spec["bin_size"]))
        if "hashes" not in spec and "range_bits" in spec:
            fill("hashes", max(1, spec["range_bits"] // per_hash), f"range {spec['range_bits']} bits / "
                 f"{per_hash} bits per hash")
        fill("hashes", R.dwta_hashes(s), f"BOLT: clamp(round(log2(128/{s:g})/3), 2, 8)")
        fill("range_bits", spec["hashes"] * per_hash, f"BOLT: {spec['hashes']} hashes x {per_hash} bits "
             f"(bin size {spec['bin_size']})")
    else:
        bits = R.range_bits(R.dwta_hashes(s))
        fill("hashes", bits, f"as many sign bits as the DWTA rule's range for sparsity {s:g}")
        spec["range_bits"] = spec["hashes"]        # SRP: one bucket bit per hash
    b = spec["range_bits"]
    fill("tables", R.tables(s, b), f"BOLT: round({s:g} x 2^{b})")
    fill("reservoir", R.reservoir(dim, b), f"BOLT: 4 x max({dim} // 2^{b}, 1)")
    if is_output:
        fill("random_share", DEFAULT_RANDOM_SHARE, "share of the training active set left to random negatives")
        fill("negatives", DEFAULT_NEGATIVES, "random negatives drawn in proportion to label frequency + 1: "
             "dense inference then agrees with sparse (runtime/lsh/index.py training_fill)")
    _schedule(spec, rows, rows_reason, choices, n.name)
    return spec


def choose_hashing(g: nx.DiGraph) -> nx.DiGraph:
    h = ir.copy_graph(g)
    rows, rows_reason = train_rows(h)
    for n in ir.nodes(h):
        if n.op != "fc":
            continue
        given = n.attrs.get("hash", "auto")
        if n.attrs["sparsity"] >= 1.0:
            if isinstance(given, dict):
                h.graph["choices"].append(ir.Choice(n.name, "hash", "none",
                                                    "the layer is dense, so the hash given is not used"))
            ir.replace_node(h, n.with_attrs(hash="none"))
            continue
        loss = h.graph.get("loss")
        spec = hash_spec(n, given, rows, rows_reason, h.graph["choices"],
                         is_output=loss is not None and loss.output == n.name)
        ir.replace_node(h, n.with_attrs(hash=spec))
        size = R.hash_table_bytes(spec)
        text = f"{size / 1e6:,.0f} MB" if size >= 10**7 else f"{size / 1e3:,.1f} kB"
        h.graph["choices"].append(ir.Choice(n.name, "hash.memory", text,
                                            f"{spec['tables']} x 2^{spec['range_bits']} x {spec['reservoir']} x 4 B"))
    return h
