"""Streamed training data (runtime/data/stream.py): row counts, an epoch's batches, training and evaluation
against the same file read into memory (the oracle), and the sampler restriction."""
import numpy as np
import pytest

import boltc
from boltc.errors import BoltValidationError
from boltc.runtime.data import stream, xcformat
from boltc.runtime.data.synth import SynthSpec, generate
from runtime_models import tiny_source


@pytest.fixture()
def tiny_files(tmp_path):
    """The tiny model's synthetic task as XC files: 1,200 training rows, 300 test rows."""
    paths = {}
    for name, rows, seed in (("train", 1200, 1), ("test", 300, 2)):
        X, Y = generate(SynthSpec(rows=rows, features=300, labels=40, seed=seed, nnz=20, proto_nnz=24,
                                  max_labels=1, noise=0.0))
        paths[name] = tmp_path / f"{name}.txt"
        xcformat.write_xc(paths[name], X, Y)
    return paths


def _model(tmp_path, epochs=3):
    src = tmp_path / "tiny.bolt"
    src.write_text(tiny_source(epochs=epochs))
    return boltc.compile(str(src), backend="numpy")


def _streamed(path, plan, window_bytes=4096, chunk_bytes=2048):
    ds = stream.open_streaming(str(path), "xc", plan, {})
    ds.window_bytes, ds.chunk_bytes = window_bytes, chunk_bytes       # many windows and chunks
    return ds


def test_count_rows_xc_header_and_svmlight_lines(tmp_path, tiny_files):
    assert stream.count_rows(str(tiny_files["train"]), "xc") == 1200
    p = tmp_path / "a.svm"
    p.write_bytes(b"1 3:1\n\n2 4:0.5\n\n\n0 1:2")           # blank lines skipped, no final newline
    assert stream.count_rows(str(p), "svmlight") == 3


def test_an_epoch_visits_every_row_once_in_full_batches(tmp_path, tiny_files):
    m = _model(tmp_path)
    ds = _streamed(tiny_files["train"], m.plan)
    X, Y = xcformat.read_xc(tiny_files["train"])
    got = list(ds.batches(epoch=0, batch=32, seed=5))
    rows = np.concatenate([r for r, _ in got])
    assert sorted(rows.tolist()) == list(range(1200))
    assert [b.size for _, b in got] == [32] * 37 + [16]      # ceil(1200 / 32) batches, only the last short
    for r, b in got[:5]:                                      # each batch holds the rows it names
        np.testing.assert_array_equal(b.inputs["features"].toarray(), X[r].toarray())
        np.testing.assert_array_equal(b.labels.toarray(), Y[r].toarray()[:, :40])
    again = np.concatenate([r for r, _ in ds.batches(epoch=0, batch=32, seed=5)])
    other = np.concatenate([r for r, _ in ds.batches(epoch=1, batch=32, seed=5)])
    np.testing.assert_array_equal(rows, again)                # seeded by (seed, epoch)
    assert (rows != other).any()


def test_streamed_training_learns_like_in_memory(tmp_path, tiny_files):
    mem = _model(tmp_path)
    mem.fit(str(tiny_files["train"]), progress=False)
    streamed = _model(tmp_path)
    streamed.fit(_streamed(tiny_files["train"], streamed.plan), progress=False)
    a = mem.evaluate(str(tiny_files["test"]), sparse=False)["precision@1"]
    b = streamed.evaluate(str(tiny_files["test"]), sparse=False)["precision@1"]
    assert a > 90 and b > 90 and abs(a - b) < 5


def test_streamed_evaluation_equals_in_memory(tmp_path, tiny_files):
    m = _model(tmp_path, epochs=1)
    m.fit(str(tiny_files["train"]), progress=False)
    want = m.evaluate(str(tiny_files["test"]), sparse=False)
    got = m.evaluate({"kind": "file", "path": str(tiny_files["test"]), "stream": True}, sparse=False)
    for k in want:
        if k != "examples_per_s":
            assert got[k] == pytest.approx(want[k], abs=1e-9)


def test_adaptive_sampler_on_streamed_data_is_a_clear_error(tmp_path, tiny_files):
    src = tmp_path / "s.bolt"
    src.write_text(tiny_source().replace("epochs    3", "epochs    3\n    sampler   nw_sketch(rows=8, bits=6)"))
    m = boltc.compile(str(src), backend="numpy")
    with pytest.raises(BoltValidationError, match="needs the training set in memory"):
        m.fit({"kind": "file", "path": str(tiny_files["train"]), "stream": True}, progress=False)


def test_stream_option_in_the_language_and_the_auto_rule(tmp_path, tiny_files, monkeypatch):
    src = tmp_path / "f.bolt"
    src.write_text(tiny_source().replace("train synthetic(rows=300, seed=1, nnz=20, proto_nnz=24, max_labels=1, "
                                         "noise=0.0)", f'train file("{tiny_files["train"]}", stream=true)'))
    m = boltc.compile(str(src), backend="numpy")
    assert m.plan["data"]["train"]["stream"] is True
    assert getattr(m.dataset(m.plan["data"]["train"], allow_stream=True), "streaming", False)
    # auto: streams only when the parsed rows would not fit in the share of free memory
    path = str(tiny_files["train"])
    assert not stream.should_stream(path, None)
    monkeypatch.setattr(stream, "available_memory", lambda: 1000)
    assert stream.should_stream(path, None) and not stream.should_stream(path, False)


def test_trainer_weights_negatives_by_the_data_label_counts(tmp_path, tiny_files):
    """In memory the fill's weights are the training set's label counts; streamed, the running ones."""
    m = _model(tmp_path, epochs=1)
    m.fit(str(tiny_files["train"]), progress=False)
    _, Y = xcformat.read_xc(tiny_files["train"])
    # the rows kept for training: the train block's holdout share is validation (runtime/data/holdout.py)
    from boltc.runtime.data.holdout import holdout_rows
    kept, _ = holdout_rows(Y.shape[0], m.plan["train"]["holdout"], m.plan["train"]["seed"])
    want = np.bincount(Y[kept].indices, minlength=40)
    np.testing.assert_array_equal(m.executor.upkeep.label_frequency, want)
    table = m.executor.upkeep.fill(m.plan["layers"][-1])
    np.testing.assert_array_equal(table.cum, np.cumsum(want + 1))
    s = _model(tmp_path, epochs=1)
    s.fit(_streamed(tiny_files["train"], s.plan), progress=False)
    assert s.executor.upkeep.label_frequency is None


def test_auto_sampler_on_streamed_data_trains_uniformly_and_says_why(tmp_path, tiny_files, capsys):
    src = tmp_path / "a.bolt"
    src.write_text(tiny_source().replace("epochs    3", "epochs    1\n    sampler   auto"))
    m = boltc.compile(str(src), backend="numpy")
    hist = m.fit({"kind": "file", "path": str(tiny_files["train"]), "stream": True}, progress=False)
    assert len(hist["epochs"]) == 1
    assert "sampler auto" in capsys.readouterr().err and "uniform" in hist["epochs"][0]["sampler"]["kind"]
