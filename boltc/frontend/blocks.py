"""The `train { }` and `data { }` blocks -> the plain dicts kept in graph.graph["train"] / ["data"].

The train dict has exactly the keys of the plan's "train" entry (docs/CONTRACTS.md section 3), with
every default filled in (boltc.plan.TRAIN_DEFAULTS), so a runtime never guesses. The exceptions are
`distributed` and OPTIONAL_TRAIN_KEYS (tuning knobs whose default belongs to the runtime that reads
them): present only when the block sets them.
"""
from __future__ import annotations

import copy

from boltc import ir
from boltc.frontend import ast
from boltc.frontend.bind import (Param, Problem, as_call, bind, boolean, did_you_mean, integer, one_of_words, real,
                                 string, word)

TRAIN_DEFAULTS = {
    "optimizer": "adam", "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "momentum": 0.0,
    "batch": 256, "epochs": 5, "schedule": {"kind": "constant"}, "sampler": {"kind": "uniform"},
    "threads": 0, "seed": 0, "checkpoint_every": 1, "inference": "dense", "weight_decay": 0.0,
    "moments": "auto",
}
# Decision: plain SGD needs a larger step than Adam's 1e-3 to move in a few epochs.
SGD_DEFAULT_LR = 0.01

_POS = real(0.0, low_open=True)
_OPTIMIZERS = {
    "adam": (Param("lr", _POS, TRAIN_DEFAULTS["lr"]), Param("beta1", real(0.0, 1.0), 0.9),
             Param("beta2", real(0.0, 1.0), 0.999), Param("eps", _POS, 1e-7),
             # decoupled (AdamW) decay on the touched weight rows; 0 = plain lazy Adam as BOLT
             Param("weight_decay", real(0.0), 0.0),
             # storage of m and v: float32, bfloat16, or auto = bf16 only for very large tensors
             # (boltc/passes/plan_memory_moments.py has the rule and why)
             Param("moments", word("f32", "bf16", "auto", what="moment storage"), "auto")),
    "sgd": (Param("lr", _POS, SGD_DEFAULT_LR), Param("momentum", real(0.0, 1.0), 0.0)),
}


def _auto_or(conv):
    def convert(v):
        if isinstance(v, ast.Name) and v.text == "auto":
            return None          # None: not given, the sampler decides
        return conv(v)
    return convert


_WARMUP = Param("warmup", integer(0, what="a number of steps"), None)
_SCHEDULES = {
    "constant": (_WARMUP,),
    "linear": (Param("end", real(0.0, 1.0), 0.0), _WARMUP),
    "cosine": (_WARMUP,),
    "step": (Param("every", integer(1, what="a number of epochs"), positional=True),
             Param("gamma", real(0.0, 1.0, low_open=True), 0.1), _WARMUP),
}
_SAMPLERS = {
    "uniform": (),
    # the keys runtime/sampler/adaptive.py reads (NW_KEYS); `auto` (or leaving one out) takes the sampler's default
    "nw_sketch": (Param("rows", integer(1), None), Param("bits", _auto_or(integer(1, 24)), None),
                  Param("mix", real(0.0, 1.0, low_open=True), None), Param("refresh", _auto_or(_POS), None),
                  Param("decay", real(0.0, 1.0), None), Param("reweight", boolean, None),
                  Param("temperature", _POS, None), Param("clip", _POS, None), Param("seed", integer(0), None),
                  Param("warmup", integer(0, what="a number of epochs"), None), Param("excess", boolean, None)),
}
_DISTRIBUTED = (Param("workers", integer(1), positional=True), Param("address", string, "auto"),
                Param("exchange_every", integer(1), 1),
                Param("exchange", word("sparse", what="exchange"), "sparse"))
_SCALARS = {
    "batch": ("batch", integer(1)), "epochs": ("epochs", integer(1)), "threads": ("threads", integer(0)),
    "seed": ("seed", integer(0)), "checkpoint": ("checkpoint_every", integer(1, what="a number of epochs")),
    "inference": ("inference", word("dense", "sparse", "both", what="inference mode")),
    # LSH table upkeep may cost at most this share of the training steps' work (runtime/lsh/upkeep.py;
    # absent = its DEFAULT_BUDGET, 0.06). Capped at 1 so that a percentage (`6` for 6%) is an error.
    "upkeep_budget": ("upkeep_budget", real(0.0, 1.0, low_open=True, what="a fraction of the step work")),
}
# keys written into the plan only when the block sets them (the runtime holds their defaults)
OPTIONAL_TRAIN_KEYS = ("upkeep_budget",)
TRAIN_WORDS = ("optimizer", "batch", "epochs", "schedule", "sampler", "threads", "seed", "checkpoint",
               "inference", "upkeep_budget", "distributed(...)")


def default_train() -> dict:
    return copy.deepcopy(TRAIN_DEFAULTS)


