"""validate: a valid model passes through unchanged (before == after); each kind of mistake it
finds is reported at its place. Written as .bolt text."""
import pytest

from boltc import ir
from boltc.errors import BoltError, BoltErrorGroup, BoltValidationError
from boltc.frontend import graphs_equal, parse
from boltc.passes.validate import find_errors, validate

VALID = '''model m {
  input doc: text(column="body")
  input x: dense(8)
  target y: binary
  bag = embedding(doc, 16)
  n = layernorm(x)
  j = concat(bag, n)
  s = fc(j, 1, sigmoid)
  loss binary_cross_entropy(s, y)
  metrics accuracy
}'''


def test_a_valid_model_is_unchanged():
    g = parse(VALID)
    after = validate(g)
    assert after is g and graphs_equal(after, parse(VALID))


def errors(text):
    with pytest.raises(BoltError) as info:
        validate(parse(text, "v.bolt"))
    e = info.value
    return [(x.location.line, x.location.column, x.message) for x in (e.errors if isinstance(e, BoltErrorGroup) else [e])]


def test_layernorm_of_a_sparse_input():
    assert errors(VALID.replace("layernorm(x)", "layernorm(doc)").replace("input x: dense(8)\n", "")) == [
        (5, 17, "layernorm needs dense values; 'doc' is a text input: read it with fc or embedding first")]


def test_binary_target_with_cross_entropy():
    text = VALID.replace("binary_cross_entropy(s, y)", "cross_entropy(s, y)").replace("1, sigmoid", "1, softmax")
    assert errors(text) == [(9, 8, "cross_entropy does not fit a binary target; use binary_cross_entropy")]


def test_precision_on_a_binary_target():
    assert errors(VALID.replace("metrics accuracy", "metrics precision@1")) == [
        (10, 11, "precision@1 needs a label or multilabel target; use accuracy or macro_f1 for binary")]


def test_loss_output_must_not_feed_another_layer():
    text = VALID.replace("  loss", "  t = fc(s, 2, relu)\n  loss")
    assert errors(text) == [(9, 10, "the loss output 's' cannot feed other layers ('t' reads it)")]


def test_loss_on_an_input():
    # the wrong output is the mistake; the layers it leaves unused are not reported on top of it
    assert errors(VALID.replace("binary_cross_entropy(s, y)", "binary_cross_entropy(x, y)")) == [
        (9, 29, "the loss needs the scores of an fc layer; 'x' is an input")]


def test_no_input_no_target_no_loss_at_the_model_line():
    got = errors("# nothing yet\nmodel empty {\n}\n")
    assert [(line, col) for line, col, _ in got] == [(2, 1)] * 3
    assert [m.split(";")[0] for _, _, m in got] == ["the model has no input", "the model has no target",
                                                    "the model has no loss"]


def test_a_cycle_of_three():
    text = VALID.replace("concat(bag, n)", "concat(bag, s2)").replace("  s = fc(j, 1, sigmoid)",
                                                                     "  s2 = fc(j, 8, relu)\n  s = fc(j, 1, sigmoid)")
    (line, col, msg), = errors(text)
    assert msg == "layers form a cycle: j -> s2 -> j" and (line, col) == (8, 3)


def test_find_errors_returns_the_list_for_check():
    errs = find_errors(parse(VALID.replace("embedding(doc", "embedding(x")))
    assert len(errs) == 2 and all(isinstance(e, BoltValidationError) for e in errs)
    assert errs[0].message.startswith("embedding needs a sparse input")


def test_graph_built_in_python_is_held_to_the_same_rules():
    g = ir.new_graph(model="py", file="<py>", source="", loss=ir.Loss("cross_entropy", "s", "y"))
    ir.add_node(g, ir.Node("y", "target", (), {"kind": "multi", "classes": 3, "column": None}, dim=3))
    ir.add_node(g, ir.Node("s", "fc", ("ghost",), {"dim": 3, "activation": "softmax", "sparsity": "auto",
                                                   "hash": "auto", "bias": True}, dim=3))
    msgs = [e.message for e in find_errors(g)]
    assert "'ghost' is not defined" in msgs and any("no input" in m for m in msgs)
