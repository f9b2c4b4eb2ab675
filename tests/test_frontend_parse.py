"""The parser and the graph it builds: every construct of the language, its values and defaults,
locations, the formatter round trip, the plan entries, and BOLTC_DEBUG."""
import json
from pathlib import Path

from boltc import debug, ir
from boltc.frontend import format_source, graphs_equal, parse
from boltc.plan import TRAIN_DEFAULTS
from boltc.pipeline import load_model_source
from boltc.passes.to_plan import to_plan

# every construct once (also the example in docs/language.md)
KITCHEN_SINK = '''# a comment on its own line
model everything {
  input  words:  text(column="body", tokenizer=chars(4), ngrams=3, lowercase=false, dim=4096, values=log, seed=9,
                      normalize=none)
  input  shop:   categorical(column="store", dim=512, seed=1)
  input  feats:  sparse(300)   # a trailing comment
  input  price:  dense(4)
  target topic:  label(700, column="topic")

  bag    = embedding(shop, 16, reduce=mean)
  wide   = fc(words, 64, relu, bias=false)
  f2     = fc(feats, 32, tanh)
  p2     = fc(price, 8, sigmoid)
  joined = concat(bag, wide, f2, p2,)
  normed = layernorm(joined, eps=0.001)
  logits = fc(normed, 700, softmax, sparsity=0.05, hash=dwta(tables=20, hashes=3, range=9, reservoir=16))

  loss    cross_entropy(logits, topic)
  metrics precision@1, recall@5, accuracy

  train {
    optimizer  sgd(lr=0.5, momentum=0.9)
    batch      128
    epochs     7
    schedule   step(every=2, gamma=0.5, warmup=10)
    sampler    auto(rows=16, bits=6, mix=0.3, decay=0.9, reweight=true, temperature=2.0)
    threads    2
    seed       11
    checkpoint 2
    inference  sparse
    distributed(workers=4, address="10.0.0.1:6379", exchange_every=2)
  }

  data {
    train      file("train.csv", format=csv, delimiter=";", header=true)
    test       "test.csv"
    validation file("valid.tsv.gz", format=tsv, max_rows=100)
  }
}
'''


def test_nodes_edges_and_locations():
    g = parse(KITCHEN_SINK, "k.bolt")
    joined = ir.node(g, "joined")
    assert joined.op == "concat" and joined.inputs == ("bag", "wide", "f2", "p2")
    assert [g.edges[src, "joined"]["index"] for src in joined.inputs] == [0, 1, 2, 3]
    assert joined.loc == ir.Loc(14, 3)
    assert ir.node(g, "feats").loc == ir.Loc(6, 10)                       # the name, after `input`
    wide = ir.node(g, "wide")
    assert (wide.dim, wide.attrs["activation"], wide.attrs["bias"]) == (64, "relu", False)
    assert wide.attrs["sparsity"] == "auto" and wide.attrs["hash"] == "auto"
    assert ir.node(g, "logits").attrs["hash"] == {"family": "dwta", "tables": 20, "hashes": 3, "range_bits": 9,
                                                    "reservoir": 16}
    assert ir.node(g, "normed").attrs == {"eps": 0.001}
    assert g.graph["loss"] == ir.Loss("cross_entropy", "logits", "topic", ir.Loc(18, 11))
    assert [str(m) for m in g.graph["metrics"]] == ["precision@1", "recall@5", "accuracy"]


def test_inputs_and_target_attrs():
    g = parse(KITCHEN_SINK)
    words = ir.node(g, "words").attrs
    assert words == {"kind": "text", "column": "body", "tokenizer": "chars", "char_k": 4, "ngrams": 3,
                     "lowercase": False, "dim": 4096, "values": "log", "seed": 9, "normalize": "none",
                     "idf": False}
    assert ir.node(g, "shop").attrs == {"kind": "categorical", "column": "store", "dim": 512, "seed": 1,
                                        "normalize": "none"}
    assert ir.node(g, "topic").attrs == {"kind": "single", "classes": 700, "column": "topic"}


def test_text_defaults_take_the_inputs_name_as_column():
    g = parse("model m { input doc: text() target y: binary h = fc(doc, 1, sigmoid) "
              "loss binary_cross_entropy(h, y) }")
    a = ir.node(g, "doc").attrs
    assert (a["column"], a["tokenizer"], a["char_k"], a["ngrams"], a["lowercase"], a["values"]) == \
        ("doc", "words", None, 1, True, "counts")
    assert ir.node(g, "y").attrs == {"kind": "binary", "classes": 1, "column": None}


