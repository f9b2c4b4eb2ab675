"""What `boltc tune` searches for each value written `auto`, and how a trial's values become a model.

The ranges (decisions; each is wide enough to hold the settings the shipped models reached by hand
and narrow enough that a 10-minute budget samples it meaningfully):
- width: 64 .. 4096 in powers of two (bibtex needs a wide hidden layer, text models a narrow one);
- lr: Adam 1e-4 .. 1e-2 (SGD 1e-3 .. 0.3), log-uniform;
- weight_decay: 0 or 1e-6 .. 1e-2 in decades (decoupled decay on touched rows);
- batch: 32 .. 512 in powers of two;
- text ngrams: 1, 2, 3; text dim: 2^16 .. 2^20; text idf: false or true; a sparse input's normalize:
  l2 or none;
- dropout rate: 0 .. 0.5; label smoothing: 0, 0.05, 0.1 or 0.2;
- blend ridge: weight 0 (off), 0.25 .. 4; l2 0.1 .. 30 (rows are unit length where the input normalises;
  a 6-minute bibtex search chose the largest of 0.25 .. 2 and 0.1 .. 10 most often, so both reach past it);
- output sparsity: for a layer left `sparsity=auto` that the rule makes sparse, 1x, 2x or 4x the rule's
  share of active neurons (at 1 the layer is dense); its hashing follows the rule for that share.
A trial whose model would plan more than MAX_TRIAL_BYTES of training memory is pruned before it trains
(a 2^20-bucket text input under a 4096-wide layer would take 16 GiB).
"""
from __future__ import annotations

import copy
from dataclasses import replace

from boltc import ir

WIDTHS = (64, 128, 256, 512, 1024, 2048, 4096)
BATCHES = (32, 64, 128, 256, 512)
WEIGHT_DECAYS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
TEXT_DIMS = (1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20)
SPARSITY_FACTORS = (1, 2, 4)
LABEL_SMOOTHINGS = (0.0, 0.05, 0.1, 0.2)
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)     # 0: the network alone
BLEND_L2S = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
MAX_TRIAL_BYTES = 4 << 30
# kinds decided after the search, not by trials (`ensemble auto`: boltc/tune/ensemble_check.py)
AFTER_SEARCH = ("ensemble",)


def name_of(where: tuple) -> str:
    """The Optuna parameter name of a place: 'hidden.dim', 'post.ngrams', 'lr'."""
    return ".".join(str(w) for w in where[1:])


def suggest(trial, tunables, optimizer: str) -> dict:
    """{where: value} for one trial."""
    out = {}
    for t in tunables:
        name = name_of(t.where)
        if t.kind in AFTER_SEARCH:
            continue
        if t.kind == "width":
            v = trial.suggest_categorical(name, WIDTHS)
        elif t.kind == "lr":
            lo, hi = (1e-4, 1e-2) if optimizer == "adam" else (1e-3, 0.3)
            v = trial.suggest_float(name, lo, hi, log=True)
        elif t.kind == "weight_decay":
            v = trial.suggest_categorical(name, WEIGHT_DECAYS)
        elif t.kind == "batch":
            v = trial.suggest_categorical(name, BATCHES)
        elif t.kind == "ngrams":
            v = trial.suggest_categorical(name, (1, 2, 3))
        elif t.kind == "text_dim":
            v = trial.suggest_categorical(name, TEXT_DIMS)
        elif t.kind == "label_smoothing":
            v = trial.suggest_categorical(name, LABEL_SMOOTHINGS)
        elif t.kind == "normalize":
            v = trial.suggest_categorical(name, ("l2", "none"))
        elif t.kind == "idf":
            v = trial.suggest_categorical(name, (False, True))
        elif t.kind == "blend_weight":
            v = trial.suggest_categorical(name, BLEND_WEIGHTS)
        elif t.kind == "blend_l2":
            v = trial.suggest_categorical(name, BLEND_L2S)
        elif t.kind == "dropout":
            v = trial.suggest_float(name, 0.0, 0.5)
        elif t.kind == "sparsity":
            v = min(1.0, trial.suggest_categorical(name, SPARSITY_FACTORS) * float(t.default))
        else:
            raise ValueError(f"no search range for {t.kind}")
        out[tuple(t.where)] = v
    return out


def defaults(tunables) -> dict:
    """The first trial: every value at its untuned default (the Optuna parameter values)."""
    return {name_of(t.where): (1 if t.kind == "sparsity" else t.default) for t in tunables
            if t.kind not in AFTER_SEARCH}


def sparsity_tunables(parsed, planned) -> list[ir.Tunable]:
    """fc layers written with sparsity=auto (the default) whose rule made them sparse."""
    out = []
    for n in ir.nodes(parsed):
        if n.op == "fc" and n.attrs.get("sparsity", "auto") == "auto":
            s = float(ir.node(planned, n.name).attrs["sparsity"])
            if s < 1.0:
                out.append(ir.Tunable(("layer", n.name, "sparsity"), "sparsity", s, n.loc))
    return out


def with_values(parsed, values: dict):
    """A copy of the parsed graph with each place set to its value (the passes then plan it)."""
    g = parsed.copy()
    g.graph = dict(parsed.graph)
    g.graph["train"] = copy.deepcopy(parsed.graph["train"])
    for where, v in values.items():
        if where[0] == "train":
            if len(where) == 3:                  # a setting's option: ("train", "blend", "weight")
                g.graph["train"][where[1]] = {**g.graph["train"][where[1]], where[2]: v}
            else:
                g.graph["train"][where[1]] = v
            continue
        n = g.nodes[where[1]]["node"]
        attr = where[2]
        n = replace(n, attrs={**n.attrs, attr: v}, dim=v if attr == "dim" else n.dim)
        if attr == "sparsity" and v >= 1.0 and n.attrs.get("hash", "auto") == "auto":
            n = replace(n, attrs={**n.attrs, "hash": "none"})
        g.nodes[where[1]]["node"] = n
    g.graph["tunable"] = ()
    return g
