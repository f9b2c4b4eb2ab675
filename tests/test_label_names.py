"""`label(n, as_names=true)`: a CSV label column of integers read as class names (ids in numeric order),
printed by predict; without it the integers are class ids."""
import pytest

import boltc
from boltc.cli import main
from boltc.errors import DataError
from tests.runtime_models import text_source, write_lines

ROWS = [("red apple", "10"), ("green pear", "2"), ("ripe plum", "7")] * 6


def _file(tmp_path):
    return write_lines(tmp_path / "train.tsv", ["text\tlabel"] + [f"{t}\t{l}" for t, l in ROWS])


def test_integer_labels_as_names_and_predict_prints_them(tmp_path, capsys):
    src = text_source('column="text", dim=1024', classes=3, epochs=30, lr=0.05)
    named = src.replace('label(3, column="label")', 'label(3, column="label", as_names=true)')
    assert named != src
    m = boltc.compile(named, backend="numpy", holdout=0.0)
    m.fit(_file(tmp_path), progress=False)
    assert m.plan["target"]["class_names"] == ["2", "7", "10"]        # numeric order, not "10" < "2"
    out = tmp_path / "m.boltc"
    m.save(out)
    assert main(["predict", str(out), "--text", "red apple", "--top-k", "1", "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.split(":")[0] == "10"
    with pytest.raises(DataError, match="outside 0..2"):          # as ids, 10 is no class of 3
        boltc.compile(src, backend="numpy").fit(_file(tmp_path), progress=False)