def test_train_block_values():
    t = parse(KITCHEN_SINK).graph["train"]
    assert t == {"optimizer": "sgd", "lr": 0.5, "momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
                 "batch": 128, "epochs": 7, "schedule": {"kind": "step", "every": 2, "gamma": 0.5, "warmup": 10},
                 "sampler": {"kind": "auto", "rows": 16, "bits": 6, "mix": 0.3, "decay": 0.9,
                             "reweight": True, "temperature": 2.0},
                 "threads": 2, "seed": 11, "checkpoint_every": 2, "inference": "sparse", "weight_decay": 0.0, "moments": "auto",
                 "holdout": 0.1,
                 "distributed": {"workers": 4, "address": "10.0.0.1:6379", "exchange_every": 2, "exchange": "sparse"}}


def test_train_defaults():
    g = parse("model m { input x: sparse(5) target y: label(3) s = fc(x, 3, softmax) loss cross_entropy(s, y) }")
    assert g.graph["train"] == TRAIN_DEFAULTS
    assert TRAIN_DEFAULTS["lr"] == 1e-3 and TRAIN_DEFAULTS["batch"] == 256 and TRAIN_DEFAULTS["epochs"] == 5
    assert TRAIN_DEFAULTS["threads"] == 0 and TRAIN_DEFAULTS["inference"] == "dense"
    assert "distributed" not in g.graph["train"]


def test_inference_modes():
    base = "model m { input x: sparse(5) target y: label(3) s = fc(x, 3, softmax) loss cross_entropy(s, y) "
    for mode in ("dense", "sparse", "both"):
        assert parse(base + f"train {{ inference {mode} }} }}").graph["train"]["inference"] == mode


def test_sgd_default_lr_and_bare_optimizer_word():
    g = parse("model m { input x: sparse(5) target y: label(3) s = fc(x, 3, softmax) loss cross_entropy(s, y) "
              "train { optimizer sgd } }")
    assert (g.graph["train"]["optimizer"], g.graph["train"]["lr"]) == ("sgd", 0.01)


def test_data_block():
    d = parse(KITCHEN_SINK).graph["data"]
    assert d["train"] == ir.DataSource("file", "train.csv", "csv", {"delimiter": ";", "header": True}, ir.Loc(35, 16))
    assert (d["test"].path, d["test"].format, d["test"].options) == ("test.csv", None, {})
    assert d["validation"].options == {"max_rows": 100}


def test_round_trip_of_every_construct():
    g = parse(KITCHEN_SINK, "k.bolt")
    text = format_source(g)
    assert graphs_equal(g, parse(text))
    assert "# a comment" not in text and "hash=dwta(tables=20, hashes=3, range=9, reservoir=16)" in text


def test_graphs_equal_sees_a_difference():
    g = parse(KITCHEN_SINK)
    assert not graphs_equal(g, parse(KITCHEN_SINK.replace("dim=512", "dim=513")))
    assert not graphs_equal(g, parse(KITCHEN_SINK.replace("epochs     7", "epochs 8")))
    assert graphs_equal(g, parse("\n\n" + KITCHEN_SINK.replace("  ", " ")))     # layout does not matter


def test_numbers_strings_and_aliases():
    g = parse('model m { input x: sparse(5) target y: label(3) '
              's = fc(x, 3, softmax, sparsity=1e-1, hash=dwta(bits=6, tables=1)) loss cross_entropy(s, y) '
              'data { train "dir/with \\"quote\\".txt" } }')
    s = ir.node(g, "s").attrs
    assert s["sparsity"] == 0.1 and s["hash"] == {"family": "dwta", "range_bits": 6, "tables": 1}
    assert g.graph["data"]["train"].path == 'dir/with "quote".txt'
    assert graphs_equal(g, parse(format_source(g)))


