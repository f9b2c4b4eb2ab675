"""`boltc compile`: the explanation, and the plain message when native lowering is missing."""
import sys
import re
from pathlib import Path

from boltc.cli import main

TINY = Path(__file__).parents[1] / "models" / "tiny.bolt"


def test_compile_prints_graph_memory_and_choices(capsys):
    assert main(["compile", str(TINY)]) == 0
    out = capsys.readouterr().out
    # tiny: 256 -> 32 relu -> 500 softmax, sparsity 0.2 by hand (100 active), DWTA settings automatic
    assert "hidden    fc      features  (batch, 32)   8,224" in out          # 256*32 + 32
    assert "scores    fc      hidden    (batch, 500)  16,500" in out         # 32*500 + 500
    assert "parameters: 24,724" in out
    assert "sparsity 0.2 (100 active)" in out
    assert "scores.hash" in out and "scores.sparsity" not in out
    assert "total" in out and "planning only" in out
    assert "scores.W.adam_m_v" not in out                                 # per-buffer lines need --explain


def test_compile_explain_lists_every_buffer_and_the_written_out_model(capsys):
    assert main(["compile", str(TINY), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "scores.W.adam_m_v" in out and "128.00 kB" in out             # 2 moments x 32*500 x 4 B
    assert "scores = fc(hidden, 500, softmax, sparsity=0.2, hash=dwta(" in out


def test_compile_output_without_native_lowering_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "boltc.runtime.savefile.artifact", None)       # import now fails
    assert main(["compile", str(TINY), "-o", str(tmp_path / "tiny.boltc")]) == 1
    err = capsys.readouterr().err
    assert "native lowering is not available in this build" in err
    assert not (tmp_path / "tiny.boltc").exists()


def test_compile_reports_model_errors_like_check(tmp_path, capsys):
    bad = tmp_path / "bad.bolt"
    bad.write_text(TINY.read_text().replace("fc(features, 32, relu)", "fc(feature, 32, relu)"))
    assert main(["compile", str(bad)]) == 1
    assert f"{bad}:9:15: error: 'feature' is not defined" in capsys.readouterr().err


def test_compile_shows_the_samplers_settings_and_reasons(tmp_path, capsys):
    model = tmp_path / "tn.bolt"
    model.write_text(TINY.read_text().replace("    seed      7\n", "    seed      7\n    sampler   nw_sketch(rows=32)\n"))
    assert main(["compile", str(model)]) == 0
    out = capsys.readouterr().out
    assert "sampler nw_sketch" in out
    assert re.search(r"\n  rows +32 +set in the model file", out)
    assert "-> 10 for N=2000" in out           # bits = round(log2(2000)) - 1 = 10 from the 2,000 synthetic rows
