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
                                 string, take_auto, tunable, word)
from boltc.plan import TRAIN_DEFAULTS
from boltc.frontend.duration import parse_duration

# Decisions (issue 15, validation discipline and early stopping):
# - `holdout F`: with no validation data given, fit/train/run train on a seeded share 1-F of the training
#   rows and take per-epoch metrics (and every choice: early stopping, tuning) on the other F
#   (runtime/data/holdout.py). 10%: enough rows for a stable P@1 on the small real sets (488 of bibtex's
#   4,880) while costing the model little data. `holdout 0` trains on every row and measures nothing
#   per epoch. The test set is never used per epoch.
# - `epochs auto` = early stopping: at most AUTO_MAX_EPOCHS epochs, stopping after `patience` epochs
#   (default DEFAULT_PATIENCE) without a better validation metric; the best epoch's weights are kept.
#   `patience N` with a number of epochs stops early the same way, with that number as the cap.
AUTO_MAX_EPOCHS = 100
DEFAULT_PATIENCE = 3
# Decision: plain SGD needs a larger step than Adam's 1e-3 to move in a few epochs.
SGD_DEFAULT_LR = 0.01

_POS = real(0.0, low_open=True)
_OPTIMIZERS = {
    "adam": (Param("lr", tunable(_POS, "lr", TRAIN_DEFAULTS["lr"]), TRAIN_DEFAULTS["lr"]),
             Param("beta1", real(0.0, 1.0), 0.9),
             Param("beta2", real(0.0, 1.0), 0.999), Param("eps", _POS, 1e-7),
             # decoupled (AdamW) decay on the touched weight rows; 0 = plain lazy Adam as BOLT
             Param("weight_decay", tunable(real(0.0), "weight_decay", 0.0), 0.0),
             # storage of m and v: float32, bfloat16, or auto = bf16 only for very large tensors
             # (boltc/plan/moments.py has the rule and why)
             Param("moments", word("f32", "bf16", "auto", what="moment storage"), "auto")),
    "sgd": (Param("lr", tunable(_POS, "lr", SGD_DEFAULT_LR), SGD_DEFAULT_LR), Param("momentum", real(0.0, 1.0), 0.0),
            Param("weight_decay", real(0.0), 0.0)),      # decoupled, on touched weight rows (as adam)
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
    "nw_sketch": (Param("draw", word("thin", "alias", what="draw"), None),
                  Param("key", word("example", "input", "input_label", what="sketch key"), None),
                  Param("keep", _auto_or(_POS), None), Param("drop", real(0.0, 1.0), None),
                  Param("floor", real(0.0, 1.0, low_open=True), None),
                  Param("rows", integer(1), None), Param("bits", _auto_or(integer(1, 24)), None),
                  Param("mix", real(0.0, 1.0, low_open=True), None), Param("refresh", _auto_or(_POS), None),
                  Param("decay", real(0.0, 1.0), None), Param("reweight", boolean, None),
                  Param("temperature", _POS, None), Param("clip", _POS, None), Param("seed", integer(0), None),
                  Param("warmup", integer(0, what="a number of epochs"), None), Param("excess", boolean, None)),
}
# auto takes nw_sketch's settings except draw (it switches thinning on and off itself), and min_rows: the
# training set size below which it is the uniform sampler (runtime/sampler/adaptive.py AUTO_DEFAULTS)
_SAMPLERS["auto"] = tuple(p for p in _SAMPLERS["nw_sketch"] if p.name != "draw") + (
    Param("min_rows", integer(0, what="a number of training rows"), None),)
# `blend ridge(weight=W, l2=L)` (runtime/train/blend.py): ranking scores = the network's output plus W times
# a ridge regression from the model's input to its target, solved in closed form on the training rows.
# Decision: weight 0.5 and l2 1 (a ridge on unit-length rows) when left out; `boltc tune` searches both
# values written auto, weight 0 (off) included, so a data set where the linear scores do not help turns
# it off on validation. Untuned, `weight=auto` is 0: the network alone (it cost delicious 1.5 points of
# P@1 at 0.5 on 3 folds of its training rows, while bibtex gained 1.8), and the tuner's first trial.
_BLENDS = {"ridge": (Param("weight", tunable(real(0.0), "blend_weight", 0.0), 0.5),
                     Param("l2", tunable(_POS, "blend_l2", 1.0), 1.0)),
           "none": ()}
_DISTRIBUTED = (Param("workers", integer(1), positional=True), Param("address", string, "auto"),
                Param("exchange_every", integer(1), 1),
                Param("exchange", word("sparse", what="exchange"), "sparse"))


