"""Pass: choose_sparsity. Every fc gets a float sparsity (1.0 = dense); each automatic one is
recorded as a Choice with its reason.

Rule: only the model's output layer is made sparse automatically (hidden layers are narrow, and a
sparse hidden layer's errors compound); a layer with hash=none has no way to choose neurons, so auto
makes it dense. The output's active set is BOLT's share of its width (DESIGN.md section 3), raised to at
least MIN_ACTIVE neurons; when that is more than MAX_ACTIVE_SHARE of the width the layer stays dense.

Why (decision; benchmarks/auto_sparsity.py, validation splits carved from the training files):
BOLT's table makes outputs of 450+ labels sparse with a few dozen to a few hundred active neurons.
Training then pushes down only those few negatives per step, and on real label sets of 1,000-2,000
labels that cost 0.6-2.4 points of P@1 against the same model trained dense. Sparse *training* with a
larger active set does not, and sparse inference needs the larger set too: on 20ng_nextword (37,392
labels, 90k training rows, 1 epoch, validation P@1 with dense / sparse inference) the dense model has
12.32; trained with 2,048 active neurons 12.40 / 12.11, with 1,024 12.45 / 11.82, with BOLT's 186
12.50 / 9.59 (docs/results.md, "Automatic sparsity"). The active set holds an example's labels, its
hash neighbours and a frequency-weighted sample of the rest (lsh/index.py), which is what a full
softmax pushes on most.
Sparsity only pays when the active set is a small share of the width (at a quarter the output costs
about a quarter of the dense one), and a narrow output's dense cost is small anyway: so an output under
MIN_ACTIVE / MAX_ACTIVE_SHARE = 8,192 labels stays dense, and a wider one keeps at least MIN_ACTIVE
active neurons. The rule depends only on the width (not on any data set), so it carries over to data
sets never measured.

Then a sparse output layer (automatic or written) whose active set is a large share of its width runs
dense when that is estimated cheaper (boltc/passes/execution_cost.py); the Choice says both estimates.
Only the output: its dense form is the function evaluated anyway (dense inference is the default), so
training it dense gives the exact softmax gradient instead of the sampled one; a sparse hidden layer
computes another function than its dense form, so a written one is kept.
"""
from __future__ import annotations

import math

import networkx as nx

from boltc import ir
from boltc.passes import bolt_rules
from boltc.passes.execution_cost import runs_dense
from boltc.passes.common import output_name


MIN_ACTIVE = 2048          # neurons an automatically sparse output computes per example, at least
MAX_ACTIVE_SHARE = 0.25    # ... and at most this share of its width, else it stays dense


def auto_output_sparsity(dim: int) -> tuple[float, str]:
    """(sparsity, reason) for an output layer left `auto` (see the module docstring)."""
    bolt = bolt_rules.bolt_sparsity(dim)
    if bolt == 1.0:
        return 1.0, f"output width {dim} < 450: dense (BOLT's table keeps it dense too)"
    active = max(int(bolt * dim), MIN_ACTIVE)
    if active > MAX_ACTIVE_SHARE * dim:
        return 1.0, (f"output width {dim}: an active set of {MIN_ACTIVE}+ neurons would be over "
                     f"{MAX_ACTIVE_SHARE:g} of the width, so sparsity would save little and risk accuracy: "
                     f"dense (BOLT's table would give {bolt:g} = {int(bolt * dim)} active)")
    value = active / dim
    while int(value * dim) < active:        # the plan takes int(sparsity * dim) active neurons
        value = math.nextafter(value, 1.0)
    if active == int(bolt * dim):
        return bolt, f"BOLT's table by output width {dim}: {bolt:g} ({active} active neurons)"
    return value, (f"output width {dim}: {active} active neurons ({value:.4g}), at least {MIN_ACTIVE} so that "
                   f"sparse training and inference keep dense accuracy (BOLT's table would give {bolt:g} = "
                   f"{int(bolt * dim)})")


def choose_sparsity(g: nx.DiGraph) -> nx.DiGraph:
    h = ir.copy_graph(g)
    out = output_name(h)
    batch = int((h.graph.get("train") or {}).get("batch", 256))
    for n in ir.nodes(h):
        if n.op != "fc" or n.attrs.get("sparsity", "auto") != "auto":
            if n.name == out:
                _dense_if_cheaper(h, n, batch)
            continue
        if n.attrs.get("hash") == "none":
            value, reason = 1.0, "hash=none: no hash to choose active neurons, so the layer is dense"
        elif n.name != out:
            value, reason = 1.0, "hidden layer: BOLT makes only the output layer sparse"
        else:
            value, reason = auto_output_sparsity(n.dim)
        n = n.with_attrs(sparsity=value)
        ir.replace_node(h, n)
        h.graph["choices"].append(ir.Choice(n.name, "sparsity", value, reason))
        if n.name == out:
            _dense_if_cheaper(h, n, batch)
    return h


def _dense_if_cheaper(h: nx.DiGraph, n: ir.Node, batch: int) -> None:
    sparsity = n.attrs.get("sparsity", 1.0)
    if n.op != "fc" or not isinstance(sparsity, float) or sparsity >= 1.0 or not n.dim or not n.attrs.get("in_dim"):
        return
    if n.attrs.get("hash", "auto") != "auto":
        return                        # hash parameters written by hand: the user wants this LSH layer
    active = max(1, int(sparsity * n.dim))
    dense, reason = runs_dense(n.dim, int(n.attrs["in_dim"]), active, batch)
    if dense:
        ir.replace_node(h, n.with_attrs(sparsity=1.0))
    h.graph["choices"].append(ir.Choice(n.name, "execution", "dense" if dense else "sparse", reason))
