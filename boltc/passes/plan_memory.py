"""Pass: plan_memory. Bytes of every buffer the runtime will hold, grouped as the plan's "memory"
entry (weights, optimizer, gradients, activations, hash_tables, total), plus a per-buffer list for
`--explain`. A plan larger than the machine's memory (MemTotal in /proc/meminfo) is an error at the
layer with the largest buffer.

Decisions: gradients are one dense buffer per parameter (as BOLT: touched rows are written there,
then the lazy optimizer reads them); Adam keeps two moments, SGD with momentum one; activations per
batch are the value and its gradient (float32) for every layer's active neurons, plus int32 ids for
sparse layers. Input batches are not counted (they are the data loader's).
"""
from __future__ import annotations

import networkx as nx

from boltc import ir
from boltc.passes.bolt_rules import hash_table_bytes
from boltc.passes.common import error

F32 = 4


def param_shapes(n: ir.Node) -> dict[str, tuple[int, ...]]:
    """Trainable tensors of one layer (names as in docs/CONTRACTS.md section 4)."""
    if n.op == "fc":
        shapes = {"W": (n.attrs["in_dim"], n.dim)}
        if n.attrs.get("bias", True):
            shapes["b"] = (n.dim,)
        return shapes
    if n.op == "embedding":
        return {"W": (n.attrs["in_dim"], n.dim)}
    if n.op == "layernorm":
        return {"gamma": (n.dim,), "beta": (n.dim,)}
    return {}


def param_count(n: ir.Node) -> int:
    total = 0
    for shape in param_shapes(n).values():
        size = 1
        for d in shape:
            size *= d
        total += size
    return total


def machine_memory() -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo; None where unknown (not Linux)."""
    found = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    found[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return found.get("MemTotal"), found.get("MemAvailable")


def gib(b: int) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def plan_memory(g: nx.DiGraph) -> nx.DiGraph:
    h = ir.copy_graph(g)
    train = h.graph.get("train") or {}
    batch = train.get("batch", 256)
    moments = 2 if train.get("optimizer", "adam") == "adam" else (1 if train.get("momentum", 0.0) else 0)
    buffers = []     # (node, kind, label, bytes)
    for n in ir.nodes(h):
        if n.op not in ir.LAYER_OPS:
            continue
        for tensor, shape in param_shapes(n).items():
            size = F32
            for d in shape:
                size *= d
            buffers.append((n, "weights", f"{n.name}.{tensor}", size))
            buffers.append((n, "gradients", f"{n.name}.{tensor}.grad", size))
            if moments:
                buffers.append((n, "optimizer", f"{n.name}.{tensor}.adam_m_v" if moments == 2
                                else f"{n.name}.{tensor}.momentum", size * moments))
        sparsity = n.attrs.get("sparsity", 1.0) if n.op == "fc" else 1.0
        active = max(1, int(sparsity * n.dim))
        act = batch * active * F32 * 2 + (batch * active * 4 if sparsity < 1.0 else 0)
        buffers.append((n, "activations", f"{n.name}.activations (batch {batch} x {active})", act))
        if isinstance(n.attrs.get("hash"), dict):
            spec = n.attrs["hash"]
            buffers.append((n, "hash_tables", f"{n.name}.lsh ({spec['tables']} x 2^{spec['range_bits']} x "
                                              f"{spec['reservoir']})", hash_table_bytes(spec)))
    memory = {k: 0 for k in ("weights", "optimizer", "gradients", "activations", "hash_tables")}
    for _, kind, _, size in buffers:
        memory[kind] += size
    memory["total"] = sum(memory.values())
    memory["buffers"] = [{"node": n.name, "kind": kind, "name": label, "bytes": size}
                         for n, kind, label, size in buffers]
    total_mem, available = machine_memory()
    memory["machine_total"], memory["machine_available"] = total_mem, available
    h.graph["memory"] = memory
    if total_mem is not None and memory["total"] > total_mem:
        biggest = max(buffers, key=lambda b: b[3])
        raise error(h, f"the model needs {gib(memory['total'])} of memory but this machine has {gib(total_mem)} "
                       f"(largest buffer: {biggest[2]}, {gib(biggest[3])}); make the layer narrower or sparser",
                    biggest[0].loc)
    if available is not None and memory["total"] > available:
        h.graph["choices"].append(ir.Choice("model", "memory", gib(memory["total"]),
                                            f"warning: more than the {gib(available)} available right now"))
    return h