def _duration(v: ast.Value) -> float:
    """Seconds: a number, or a string such as "90s", "10m", "1h"."""
    if not isinstance(v, (ast.Number, ast.String)):
        raise Problem(f'expected a duration (seconds, or a string like "10m"), found {ast.describe(v)}', v.loc)
    try:
        return parse_duration(v.value)
    except ValueError as e:
        raise Problem(str(e), v.loc) from None


# `tune(budget="10m", trials=N)`: `boltc run` and `boltc tune` search the values written auto
# (boltc/tune/search.py); budget is the search's wall-clock time
_TUNE = (Param("budget", _duration, 600.0, positional=True), Param("trials", integer(1, what="a number of trials"), None))
_SCALARS = {
    "batch": ("batch", tunable(integer(1), "batch", TRAIN_DEFAULTS["batch"])), "threads": ("threads", integer(0)),
    "patience": ("patience", integer(1, what="a number of epochs")),
    "holdout": ("holdout", real(0.0, 0.9, what="a share of the training rows (0 = none)")),
    # checkpoints (runtime/train/checkpoints.py): every N epochs (0 = by wall clock only), and at least every
    # `checkpoint_interval` seconds (absent = its DEFAULT_INTERVAL_S)
    "seed": ("seed", integer(0)), "checkpoint": ("checkpoint_every", integer(0, what="a number of epochs")),
    "checkpoint_interval": ("checkpoint_interval", real(0.0, low_open=True, what="a number of seconds")),
    "inference": ("inference", word("dense", "sparse", "both", what="inference mode")),
    # LSH table upkeep may cost at most this share of the training steps' work (runtime/lsh/upkeep.py;
    # absent = its DEFAULT_BUDGET, 0.06). Capped at 1 so that a percentage (`6` for 6%) is an error.
    "upkeep_budget": ("upkeep_budget", real(0.0, 1.0, low_open=True, what="a fraction of the step work")),
    # cross entropy's target mixed with the uniform over the softmax's columns (runtime/exec/numpy_rules.py);
    # below 1 (1 would ignore the labels), and 0.1 not 10
    # `auto`: boltc tune searches 0, 0.05, 0.1, 0.2 (boltc/tune/space.py); untuned, 0 (off)
    "label_smoothing": ("label_smoothing", tunable(real(0.0, 0.999999, what="a share of the target"),
                                                   "label_smoothing", 0.0)),
    # `ensemble N`: N networks trained with their own seeds, their outputs averaged at inference
    # (runtime/train/ensemble.py); at most 16: each one multiplies training and inference time.
    # `auto`: boltc tune measures on validation whether averaging pays (boltc/tune/ensemble_check.py);
    # untuned, one network
    "ensemble": ("ensemble", tunable(integer(1, 16, what="a number of networks"), "ensemble", 1)),
}
# keys written into the plan only when the block sets them (the runtime holds their defaults)
OPTIONAL_TRAIN_KEYS = ("upkeep_budget", "checkpoint_interval", "patience", "class_weights", "label_smoothing",
                       "blend", "ensemble")
TRAIN_WORDS = ("optimizer", "batch", "epochs", "patience", "holdout", "schedule", "sampler", "threads", "seed",
               "checkpoint", "checkpoint_interval", "inference", "upkeep_budget", "class_weights", "label_smoothing",
               "blend", "ensemble", "tune(...)",
               "distributed(...)")


def _epochs(v: ast.Value):
    """A number of epochs, or `auto` (None here: early stopping, resolved in build_train)."""
    if isinstance(v, ast.Name) and v.text == "auto":
        return None
    return integer(1, what="a number of epochs or auto")(v)


# where the block set class_weights: the count of given weights is checked against the target's classes
# once the whole model is read (build.py), and reported here
CLASS_WEIGHTS_LOC = "_class_weights_loc"
LABEL_SMOOTHING_LOC = "_label_smoothing_loc"
SAMPLER_LOC = "_sampler_loc"            # where `sampler` was given: build.py checks it against the data block
BLEND_LOC = "_blend_loc"