def test_plan_inputs_entries_carry_featuriser_attrs(tmp_path):
    path = tmp_path / "sub" / "k.bolt"
    path.parent.mkdir()
    path.write_text(KITCHEN_SINK)
    graph, plan = load_model_source(path)
    words = next(i for i in plan["inputs"] if i["name"] == "words")
    assert words == {"name": "words", "kind": "text", "dim": 4096, "column": "body", "tokenizer": "chars",
                     "char_k": 4, "ngrams": 3, "lowercase": False, "values": "log", "seed": 9, "normalize": "none",
                     "idf": False}
    assert next(i for i in plan["inputs"] if i["name"] == "shop") == {
        "name": "shop", "kind": "categorical", "dim": 512, "column": "store", "seed": 1, "normalize": "none"}
    assert plan["target"] == {"name": "topic", "kind": "single", "classes": 700, "column": "topic"}
    assert plan["data"]["train"] == {"kind": "file", "path": str(path.parent / "train.csv"), "format": "csv",
                                     "delimiter": ";", "header": True}
    assert plan["data"]["test"]["format"] == "csv"           # from the name
    assert plan["data"]["validation"]["format"] == "tsv"
    assert plan["train"]["distributed"] == {"workers": 4, "address": "10.0.0.1:6379", "exchange_every": 2, "exchange": "sparse"}
    layers = {layer["name"]: layer for layer in plan["layers"]}
    assert layers["bag"] == {"name": "bag", "op": "embedding", "inputs": ["shop"], "in_dim": 512, "dim": 16,
                             "reduce": "mean", "input_sparse": True, "layout": "in_major"}
    assert layers["joined"] == {"name": "joined", "op": "concat", "inputs": ["bag", "wide", "f2", "p2"], "dim": 120}
    assert layers["normed"] == {"name": "normed", "op": "layernorm", "inputs": ["joined"], "dim": 120, "eps": 0.001}
    assert layers["p2"]["input_sparse"] is False and layers["p2"]["layout"] == "out_major"
    assert layers["wide"]["input_sparse"] is True and layers["wide"]["bias"] is False
    assert layers["logits"]["hash"]["tables"] == 20 and layers["logits"]["active"] == 35
    json.dumps(plan)


def test_load_model_source_accepts_text_and_resolves_against_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    graph, plan = load_model_source(KITCHEN_SINK)
    assert graph.graph["file"] == "<string>"
    assert plan["data"]["test"]["path"] == str(Path(tmp_path) / "test.csv")


def test_to_plan_runs_the_passes_on_a_parsed_graph():
    plan = to_plan(parse(KITCHEN_SINK))
    assert plan["memory"]["total"] > 0 and plan["layers"][-1]["sparsity"] == 0.05


def test_debug_levels(monkeypatch, capsys):
    monkeypatch.setenv("BOLTC_DEBUG", "2")
    assert debug.level() == 2
    load_model_source(KITCHEN_SINK)
    err = capsys.readouterr().err
    for stage in ("parse", "validate", "infer_shapes", "choose_sparsity", "choose_hashing", "plan_memory"):
        assert f"[boltc] {stage}: " in err and " ms" in err
    assert "graph after choose_hashing" in err and "logits = fc(normed" in err
    assert "---- plan ----" not in err                      # level 3 only
    monkeypatch.setenv("BOLTC_DEBUG", "0")
    load_model_source(KITCHEN_SINK)
    assert capsys.readouterr().err == ""


def test_the_language_reference_example_is_a_valid_model():
    import re
    from boltc.commands.check import check_source
    doc = (Path(__file__).parents[1] / "docs" / "language.md").read_text()
    (example,) = re.findall(r"```\n(model everything.*?)```", doc, re.S)
    graph = check_source(example, "language.md")
    assert {n.op for n in ir.nodes(graph)} == set(ir.OPS)          # shows every op
    assert {n.attrs["kind"] for n in ir.nodes(graph) if n.op == "input"} == set(ir.INPUT_KINDS)
    assert graphs_equal(parse(example), parse(format_source(parse(example))))


def test_debug_summary_adds_up_and_counts_the_start_up():
    """The wall-clock line: parts nested in a part count once, and the process's start-up before the
    command (interpreter and imports) is its own part where /proc gives the start time."""
    import re
    import time
    debug.reset()
    with debug.stage("outer", part="train", quiet=True):
        time.sleep(0.03)
        with debug.stage("inner", part="evaluate", quiet=True):
            time.sleep(0.02)
    line, cpu_line = debug.summary().splitlines()
    assert cpu_line.startswith("[boltc] cpu time ")
    wall = float(re.search(r"wall clock ([\d.]+)s", line).group(1))
    parts = dict((k, float(v)) for k, v in re.findall(r"([\w-]+) ([\d.]+)s", line.split(": ", 1)[1]))
    assert parts["evaluate"] >= 0.02 and parts["train"] >= 0.03 - 0.005
    assert abs(sum(parts.values()) - wall) <= 0.011 * len(parts)          # each cell rounded to 0.01
    age = debug.process_age()
    if age is not None:                         # Linux: the test process started before this test
        assert parts["start-up"] > 0 and age >= parts["start-up"]
