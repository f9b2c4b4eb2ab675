"""`ensemble N`: N networks from their own seeds, outputs averaged (runtime/train/ensemble.py).

The oracle: the same model without `ensemble`, trained once per member seed; the ensemble's scores are
the mean of those models' outputs, its ranking their top k. Checked on both backends, dense and sparse
inference, 1 and 2 threads, through a saved model, across a killed and resumed run, and for its errors."""
import numpy as np
import pytest
import scipy.sparse as sp

import boltc
from boltc.commands.check import check_source
from boltc.errors import BoltError, BoltErrorGroup
from boltc.frontend import parse
from boltc.frontend.format import format_source
from boltc.runtime import savefile
from boltc.runtime.distributed.driver import _refuse_single_process_settings
from boltc.runtime.train.ensemble import SEED_STRIDE


def _model(ensemble: str = "ensemble 3", output: str = "fc(h, 12, softmax)", seed: int = 0) -> str:
    return f"""model e {{
  input  x: sparse(40)
  target y: label(12)
  h = fc(x, 16, relu)
  s = {output}
  loss cross_entropy(s, y)
  metrics precision@1
  train {{
    optimizer adam(lr=0.01)
    batch 16
    epochs 3
    seed {seed}
    holdout 0.0
    {ensemble}
  }}
}}
"""