def class_weights(st: ast.Setting):
    """`class_weights balanced | none | w0, w1, ...` (runtime/train/class_weights.py): "balanced", None for
    none, or the list of weights (numbers >= 0, one per class)."""
    first = st.values[0]
    if isinstance(first, ast.Name):
        if first.text not in ("balanced", "none"):
            raise Problem(f"class_weights: unknown value '{first.text}'{did_you_mean(first.text, ('balanced', 'none'))}"
                          "; expected balanced, none or one weight per class", first.loc)
        if len(st.values) > 1:
            raise Problem(f"class_weights {first.text} takes no other value", st.values[1].loc)
        return None if first.text == "none" else "balanced"
    conv = real(0.0, what="a class weight")
    out = []
    for v in st.values:
        try:
            out.append(conv(v))
        except Problem as e:
            raise Problem(f"class_weights: {e.message}", e.loc) from None
    return out


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


def build_train(body, problems: list[Problem], tunables: list | None = None) -> dict:
    tunables = [] if tunables is None else tunables
    train = default_train()
    seen: dict[str, int] = {}
    auto_epochs = False
    schedule_loc = None
    for st in body:
        try:
            key = st.call.name if isinstance(st, ast.Bare) else getattr(st, "key", getattr(st, "keyword", "?"))
            if key in seen:
                raise Problem(f"'{key}' is given twice in the train block (first at line {seen[key]})", st.loc)
            if isinstance(st, ast.Bare) and key == "distributed":
                seen[key] = st.loc.line
                train["distributed"] = bind(st.call, _DISTRIBUTED, "distributed", problems)
                continue
            if isinstance(st, ast.Bare) and key == "tune":
                seen[key] = st.loc.line
                train["tune"] = _given(bind(st.call, _TUNE, "tune", problems))
                continue
            if not isinstance(st, ast.Setting) or key not in _SCALARS and key not in (
                    "optimizer", "schedule", "sampler", "epochs", "class_weights", "blend"):
                raise Problem(f"unknown train setting '{key}'{did_you_mean(key, TRAIN_WORDS)}; expected "
                              f"{one_of_words(TRAIN_WORDS)}", st.loc)
            seen[key] = st.loc.line
            if key == "class_weights":
                got = class_weights(st)
                if got is not None:
                    train["class_weights"] = got
                    train[CLASS_WEIGHTS_LOC] = st.values[0].loc
                continue
            value = _one_value(st)
            if key == "optimizer":
                name, got = _choose(value, _OPTIMIZERS, "optimizer", problems)
                train.update(optimizer=name, **take_auto(got, ("train",), tunables))
            elif key == "schedule":
                name, got = _choose(value, _SCHEDULES, "schedule", problems)
                train["schedule"] = {"kind": name, **_given(got)}
                schedule_loc = value.loc
            elif key == "blend":
                name, got = _choose(value, _BLENDS, "blend", problems)
                if name != "none":
                    train["blend"] = {"kind": name, **take_auto(got, ("train", "blend"), tunables)}
                    train[BLEND_LOC] = value.loc        # checked against the inputs and target in build.py
            elif key == "sampler":
                name, got = _choose(value, _SAMPLERS, "sampler", problems)
                train["sampler"] = {"kind": name, **_given(got)}
                train[SAMPLER_LOC] = st.loc
            elif key == "epochs":
                try:
                    n = _epochs(value)
                except Problem as e:
                    raise Problem(f"epochs: {e.message}", e.loc) from None
                train["epochs"] = AUTO_MAX_EPOCHS if n is None else n
                auto_epochs = n is None
            else:
                plan_key, conv = _SCALARS[key]
                try:
                    train.update(take_auto({plan_key: conv(value)}, ("train",), tunables))
                except Problem as e:
                    raise Problem(f"{key}: {e.message}", e.loc) from None
                if key == "label_smoothing":
                    train[LABEL_SMOOTHING_LOC] = value.loc      # checked against the loss in build.py
        except Problem as e:
            problems.append(e)
    kind = (train.get("sampler") or {}).get("kind")
    if train.get("distributed") and kind == "nw_sketch":
        problems.append(Problem("sampler nw_sketch cannot run with distributed(...) training: each worker walks "
                                "its own shard, so no sampler sees every example's loss; use sampler uniform "
                                "or auto (auto then trains uniformly), or train in one process",
                                train.get(SAMPLER_LOC)))
    if auto_epochs:
        train.setdefault("patience", DEFAULT_PATIENCE)
        if train["schedule"]["kind"] in ("linear", "cosine"):
            # they decay over the run's length, which early stopping does not know up front: the decay
            # would be spread over the cap, and a tuned model's fixed epoch count would decay differently
            problems.append(Problem(f"schedule {train['schedule']['kind']} decays over a known number of epochs; "
                                    "with `epochs auto` use constant or step(every=E)", schedule_loc))
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
