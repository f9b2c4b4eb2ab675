"""`train { upkeep_budget F }`: .bolt text before, the plan and the executor's LSH upkeep after.

The runtime read `train.upkeep_budget` from the plan before the language accepted it; now the train
block sets it (a fraction in (0, 1], checked in boltc/frontend/blocks.py; errors are in
test_frontend_errors.py) and leaving it out keeps the runtime's default.
"""
import boltc
import pytest
from boltc.frontend import format_source, graphs_equal, parse
from boltc.runtime.lsh.upkeep import DEFAULT_BUDGET

SOURCE = """model m {{
  input  x: sparse(200)
  target y: multilabel(1000)
  h = fc(x, 16, relu)
  s = fc(h, 1000, softmax, sparsity=0.1)
  loss cross_entropy(s, y)
  train {{ batch 32 {setting} }}
}}"""


def _upkeep(setting: str):
    model = boltc.compile(SOURCE.format(setting=setting), backend="numpy")
    return model.plan["train"], model.executor.upkeep


def test_without_the_setting_the_plan_has_no_key_and_the_runtime_default_applies():
    train, upkeep = _upkeep("")
    assert "upkeep_budget" not in train
    assert upkeep.budget == DEFAULT_BUDGET == 0.06


def test_the_setting_reaches_the_plan_and_the_upkeep_schedule():
    train, upkeep = _upkeep("upkeep_budget 0.25")
    assert train["upkeep_budget"] == 0.25 and upkeep.budget == 0.25
    # a smaller budget never refills the tables more often (the 1000-wide output layer is LSH-sparse)
    _, tight = _upkeep("upkeep_budget 0.0001")
    layer = next(l for l in tight.plan["layers"] if l["name"] == "s")
    assert layer["hash"]
    assert tight.intervals(layer, 100)[0] > upkeep.intervals(layer, 100)[0]


def test_the_setting_survives_the_source_round_trip():
    g = parse(SOURCE.format(setting="upkeep_budget 0.5"))
    text = format_source(g)
    assert "upkeep_budget 0.5" in text
    assert graphs_equal(g, parse(text))


def test_upkeep_budget_as_a_python_override(tmp_path):
    from boltc.errors import BoltError
    from runtime_models import tiny_source
    src = tmp_path / "t.bolt"
    src.write_text(tiny_source())
    assert boltc.compile(str(src), backend="numpy", upkeep_budget=0.1).plan["train"]["upkeep_budget"] == 0.1
    with pytest.raises(BoltError, match="fraction"):
        boltc.compile(str(src), backend="numpy", upkeep_budget=6)
