"""The plan contract (docs/CONTRACTS.md section 3): the planned model as one JSON-able dict, the only
thing the native lowering and the runtime read, and what a model file stores.

Decision: the plan stays plain JSON data (dicts, lists, numbers, strings), typed here with TypedDicts
rather than converted into dataclasses: a model file holds exactly this JSON, every saved model of the
current format loads without a conversion layer, and a runtime reads it with no boltc class at all.
This module is a leaf: it imports nothing of boltc (the conversion from the IR is passes/to_plan.py).
"""
from __future__ import annotations

from typing import Any, TypedDict

PLAN_FORMAT = 1
SPARSE_KINDS = ("sparse", "text", "categorical")
TEXT_KEYS = ("column", "tokenizer", "char_k", "ngrams", "lowercase", "values", "seed", "normalize", "idf")
CATEGORICAL_KEYS = ("column", "seed", "normalize")
MEMORY_KEYS = ("weights", "optimizer", "gradients", "activations", "hash_tables", "total")

# The resolved train block: the front end fills every default in, so a runtime never guesses.
TRAIN_DEFAULTS = {
    "optimizer": "adam", "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "momentum": 0.0,
    "batch": 256, "epochs": 5, "schedule": {"kind": "constant"}, "sampler": {"kind": "uniform"},
    "threads": 0, "seed": 0, "checkpoint_every": 0, "inference": "dense", "weight_decay": 0.0,
    "moments": "auto", "holdout": 0.1,
}

# Defaults of an LSH layer's `hash` entry that the runtime reads and choose_hashing writes into the plan
DEFAULT_RANDOM_SHARE = 0.25     # share of a training active set kept for uniform random negatives
DEFAULT_NEGATIVES = "frequency"     # how a training fill draws: "frequency" or "uniform"


class InputEntry(TypedDict, total=False):
    name: str
    kind: str            # sparse, dense, text, categorical
    dim: int             # + TEXT_KEYS / CATEGORICAL_KEYS for featurised inputs


class TargetEntry(TypedDict):
    name: str
    kind: str            # single, multi, binary
    classes: int
    column: str | None


class LayerEntry(TypedDict, total=False):
    """One layer. Always: name, op, inputs, dim; the rest is the op's own plan entry (boltc/ops/<op>.py
    `plan_entry`)."""
    name: str
    op: str
    inputs: list[str]
    dim: int
    in_dim: int
    activation: str
    bias: bool
    input_sparse: bool
    layout: str          # in_major (a sparse input's row per feature) or out_major (a row per neuron)
    sparsity: float
    active: int
    hash: dict | None
    reduce: str
    eps: float
    rate: float


class Plan(TypedDict):
    format: int
    model: str | None
    inputs: list[InputEntry]
    target: TargetEntry
    layers: list[LayerEntry]
    output: str
    loss: str
    metrics: list[str]
    train: dict[str, Any]
    data: dict[str, dict]
    memory: dict[str, int]
    choices: list[dict]
