"""Pass: plan_memory. Bytes of every buffer the runtime will hold, grouped as the plan's "memory"
entry (weights, optimizer, gradients, activations, hash_tables, total), plus a per-buffer list for
`--explain`. A plan larger than the machine's memory (MemTotal in /proc/meminfo) is an error at the
layer with the largest buffer.

Decisions:
- The estimate is for the native backend (the default). It holds no gradient buffer: each touched
  row's gradient is summed in a per-thread scratch row (one row wide) and applied at once, fused with
  the optimizer (boltc/lower/backward.py), so "gradients" is 0. The NumPy interpreter instead holds
  each batch's gradient blocks of the touched rows (transient, up to the size of the weights, fewer
  rows for an LSH-sparse layer); that bound is reported apart as memory["numpy_gradients"] and in a
  choice line, not added to the total.
- Adam keeps two moments per weight, float32 or bfloat16 per tensor as `adam(moments=...)` says
  (boltc/plan/moments.py: the rule, and why `auto` picks bf16 only above 1 GiB of f32 moments);
  the resolved storage is written into the plan as train["moment_dtypes"]. SGD with momentum keeps
  one float32 buffer.
- Activations per batch are the value and its gradient (float32) for every layer's active neurons,
  plus int32 ids for sparse layers. Input batches are not counted (they are the data loader's).
"""
from __future__ import annotations

import math

import networkx as nx

from boltc import ir
from boltc.ops import OPS
from boltc.ops.base import plain_layer
from boltc.passes.bolt_rules import hash_table_bytes
from boltc.passes.common import error
from boltc.plan.moments import MOMENT_BYTES, choose

F32 = 4


def param_shapes(n: ir.Node) -> dict[str, tuple[int, ...]]:
    """Trainable tensors of one layer (names as in docs/CONTRACTS.md section 4)."""
    op = OPS.get(n.op)
    return dict(op.params(plain_layer(n))) if op is not None else {}


def param_count(n: ir.Node) -> int:
    return sum(math.prod(shape) for shape in param_shapes(n).values())


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


def _numpy_gradient_elements(n: ir.Node, shape: tuple[int, ...], batch: int) -> int:
    """Elements of the interpreter's gradient block for one tensor and batch: every row, except for an
    LSH-sparse fc, whose block holds at most batch x active neuron rows."""
    size = math.prod(shape)
    sparsity = n.attrs.get("sparsity", 1.0) if n.op == "fc" else 1.0
    if sparsity < 1.0:
        touched = min(n.dim, batch * max(1, int(sparsity * n.dim)))
        size = size // n.dim * touched
    return size


def plan_memory(g: nx.DiGraph) -> nx.DiGraph:
    h = ir.copy_graph(g)
    train = h.graph.get("train") or {}
    batch = train.get("batch", 256)
    optimizer = train.get("optimizer", "adam")
    layers = [n for n in ir.nodes(h) if n.op in ir.LAYER_OPS]
    setting = train.get("moments", "auto")
    dtypes = choose(setting, optimizer, {n.name: {t: math.prod(s) for t, s in param_shapes(n).items()}
                                         for n in layers if param_shapes(n)})
    if train:
        h.graph["train"] = {**train, "moment_dtypes": dtypes}
    momentum = optimizer == "sgd" and train.get("momentum", 0.0)
    buffers = []     # (node, kind, label, bytes)
    numpy_gradients = 0
    for n in layers:
        for tensor, shape in param_shapes(n).items():
            size = math.prod(shape)
            buffers.append((n, "weights", f"{n.name}.{tensor}", size * F32))
            numpy_gradients += _numpy_gradient_elements(n, shape, batch) * F32
            if optimizer == "adam":
                kind = dtypes[n.name][tensor]
                label = f"{n.name}.{tensor}.adam_m_v" + (" (bf16)" if kind == "bf16" else "")
                buffers.append((n, "optimizer", label, 2 * size * MOMENT_BYTES[kind]))
                if kind == "bf16" and setting == "auto":
                    h.graph["choices"].append(ir.Choice(
                        n.name, f"moments.{tensor}", "bf16",
                        f"f32 Adam moments would take {gib(8 * size)} (> 1 GiB): stored as bfloat16, "
                        f"{gib(4 * size)} (round-to-nearest-even)"))
            elif momentum:
                buffers.append((n, "optimizer", f"{n.name}.{tensor}.momentum", size * F32))
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
    memory["backend"] = "native"
    memory["numpy_gradients"] = numpy_gradients
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
    if layers:
        h.graph["choices"].append(ir.Choice(
            "model", "memory.backend", "native",
            f"the estimate is for the native backend, which keeps no gradient buffer; --backend numpy "
            f"also holds up to {gib(numpy_gradients)} of per-batch gradient blocks"))
    if available is not None and memory["total"] > available:
        h.graph["choices"].append(ir.Choice("model", "memory", gib(memory["total"]),
                                            f"warning: more than the {gib(available)} available right now"))
    return h
