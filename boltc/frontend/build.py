"""Syntax tree -> ir graph. Checks every word against what the language allows at that place and
collects all mistakes (each at its own location) instead of stopping at the first.

Graph-level checks (undefined names, cycles, a loss that does not fit its target, shapes) belong to
the passes (boltc/passes/validate.py, infer_shapes.py), so that a graph built from Python is held to
the same rules as one built from text.
"""
from __future__ import annotations

import networkx as nx

from boltc import ir
from boltc.frontend import ast
from boltc.frontend.bind import (Param, Problem, as_call, bind, boolean, did_you_mean, integer, one_of_words, real,
                                 reference, string, take_auto, tunable, word)
from boltc.frontend.blocks import (BLEND_LOC, CLASS_WEIGHTS_LOC, LABEL_SMOOTHING_LOC, SAMPLER_LOC, build_data, build_train,
                                   default_train)
from boltc.ops import LAYER_OPS, OPS

# Decisions: default widths of hashed featurisers. 2^18 text buckets keep a 256-wide first layer at
# 256 MiB of weights; collisions at that width cost little accuracy on document classification.
TEXT_DEFAULT_DIM = 1 << 18
CATEGORICAL_DEFAULT_DIM = 1 << 16
# A layer width written `auto` (searched by `boltc tune`) is this wide when not tuned: the hidden
# width of BOLT's and PEERS.md's reference models.
AUTO_WIDTH = 256


def _sparsity(v):
    if isinstance(v, ast.Name) and v.text == "auto":
        return "auto"
    if not isinstance(v, ast.Number) or not 0.0 < float(v.value) <= 1.0:
        raise Problem(f"expected auto or a fraction in (0, 1], found {ast.describe(v)}", v.loc)
    return float(v.value)


_DWTA = (Param("tables", integer(1), None), Param("hashes", integer(1, 16), None),
         Param("range", integer(1, 24), None, alias="bits"), Param("reservoir", integer(1), None),
         Param("bin_size", integer(2), None), Param("rehash_every", real(0.0, low_open=True), None),
         Param("rebuild_every", real(0.0, low_open=True), None), Param("freeze_after", integer(0), None),
         # the training active set's random fill: its share of the set, and how it draws (runtime/lsh/index.py)
         Param("random_share", real(0.0, 1.0, what="a share"), None),
         Param("negatives", word("frequency", "uniform"), None))
_SRP = tuple(p for p in _DWTA if p.name not in ("range", "bin_size"))
# .bolt spelling -> plan key
HASH_KEYS = {"tables": "tables", "hashes": "hashes", "range": "range_bits", "reservoir": "reservoir",
             "bin_size": "bin_size", "rehash_every": "rehash_every", "rebuild_every": "rebuild_every",
             "freeze_after": "freeze_after", "random_share": "random_share", "negatives": "negatives"}
HASH_WORDS = ("negatives",)          # options whose value is a bare word, not a string


def _hash(problems):
    def conv(v):
        if isinstance(v, ast.Name) and v.text in ("auto", "none"):
            return v.text
        if isinstance(v, ast.Call) and v.name in ("dwta", "srp"):
            params = _DWTA if v.name == "dwta" else _SRP
            got = bind(v, params, v.name, problems)
            spec = {"family": v.name, **{HASH_KEYS[k]: x for k, x in got.items() if x is not None}}
            if v.name == "srp" and "hashes" in spec:
                spec["range_bits"] = spec["hashes"]        # SRP: one bucket bit per hash, always
            return spec
        raise Problem(f"expected auto, none, dwta(...) or srp(...), found {ast.describe(v)}", v.loc)
    return conv


def _tokenizer(v):
    call = as_call(v)
    if call.name == "words" and not call.args and not call.kwargs:
        return ("words", None)
    if call.name == "chars" and not call.kwargs and len(call.args) <= 1:
        k = integer(1, 16, "a character n-gram length")(call.args[0]) if call.args else 3
        return ("chars", k)
    raise Problem(f"expected words or chars(k), found {ast.describe(v)}", v.loc)