def _data(rows=160, dim=40, classes=12, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(rows, dim, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    w = rng.standard_normal((dim, classes))
    y = np.asarray((X @ w).argmax(1)).ravel()
    Y = sp.csr_matrix((np.ones(rows, np.float32), y, np.arange(rows + 1)), shape=(rows, classes))
    return X, Y


def _mean_output(models, X, sparse: bool):
    """The members' output activations averaged, a member's inactive neurons counting 0."""
    total = 0
    for m in models:
        out = m.executor.forward(m.dataset(X, with_labels=False).take(np.arange(X.shape[0])),
                                 mode="sparse" if sparse else "dense")["s"]
        if isinstance(out, tuple):
            ids, vals = out
            dense = np.zeros((ids.shape[0], 12), np.float32)
            for r in range(ids.shape[0]):
                ok = ids[r] >= 0
                dense[r, ids[r][ok]] = vals[r][ok]
            out = dense
        total = total + np.asarray(out, np.float32)
    return total / len(models)


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_ensemble_is_the_mean_of_its_members_trained_alone(backend):
    X, Y = _data()
    m = boltc.compile(_model(), backend=backend)
    m.fit((X, Y), progress=False)
    assert len(m.members) == 2
    ids, scores = m.predict(X[:40], top_k=3)
    alone = []
    for i in range(3):
        mi = boltc.compile(_model("", seed=SEED_STRIDE * i), backend=backend)
        mi.fit((X, Y), progress=False)
        alone.append(mi)
    mean = _mean_output(alone, X[:40], sparse=False)
    np.testing.assert_array_equal(ids, np.argsort(-mean, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(scores, np.take_along_axis(mean, ids.astype(np.int64), 1), rtol=1e-6)
    # member 0 is exactly the model without `ensemble`
    np.testing.assert_array_equal(m.state.params["s"]["W"], alone[0].state.params["s"]["W"])
    # evaluate ranks with the ensemble too
    top1 = mean.argmax(1)
    want = 100.0 * np.mean(top1 == np.asarray(Y[:40].argmax(1)).ravel())
    assert m.evaluate((X[:40], Y[:40]))["precision@1"] == pytest.approx(want)


def test_sparse_inference_averages_the_members_active_neurons():
    X, Y = _data()
    out = "fc(h, 12, softmax, sparsity=0.5)"
    m = boltc.compile(_model(output=out), backend="native")
    m.fit((X, Y), progress=False)
    ids, scores = m.predict(X[:40], top_k=2, sparse=True)
    alone = []
    for i in range(3):
        mi = boltc.compile(_model("", output=out, seed=SEED_STRIDE * i), backend="native")
        mi.fit((X, Y), progress=False)
        alone.append(mi)
    mean = _mean_output(alone, X[:40], sparse=True)
    np.testing.assert_allclose(scores, np.sort(mean, axis=1)[:, ::-1][:, :2], rtol=1e-6)
    np.testing.assert_array_equal(np.take_along_axis(mean, ids.astype(np.int64), 1), scores)


def test_one_and_two_threads_and_a_saved_model_predict_alike(tmp_path):
    X, Y = _data()
    got = {}
    for threads in (1, 2):
        m = boltc.compile(_model(), backend="native", threads=threads)
        m.fit((X, Y), progress=False)
        got[threads] = m.predict(X, top_k=4)
        m.save(tmp_path / f"e{threads}.boltc")
    np.testing.assert_array_equal(got[1][0], got[2][0])
    np.testing.assert_array_equal(got[1][1], got[2][1])
    loaded = boltc.load(tmp_path / "e1.boltc", backend="native")
    assert len(loaded.members) == 2 and loaded.summary()["ensemble"] == 3
    again = loaded.predict(X, top_k=4)
    np.testing.assert_array_equal(again[0], got[1][0])
    np.testing.assert_array_equal(again[1], got[1][1])
    names = savefile.read_archive(tmp_path / "e1.boltc")[1]
    assert {"ensemble/1/params/s.W.npy", "ensemble/2/params/s.W.npy"} <= set(names)


class Killed(Exception):
    pass


def test_killed_during_a_member_resumes_to_the_uninterrupted_result(tmp_path):
    X, Y = _data()
    ref = boltc.compile(_model(), backend="native")
    ref.fit((X, Y), progress=False)
    ck = tmp_path / "run.ckpt.boltc"
    seen_members = []

    def kill_in_third_member(trainer, record):
        seen_members.append(trainer.plan["train"]["seed"])
        if trainer.plan["train"]["seed"] == 2 * SEED_STRIDE and record["epoch"] == 1:
            raise Killed()
    m = boltc.compile(_model(), backend="native")
    with pytest.raises(Killed):
        m.fit((X, Y), progress=False, checkpoint=ck, callbacks=[kill_in_third_member])
    assert len(savefile.load_model(ck).members) == 1          # members 0 and 1 were kept
    resumed = boltc.compile(_model(), backend="native")
    trained = []
    resumed.fit((X, Y), progress=False, checkpoint=ck, resume=True,
                callbacks=[lambda tr, rec: trained.append(tr.plan["train"]["seed"])])
    assert set(trained) == {2 * SEED_STRIDE}                  # only the unfinished member trained again
    for a, b in zip(resumed.predict(X, top_k=3), ref.predict(X, top_k=3)):
        np.testing.assert_array_equal(a, b)


def test_a_trained_ensemble_is_not_trained_further():
    X, Y = _data()
    m = boltc.compile(_model("ensemble 2"), backend="numpy")
    m.fit((X, Y), progress=False)
    with pytest.raises(BoltError, match="ensemble of 2 trained networks"):
        m.fit((X, Y), progress=False)


def test_distributed_training_refuses_an_ensemble():
    plan = boltc.compile(_model(), backend="numpy").plan
    with pytest.raises(BoltError, match="ensemble"):
        _refuse_single_process_settings(plan)


def test_ensemble_round_trips_through_the_formatted_source():
    g = parse(_model("ensemble 4"), "<m>")
    assert g.graph["train"]["ensemble"] == 4
    assert "ensemble 4" in format_source(g)
    assert parse(format_source(g), "<m>").graph["train"]["ensemble"] == 4


@pytest.mark.parametrize("value, message, column", [
    ("0", "expected a number of networks >= 1, found 0", 14),
    ("17", "expected a number of networks <= 16, found 17", 14),
    ("many", "expected a number of networks, found", 14),
])
def test_bad_ensemble_is_located(value, message, column):
    with pytest.raises(BoltError) as info:
        check_source(_model(f"ensemble {value}"), "m.bolt")
    errors = info.value.errors if isinstance(info.value, BoltErrorGroup) else [info.value]
    assert len(errors) == 1 and message in errors[0].message, [e.message for e in errors]
    assert (errors[0].location.file, errors[0].location.line, errors[0].location.column) == ("m.bolt", 14, column)


def test_ensemble_auto_is_one_network_untuned_and_a_value_the_tuner_decides():
    g = parse(_model("ensemble auto"), "<m>")
    assert g.graph["train"]["ensemble"] == 1
    assert [(t.where, t.kind, t.default) for t in g.graph["tunable"]] == [(("train", "ensemble"), "ensemble", 1)]


@pytest.mark.parametrize("value", [0, 17, "auto", 2.5, True])
def test_a_bad_ensemble_override_says_what_is_expected(value):
    with pytest.raises(BoltError, match="ensemble must be a number of networks from 1 to 16"):
        boltc.compile(_model(""), backend="numpy", ensemble=value)
