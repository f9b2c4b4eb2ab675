"""choose_sparsity: before/after pairs as .bolt text. The after text is the before text with the
automatic sparsity written out; the pass's graph must equal the parsed after text (modulo the choices)."""
import pytest

from boltc import ir
from boltc.frontend import parse
from boltc.passes import bolt_rules
from boltc.passes.choose_sparsity import choose_sparsity
from boltc.passes.infer_shapes import infer_shapes
from boltc.passes.validate import validate


def model(out_width, scores="", hidden=""):
    return f'''model m {{
  input x: sparse(100)
  target y: multilabel({out_width})
  h = fc(x, 16, relu{hidden})
  s = fc(h, {out_width}, softmax{scores})
  loss cross_entropy(s, y)
}}'''


def nodes(g):
    return [ir.replace(n, loc=ir.Loc()) for n in ir.nodes(g)]


def run(text):
    return choose_sparsity(infer_shapes(validate(parse(text))))


def expect(before, after):
    got = run(before)
    assert nodes(got) == nodes(infer_shapes(parse(after)))
    return got


def _share(active, width):
    return next(v for v in (active / width, __import__("math").nextafter(active / width, 1.0))
                if int(v * width) == active)


@pytest.mark.parametrize("width, sparsity", [
    (449, 1.0), (450, 1.0), (8191, 1.0), (8192, 0.25), (10000, _share(2048, 10000)), (19999, _share(2048, 19999)),
    (37392, _share(2048, 37392)), (409599, _share(2048, 409599)), (409600, 0.005), (670091, 0.005)])
def test_auto_output_sparsity_at_every_boundary(width, sparsity):
    """Dense below MIN_ACTIVE / MAX_ACTIVE_SHARE = 8192 labels; above, BOLT's share raised to at least
    MIN_ACTIVE = 2048 active neurons (BOLT's 0.005 takes over at 409,600 labels)."""
    got = expect(model(width), model(width, f", sparsity={sparsity!r}", ", sparsity=1.0"))
    choice = next(c for c in got.graph["choices"] if c.node == "s")
    assert (choice.key, choice.value) == ("sparsity", sparsity)
    assert "BOLT" in choice.reason
    assert (": dense (" in choice.reason) == (sparsity == 1.0)


def test_hidden_layers_stay_dense_and_say_why():
    got = expect(model(10000), model(10000, f", sparsity={_share(2048, 10000)!r}", ", sparsity=1.0"))
    (hidden,) = [c for c in got.graph["choices"] if c.node == "h"]
    assert hidden.value == 1.0 and "hidden layer" in hidden.reason


def test_sparsity_given_by_hand_is_kept_and_not_a_choice():
    got = expect(model(300, ", sparsity=0.1", ", sparsity=0.25"), model(300, ", sparsity=0.1", ", sparsity=0.25"))
    assert [(c.node, c.key, c.value) for c in got.graph["choices"]] == [("s", "execution", "sparse")]
    assert "stays sparse: active set 30 of 300 (10%)" in got.graph["choices"][0].reason


def test_an_output_with_a_large_active_share_runs_dense_when_cheaper():
    """30 -> 300 at sparsity 0.5, batch 256: sparse 3 * 150 * 16 * 4 + 300 * 16 * 12 / 256 = 29,025
    multiply-adds per example, plus hashing 256 tables x 3 hashes x 8 entries x 6.5 and reading 771
    bucket slots x 100 (113 ids to find, 15% of the slots filled) = 117,036, against dense
    3 * 300 * 16 + 225 = 14,625 (the fixed estimate, boltc/passes/execution_cost.py)."""
    got = expect(model(300, ", sparsity=0.5"), model(300, ", sparsity=1.0", ", sparsity=1.0"))
    (choice,) = [c for c in got.graph["choices"] if c.key == "execution"]
    assert (choice.node, choice.value) == ("s", "dense")
    assert "runs dense: active set 150 of 300 (50%)" in choice.reason
    assert "sparse 0.15M, dense 0.01M" in choice.reason and "fixed estimate" in choice.reason


def test_hash_none_makes_auto_dense():
    got = expect(model(50000, ", hash=none"), model(50000, ", sparsity=1.0, hash=none", ", sparsity=1.0"))
    assert "hash=none" in next(c for c in got.graph["choices"] if c.node == "s").reason


def test_the_table_is_monotone():
    widths = [10, 449, 450, 1000, 5000, 15000, 10**6]
    values = [bolt_rules.bolt_sparsity(w) for w in widths]
    assert values == sorted(values, reverse=True)