def _id_range(v):
    """`keep=range(start, stop)`: the feature ids start .. stop - 1, half-open like Python's range."""
    if not isinstance(v, ast.Call) or v.name != "range" or v.kwargs or len(v.args) != 2:
        raise Problem(f"expected range(start, stop) of feature ids, found {ast.describe(v)}", v.loc)
    start = integer(0, what="a first feature id")(v.args[0])
    stop = integer(start + 1, what="an end feature id (one past the last kept)")(v.args[1])
    return (start, stop)


def _input_params(kind: str, name: str) -> tuple[Param, ...]:
    if kind == "sparse":
        # normalize=l2: every row scaled to unit length (runtime/data/load.py checked_dataset), as the linear
        # baselines of the XC sets do; none (the default) keeps the file's values
        # `normalize=auto`: boltc tune chooses l2 or none (delicious' validation P@1 rose from 67.4 to 69.5
        # with l2 at hidden 1024, lr 1e-3, batch 64; the linear baselines of the XC sets normalise too).
        # Untuned, none: unit-length rows of ~70 binary features make each step ~8x smaller, and at the
        # untuned lr 1e-3 and batch 256 bibtex's P@1 was still at 20 when early stopping gave up (epoch 4)
        # keep=range(a, b): only feature ids a..b-1 reach the model (runtime/data/dataset.py keep_features),
        # e.g. one block of a file whose features are blocks; the input keeps its declared width, so the
        # rows of the dropped ids stay in the first layer's weights, never touched. Why: on 20ng_nextword,
        # leaving out the bag of earlier words (which fingerprints a message) ranked 0.3 points of P@1
        # higher on held-out messages and stopped the decline after the best epoch (benchmarks/nextword_dev.py)
        return (Param("dim", integer(1), positional=True),
                Param("normalize", tunable(word("l2", "none"), "normalize", "none"), "none"),
                Param("keep", _id_range, None))
    if kind == "dense":
        return (Param("dim", integer(1), positional=True),)
    if kind == "text":
        return (Param("column", string, name), Param("tokenizer", _tokenizer, ("words", None)),
                Param("ngrams", tunable(integer(1, 3), "ngrams", 1), 1), Param("lowercase", boolean, True),
                Param("dim", tunable(integer(1), "text_dim", TEXT_DEFAULT_DIM), TEXT_DEFAULT_DIM), Param("values", word("counts", "log"), "counts"),
                Param("seed", integer(0), 0), Param("normalize", word("l2", "none"), "l2"),
                # TF-IDF: values times the inverse document frequency of the training set (runtime/data/text.py);
                # `idf=auto`: boltc tune chooses (20newsgroups' tuned model: validation accuracy 94.02 with
                # idf against 93.69 without, 3 folds of 10% of the training rows); untuned, false
                Param("idf", tunable(boolean, "idf", False), False))
    return (Param("column", string, name), Param("dim", integer(1), CATEGORICAL_DEFAULT_DIM),
            Param("seed", integer(0), 0), Param("normalize", word("l2", "none"), "none"))


STATEMENT_WORDS = ("input", "target", "loss", "metrics", "train", "data")
TARGETS = {"label": "single", "multilabel": "multi", "binary": "binary"}
LAYER_WORDS = LAYER_OPS


class _ArgKit:
    """What an op's `args(kit)` declares its arguments with (boltc/ops/base.py): the binder's value
    checkers, plus the language's sparsity and hash() settings."""
    Param = Param
    reference, boolean, sparsity = staticmethod(reference), staticmethod(boolean), staticmethod(_sparsity)
    integer, real, word = staticmethod(integer), staticmethod(real), staticmethod(word)
    width = staticmethod(tunable(integer(1), "width", AUTO_WIDTH))   # a layer width `boltc tune` may choose
    tunable = staticmethod(tunable)    # tunable(converter, kind, default): the value may be written `auto`
    NAMES_ONLY = "names-only"          # an op that takes two or more names and nothing else (concat)

    def __init__(self, problems):
        self.hash = _hash(problems)


