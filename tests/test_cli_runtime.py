"""The runtime commands end to end: run, train (+ a real SIGKILL and --resume), eval, predict, inspect, synth."""
import os
import subprocess
import sys

import numpy as np
import pytest

from boltc.cli import main
from boltc.runtime import savefile
from boltc.runtime.data import xcformat
from runtime_models import kill_and_resume, text_source, tiny_source, write_lines, write_test_set


def model_file(tmp_path, epochs=2, rows=300):
    p = tmp_path / "tiny.bolt"
    p.write_text(tiny_source(epochs, rows))
    return p


def test_run_eval_inspect_predict(tmp_path, capsys):
    bolt = model_file(tmp_path)
    out = tmp_path / "tiny.boltc"
    assert main(["run", str(bolt), "-o", str(out), "--backend", "numpy", "--no-progress"]) == 0
    cap = capsys.readouterr()
    text = cap.out
    assert "precision@1" in text and "dense inference" in text and "sparse inference" in text
    # --no-progress drops the bar but keeps one line per epoch
    assert [ln.split()[:2] for ln in cap.err.splitlines() if ln.startswith("epoch ")] == [["epoch", "1"],
                                                                                          ["epoch", "2"]]
    assert out.exists() and not (tmp_path / "tiny.boltc.ckpt").exists()   # removed once the run finished

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dwta" in text and "10 of 40 active" in text and "epoch 2" in text

    X, Y = savefile.load_model(out), None
    assert X.history["epochs"][-1]["epoch"] == 2

    # eval on a file written from the test set gives the same numbers as the run's own evaluation
    import boltc
    m = boltc.load(out, backend="numpy")
    test = tmp_path / "test.txt"
    ds = write_test_set(m, test)
    assert main(["eval", str(out), "--test", str(test), "--backend", "numpy", "--json", "--dense"]) == 0
    import json
    res = json.loads(capsys.readouterr().out)
    assert res["dense"]["precision@1"] == pytest.approx(m.evaluate(ds, sparse=False)["precision@1"])

    assert main(["predict", str(out), "--input", str(test), "--top-k", "2", "--backend", "numpy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    want, _ = m.predict(ds, top_k=2, sparse=False)
    assert len(lines) == 100
    assert [int(t.split(":")[0]) for t in lines[0].split()] == want[0].tolist()


def test_predict_reads_stdin(tmp_path):
    bolt = model_file(tmp_path, epochs=1)
    out = tmp_path / "m.boltc"
    assert main(["run", str(bolt), "-o", str(out), "--backend", "numpy", "--no-progress"]) == 0
    r = subprocess.run([sys.executable, "-m", "boltc.cli", "predict", str(out), "--top-k", "3", "--backend", "numpy"],
                       input="1:0.5 3:1\n\n7:1\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert len(rows) == 2 and all(len(x.split()) == 3 for x in rows)
    bad = subprocess.run([sys.executable, "-m", "boltc.cli", "predict", str(out), "--backend", "numpy"],
                         input="1:0.5\n3:x\n", capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "<stdin>:2" in bad.stderr and "Traceback" not in bad.stderr


def test_user_errors_exit_1_without_traceback(tmp_path, capsys):
    (tmp_path / "x.boltc").write_bytes(b"PK\x03\x04garbage")
    assert main(["inspect", str(tmp_path / "x.boltc")]) == 1
    assert "error:" in capsys.readouterr().err
    bolt = model_file(tmp_path)
    assert main(["train", str(bolt), "--train", str(tmp_path / "none.txt"), "-o", str(tmp_path / "o.boltc"),
                 "--backend", "numpy", "--no-progress"]) == 1
    assert "not found" in capsys.readouterr().err


def test_synth_writes_readable_xc(tmp_path, capsys):
    assert main(["synth", "-o", str(tmp_path / "d"), "--rows", "500", "--test-rows", "50", "--features", "1000",
                 "--labels", "300", "--nnz", "30", "--gzip"]) == 0
    X, Y = xcformat.read_xc(tmp_path / "d" / "train.txt.gz")
    assert X.shape == (500, 1000) and Y.shape == (500, 300)
    from boltc.runtime.data import synth
    X0, Y0 = synth.generate(dict(rows=500, features=1000, labels=300, nnz=30, seed=1))
    np.testing.assert_allclose(X.toarray(), X0.toarray(), rtol=1e-5)
    assert (Y != Y0).nnz == 0
    assert xcformat.read_xc(tmp_path / "d" / "test.txt.gz")[0].shape == (50, 1000)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    """A real process killed (SIGKILL) after its first checkpoint; `--resume` finishes the run; the saved
    model equals the one of a run that was never interrupted."""
    bolt = model_file(tmp_path, epochs=4, rows=800)
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "boltc.cli", "train", str(bolt), "--backend", "numpy", "--no-progress"]
    a, b, done = kill_and_resume(cmd, tmp_path, env)
    assert 1 <= done <= 4
    for layer, tensors in a.params.items():
        for k, arr in tensors.items():
            np.testing.assert_array_equal(b.params[layer][k], arr, err_msg=f"{layer}.{k}")
    assert [e["loss"] for e in a.history["epochs"]] == [e["loss"] for e in b.history["epochs"]]


TEXT_MODEL = text_source('column="sentence", tokenizer=words, ngrams=1, dim=1024', hidden=8, lr=0.05, batch=8,
                         epochs=15)


def test_text_model_train_and_predict_text(tmp_path, capsys):
    rows = ["label\tsentence"] + [f"1\tgood great fine {i}" for i in range(20)] + \
           [f"0\tbad awful poor {i}" for i in range(20)]
    write_lines(tmp_path / "t.tsv", rows)
    (tmp_path / "txt.bolt").write_text(TEXT_MODEL)
    out = tmp_path / "txt.boltc"
    assert main(["train", str(tmp_path / "txt.bolt"), "--train", str(tmp_path / "t.tsv"), "--test",
                 str(tmp_path / "t.tsv"), "-o", str(out), "--backend", "numpy", "--no-progress"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["predict", str(out), "--text", "great and good", "--text", "awful, bad", "--backend", "numpy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [l.split("\t")[0] for l in lines] == ["1", "0"]
    assert float(lines[0].split("\t")[1]) > 0.5 > float(lines[1].split("\t")[1])