def _given(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _choose(value: ast.Value, table: dict, what: str, problems) -> tuple[str, dict] | None:
    call = as_call(value)
    if call.name not in table:
        raise Problem(f"unknown {what} '{call.name}'{did_you_mean(call.name, table)}; expected "
                      f"{one_of_words(table)}", call.loc)
    return call.name, bind(call, table[call.name], call.name, problems)


def _one_value(st: ast.Setting) -> ast.Value:
    if len(st.values) != 1:
        raise Problem(f"'{st.key}' takes one value", st.values[1].loc)
    return st.values[0]


def build_train(body, problems: list[Problem]) -> dict:
    train = default_train()
    seen: dict[str, int] = {}
    for st in body:
        try:
            key = st.call.name if isinstance(st, ast.Bare) else getattr(st, "key", getattr(st, "keyword", "?"))
            if key in seen:
                raise Problem(f"'{key}' is given twice in the train block (first at line {seen[key]})", st.loc)
            if isinstance(st, ast.Bare) and key == "distributed":
                seen[key] = st.loc.line
                train["distributed"] = bind(st.call, _DISTRIBUTED, "distributed", problems)
                continue
            if not isinstance(st, ast.Setting) or key not in _SCALARS and key not in (
                    "optimizer", "schedule", "sampler"):
                raise Problem(f"unknown train setting '{key}'{did_you_mean(key, TRAIN_WORDS)}; expected "
                              f"{one_of_words(TRAIN_WORDS)}", st.loc)
            seen[key] = st.loc.line
            value = _one_value(st)
            if key == "optimizer":
                name, got = _choose(value, _OPTIMIZERS, "optimizer", problems)
                train.update(optimizer=name, **got)
            elif key == "schedule":
                name, got = _choose(value, _SCHEDULES, "schedule", problems)
                train["schedule"] = {"kind": name, **_given(got)}
            elif key == "sampler":
                name, got = _choose(value, _SAMPLERS, "sampler", problems)
                train["sampler"] = {"kind": name, **_given(got)}
            else:
                plan_key, conv = _SCALARS[key]
                try:
                    train[plan_key] = conv(value)
                except Problem as e:
                    raise Problem(f"{key}: {e.message}", e.loc) from None
        except Problem as e:
            problems.append(e)
    return train


# file options: those runtime/data/csvfile.py reads (csv/tsv); xc and svmlight files take format and stream
_FILE = (Param("path", string, positional=True),
         Param("format", word("xc", "svmlight", "csv", "tsv", what="format"), None),
         Param("delimiter", string, None), Param("quote", string, None), Param("header", boolean, None),
         Param("names", string, None), Param("label_sep", string, None), Param("encoding", string, None),
         Param("max_rows", integer(1), None),
         # xc/svmlight: read in chunks every epoch (runtime/data/stream.py); left out = when too large for memory
         Param("stream", boolean, None))
# synthetic(...): the generator's settings (runtime/data/synth.py SynthSpec); features and labels default
# to the model's input width and target classes there, so they may be left out here
_SYNTHETIC = (Param("rows", integer(1)), Param("features", integer(1), None), Param("labels", integer(1), None),
              Param("seed", integer(0), 0), Param("task", integer(0), None), Param("nnz", integer(1), None),
              Param("max_labels", integer(1), None), Param("proto_nnz", integer(1), None),
              Param("noise", real(0.0, 0.999999), None), Param("label_alpha", _POS, None),
              Param("noise_alpha", _POS, None))
DATA_SPLITS = ("train", "test", "validation")


def data_source(value: ast.Value, problems: list[Problem]) -> ir.DataSource:
    if isinstance(value, ast.String):
        return ir.DataSource("file", value.value, None, {}, value.loc)
    if isinstance(value, ast.Call) and value.name == "file":
        got = _given(bind(value, _FILE, "file", problems))
        path = got.pop("path", "")
        fmt = got.pop("format", None)
        return ir.DataSource("file", path, fmt, got, value.loc)
    if isinstance(value, ast.Call) and value.name == "synthetic":
        got = _given(bind(value, _SYNTHETIC, "synthetic", problems))
        return ir.DataSource("synthetic", None, None, got, value.loc)
    raise Problem(f'expected a "path", file("path", ...) or synthetic(...), found {ast.describe(value)}',
                  value.loc)


def build_data(body, problems: list[Problem]) -> dict:
    data: dict = {"train": None, "test": None, "validation": None}
    for st in body:
        try:
            key = st.call.name if isinstance(st, ast.Bare) else getattr(st, "key", getattr(st, "keyword", "?"))
            if not isinstance(st, ast.Setting) or key not in DATA_SPLITS:
                raise Problem(f"unknown data setting '{key}'{did_you_mean(key, DATA_SPLITS)}; expected train, "
                              "test or validation", st.loc)
            if data[key] is not None:
                raise Problem(f"'{key}' is given twice in the data block", st.loc)
            data[key] = data_source(_one_value(st), problems)
        except Problem as e:
            problems.append(e)
    return data