class Builder:
    def __init__(self, file: str, source: str):
        self.problems: list[Problem] = []
        self.defined: dict[str, ir.Loc] = {}
        self.graph = ir.new_graph(file=file, source=source, loss=None, metrics=(),
                                  train=default_train(), data={"train": None, "test": None, "validation": None})
        self.seen_once: dict[str, ir.Loc] = {}
        self.tunables: list[ir.Tunable] = []          # values written `auto` (boltc tune searches them)

    def build(self, model: ast.Model) -> nx.DiGraph:
        if model.keyword != "model":
            self.problems.append(Problem(f"a .bolt file starts with `model <name> {{`, found '{model.keyword}'",
                                         model.loc))
        self.graph.graph["model"] = model.name
        for st in model.body:
            before = len(self.problems)
            try:
                self.statement(st)
            except Problem as e:
                self.problems.append(e)
            if len(self.problems) > before:
                self.broken(st)
        self.check_class_weights()
        self.check_label_smoothing()
        self.check_sampler_data()
        self.check_blend()
        # a model with mistakes is incomplete: validate then skips "the model has no loss" and the like,
        # which would only repeat the mistake that lost it
        self.graph.graph["incomplete"] = bool(self.problems)
        self.graph.graph["tunable"] = tuple(self.tunables)
        return self.graph

    def check_sampler_data(self) -> None:
        """An adaptive sampler revisits examples out of file order: a training file read with stream=true
        cannot be (auto then trains uniformly and says so at run time)."""
        loc = (self.graph.graph.get("train") or {}).pop(SAMPLER_LOC, None)
        kind = ((self.graph.graph.get("train") or {}).get("sampler") or {}).get("kind")
        source = (self.graph.graph.get("data") or {}).get("train")
        if kind == "nw_sketch" and (getattr(source, "options", None) or {}).get("stream") is True:
            self.problems.append(Problem("sampler nw_sketch needs the training set in memory (it revisits "
                                         "examples out of file order), but the data block streams the training "
                                         "file (stream=true): use sampler uniform or auto, or stream=false", loc))

    def check_label_smoothing(self) -> None:
        """label_smoothing mixes a softmax target: a cross_entropy loss only."""
        loc = self.graph.graph["train"].pop(LABEL_SMOOTHING_LOC, None)
        loss = self.graph.graph.get("loss")
        if loc is not None and loss is not None and loss.kind != "cross_entropy":
            self.problems.append(Problem(f"label_smoothing needs a cross_entropy loss; this model's loss is "
                                         f"{loss.kind}", loc))

    def check_blend(self) -> None:
        """blend ridge(...) regresses the target on the model's one input: one input, a label target."""
        loc = self.graph.graph["train"].pop(BLEND_LOC, None)
        if loc is None:
            return
        nodes = [n["node"] for n in self.graph.nodes.values() if "node" in n]
        inputs = [n for n in nodes if n.op == "input"]
        targets = [n for n in nodes if n.op == "target"]
        if len(inputs) != 1:
            self.problems.append(Problem(f"blend ridge(...) needs a model with one input; this one has "
                                         f"{len(inputs)}", loc))
        if targets and targets[0].attrs.get("kind") == "binary":
            self.problems.append(Problem("blend ridge(...) ranks classes: it needs a label(n) or multilabel(n) "
                                         "target, not binary", loc))

    def check_class_weights(self) -> None:
        """Given class weights: one per class of the target (two for binary), reported at the setting."""
        train = self.graph.graph["train"]
        loc = train.pop(CLASS_WEIGHTS_LOC, None)
        given = train.get("class_weights")
        targets = [n["node"] for n in self.graph.nodes.values() if "node" in n and n["node"].op == "target"]
        if not isinstance(given, list) or len(targets) != 1:
            return
        t = targets[0].attrs
        want = 2 if t["kind"] == "binary" else t.get("classes")
        if isinstance(want, int) and len(given) != want:
            what = "2 (negative, positive) for a binary target" if t["kind"] == "binary" else \
                f"{want}, one per class of '{targets[0].name}'"
            self.problems.append(Problem(f"class_weights has {len(given)} weights; expected {what}", loc))

    def broken(self, st) -> None:
        """A declaration that failed still defines its name, so uses of it are not reported again."""
        name = getattr(st, "name", None)
        if isinstance(st, (ast.Declare, ast.Assign)) and "node" not in self.graph.nodes.get(name, {}):
            self.graph.add_node(name, broken=True)

    def once(self, key: str, loc: ir.Loc) -> None:
        if key in self.seen_once:
            raise Problem(f"'{key}' is given twice (first at line {self.seen_once[key].line})", loc)
        self.seen_once[key] = loc

    def define(self, name: str, loc: ir.Loc) -> None:
        if name in self.defined:
            raise Problem(f"'{name}' is already defined at line {self.defined[name].line}", loc)
        self.defined[name] = loc

    def add(self, node: ir.Node) -> None:
        # edges to names not (yet) defined create bare placeholder nodes; validate reports them
        ir.add_node(self.graph, node)

    def statement(self, st) -> None:
        if isinstance(st, ast.Declare):
            if st.keyword == "input":
                return self.input(st)
            if st.keyword == "target":
                return self.target(st)
            raise Problem(f"unknown declaration '{st.keyword}'; expected input or target", st.loc)
        if isinstance(st, ast.Assign):
            return self.layer(st)
        if isinstance(st, ast.Setting) and st.key == "loss":
            return self.loss(st)
        if isinstance(st, ast.Setting) and st.key == "metrics":
            return self.metrics(st)
        if isinstance(st, ast.Section) and st.key in ("train", "data"):
            self.once(st.key, st.loc)
            if st.key == "train":
                self.graph.graph["train"] = build_train(st.body, self.problems, self.tunables)
            else:
                self.graph.graph["data"] = build_data(st.body, self.problems)
            return None
        key = st.call.name if isinstance(st, ast.Bare) else st.key
        if key in ("input", "target") and isinstance(st, ast.Setting):
            raise Problem(f"write `{key} name: kind(...)`, with a ':' after the name", st.loc)
        raise Problem(f"unknown statement '{key}'{did_you_mean(key, STATEMENT_WORDS)}; expected input, target, a layer (name = op(...)), "
                      "loss, metrics, train { } or data { }", st.loc)

    def input(self, st: ast.Declare) -> None:
        call = as_call(st.value)
        kinds = ir.INPUT_KINDS
        if call.name not in kinds:
            raise Problem(f"unknown input kind '{call.name}'{did_you_mean(call.name, kinds)}; expected "
                          f"{one_of_words(kinds)}", call.loc)
        self.define(st.name, st.name_loc)
        got = take_auto(bind(call, _input_params(call.name, st.name), call.name, self.problems), ("input", st.name),
                        self.tunables)
        attrs = {"kind": call.name, **got}
        keep, dim = attrs.get("keep"), attrs.get("dim")
        if keep is not None and isinstance(dim, int) and keep[1] > dim:
            at = next((kw.value.loc for kw in call.kwargs if kw.key == "keep"), call.loc)
            raise Problem(f"keep=range({keep[0]}, {keep[1]}) ends past the input's {dim} features; expected an "
                          f"end of at most {dim}", at)
        if call.name == "text":
            attrs["tokenizer"], attrs["char_k"] = got.get("tokenizer", ("words", None))
        self.add(ir.Node(st.name, "input", (), attrs, st.name_loc, attrs.get("dim")))

    def target(self, st: ast.Declare) -> None:
        call = as_call(st.value)
        if call.name not in TARGETS:
            raise Problem(f"unknown target kind '{call.name}'{did_you_mean(call.name, TARGETS)}; expected label(n), "
                          "multilabel(n) or binary",
                          call.loc)
        self.define(st.name, st.name_loc)
        self.once("target", st.loc)
        params = (Param("column", string, None),)
        if call.name != "binary":
            # as_names=true: a CSV label column of integers holds class names, not class ids
            params = (Param("classes", integer(1), positional=True),) + params + (Param("as_names", boolean, False),)
        got = bind(call, params, call.name, self.problems)
        classes = got.get("classes", 1)
        attrs = {"kind": TARGETS[call.name], "classes": classes, "column": got.get("column")}
        if got.get("as_names"):
            attrs["as_names"] = True
        self.add(ir.Node(st.name, "target", (), attrs, st.name_loc, classes if isinstance(classes, int) else None))

    def layer(self, st: ast.Assign) -> None:
        call = as_call(st.value)
        if call.name not in LAYER_WORDS:
            raise Problem(f"unknown layer '{call.name}'{did_you_mean(call.name, LAYER_WORDS)}; expected "
                          f"{one_of_words(LAYER_WORDS)}", call.loc)
        self.define(st.name, st.loc)
        declared = OPS[call.name].args(_ArgKit(self.problems))
        if declared == _ArgKit.NAMES_ONLY:
            op = call.name
            if call.kwargs:
                self.problems.append(Problem(f"{op} takes only the names of its inputs", call.kwargs[0].loc))
            inputs = []
            for a in call.args:
                try:
                    inputs.append(reference(a))
                except Problem as e:
                    self.problems.append(e)
            if len(call.args) < 2:
                self.problems.append(Problem(f"{op} needs at least two inputs", call.loc))
            if len(set(inputs)) != len(inputs):
                self.problems.append(Problem(f"{op} names the same input twice", call.loc))
                inputs = list(dict.fromkeys(inputs))   # an edge can exist once
            return self.add(ir.Node(st.name, op, tuple(inputs), {}, st.loc))
        got = take_auto(bind(call, declared, call.name, self.problems), ("layer", st.name), self.tunables)
        inp = got.pop("input", None)
        inputs = (inp,) if isinstance(inp, str) else ()
        if inp == st.name:
            raise Problem(f"layer '{st.name}' uses itself as its input", call.args[0].loc)
        dim = got.get("dim") if isinstance(got.get("dim"), int) else None
        self.add(ir.Node(st.name, call.name, inputs, got, st.loc, dim))

    def loss(self, st: ast.Setting) -> None:
        self.once("loss", st.loc)
        if len(st.values) != 1:
            raise Problem("loss takes one value, e.g. loss cross_entropy(scores, labels)", st.values[1].loc)
        call = as_call(st.values[0])
        if call.name not in ir.LOSSES:
            raise Problem(f"unknown loss '{call.name}'{did_you_mean(call.name, ir.LOSSES)}; expected "
                          f"{one_of_words(ir.LOSSES)}", call.loc)
        params = (Param("output", reference, positional=True), Param("target", reference, positional=True))
        got = bind(call, params, call.name, self.problems)
        if "output" in got and "target" in got:
            self.graph.graph["loss"] = ir.Loss(call.name, got["output"], got["target"], call.loc)

    def metrics(self, st: ast.Setting) -> None:
        self.once("metrics", st.loc)
        out = []
        for v in st.values:
            if isinstance(v, ast.AtK) and v.name in ir.RANKING_METRICS:
                if v.k < 1:
                    raise Problem(f"{v.name}@k needs k >= 1", v.loc)
                out.append(ir.Metric(v.name, v.k, v.loc))
            elif isinstance(v, ast.Name) and v.text in ir.PLAIN_METRICS:
                out.append(ir.Metric(v.text, 1, v.loc))
            elif isinstance(v, ast.Name) and v.text in ir.RANKING_METRICS:
                raise Problem(f"{v.text} needs a cut-off, e.g. {v.text}@1", v.loc)
            else:
                word = v.name if isinstance(v, ast.AtK) else ast.describe(v)
                hint = did_you_mean(word, ir.RANKING_METRICS + ir.PLAIN_METRICS)
                raise Problem(f"unknown metric '{ast.describe(v)}'{hint}; expected precision@k, recall@k, "
                              "ndcg@k, accuracy or macro_f1", v.loc)
        if len({str(m) for m in out}) != len(out):
            raise Problem("a metric is listed twice", st.loc)
        self.graph.graph["metrics"] = tuple(out)
