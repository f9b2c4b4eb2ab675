"""The shipped text models reach their accuracy goals on the real data (about 13 s for both on this
machine; benchmarks/text_accuracy.py runs the same with timings and 3 seeds). Skipped cleanly when
../shared/data is absent."""
from pathlib import Path

import pytest

import boltc

ROOT = Path(__file__).parents[1]
DATA = ROOT / ".." / "shared" / "data"


@pytest.mark.parametrize("model,data,backend,goal", [
    ("news20.bolt", "20newsgroups", None, 85.0),       # native when it builds
    ("sst2.bolt", "sst2", "numpy", 82.0),              # NumPy: the native backend crashes on 2 classes
])
def test_shipped_text_model_reaches_its_goal(model, data, backend, goal):
    if not (DATA / data).exists():
        pytest.skip(f"{DATA / data} not present")
    m = boltc.compile(str(ROOT / "models" / model), backend=backend)
    train = m.dataset(m.data_source("train"))
    m.plan["target"]["class_names"] = list(train.class_names)
    m.fit(train, validation=None, progress=False)
    acc = m.evaluate(m.data_source("test"))["accuracy"]
    assert acc >= goal
