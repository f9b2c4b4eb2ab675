"""infer_shapes: the .bolt text before, and the widths after (the text cannot spell a derived width,
so the after side is the table of widths worked out by hand). Every op has a shape rule."""
import pytest

from boltc import ir
from boltc.errors import BoltValidationError
from boltc.frontend import parse
from boltc.passes.infer_shapes import SHAPE_RULES, infer_shapes

BEFORE = '''model m {
  input a: sparse(1000)
  input b: dense(7)
  input t: text(dim=512)
  target y: label(40)
  e = embedding(t, 24)
  h = fc(a, 32, relu)
  c = concat(e, h, b)
  n = layernorm(c)
  s = fc(n, 40, softmax)
  loss cross_entropy(s, y)
}'''
AFTER = {"a": 1000, "b": 7, "t": 512, "y": 40, "e": 24, "h": 32, "c": 24 + 32 + 7, "n": 63, "s": 40}
IN_DIMS = {"e": 512, "h": 1000, "s": 63}


def test_every_op_has_a_shape_rule():
    assert set(SHAPE_RULES) == set(ir.OPS)


def test_widths_after():
    g = parse(BEFORE)
    assert ir.node(g, "c").dim is None and ir.node(g, "n").dim is None      # not known before the pass
    after = infer_shapes(g)
    assert {n.name: n.dim for n in ir.nodes(after)} == AFTER
    assert {n.name: n.attrs["in_dim"] for n in ir.nodes(after) if "in_dim" in n.attrs} == IN_DIMS
    assert ir.node(g, "c").dim is None                                     # the input graph is not mutated


def test_loss_width_must_match_the_target():
    with pytest.raises(BoltValidationError) as info:
        infer_shapes(parse(BEFORE.replace("fc(n, 40", "fc(n, 41"), "s.bolt"))
    e = info.value
    assert e.message == "'s' has 41 outputs but 'y' needs 40 outputs"
    assert (e.location.line, e.location.column) == (10, 13)


def test_binary_target_needs_one_output():
    text = BEFORE.replace("label(40)", "binary").replace("40, softmax", "2, sigmoid").replace(
        "cross_entropy", "binary_cross_entropy")
    with pytest.raises(BoltValidationError) as info:
        infer_shapes(parse(text))
    assert info.value.message == "'s' has 2 outputs but 'y' needs 1 output (a binary target)"


def test_synthetic_labels_beyond_the_target():
    text = BEFORE.replace("input b: dense(7)\n", "").replace("input t: text(dim=512)\n", "").replace(
        "e = embedding(t, 24)\n", "").replace("concat(e, h, b)", "concat(h)").replace(
        "}", "  data { train synthetic(rows=5, labels=50) }\n}")
    text = text.replace("c = concat(h)", "c = fc(h, 8, relu)")
    with pytest.raises(BoltValidationError) as info:
        infer_shapes(parse(text))
    assert info.value.message == "synthetic train data has 50 labels but target 'y' has 40 classes"


def test_xc_file_cannot_feed_a_text_input():
    with pytest.raises(BoltValidationError) as info:
        infer_shapes(parse(BEFORE.replace("}", '  data { train file("a.txt", format=xc) }\n}')))
    assert "has no columns for the text input 't'" in info.value.message


def test_an_xc_files_header_is_checked_against_the_model(tmp_path):
    (tmp_path / "train.txt").write_text("2 1200 40\n1 3:1.0\n0,2 5:0.5\n")
    text = BEFORE.replace("input b: dense(7)\n", "").replace("input t: text(dim=512)\n", "").replace(
        "e = embedding(t, 24)\n", "").replace("concat(e, h, b)", "concat(h)").replace(
        "c = concat(h)", "c = fc(h, 8, relu)").replace("}", '  data { train "train.txt" }\n}')
    path = tmp_path / "m.bolt"
    path.write_text(text)
    with pytest.raises(BoltValidationError) as info:
        infer_shapes(parse(text, str(path)))
    assert info.value.message == "the train file has 1200 features but input 'a' has 1000"
    assert (info.value.location.line, info.value.location.column) == (9, 16)     # the "train.txt" string
    (tmp_path / "train.txt").write_text("2 1000 40\n1 3:1.0\n0,2 5:0.5\n")
    assert infer_shapes(parse(text, str(path))).graph["data"]["train"].path == "train.txt"
