"""bf16 Adam moments through the runtime: the state the plan asks for, native training against the
interpreter (and the same for any thread count), checkpoints that keep the moments' dtype (older
float32 files still load), resume, and the storage each shipped model gets."""
import copy
from pathlib import Path

import numpy as np
import pytest

from boltc.plan.moments import moment_dtypes
from boltc.pipeline import load_model_source
from boltc.runtime import savefile
from boltc.runtime.exec.interp import NumpyExecutor
from boltc.runtime.exec.native import NativeExecutor
from boltc.runtime.exec.optim import bf16_from_f32, f32_from_bf16
from boltc.runtime.exec.state import ModelState, check_moments
from native_helpers import make_batch, make_plan, random_active, twin_executors

MODELS = Path(__file__).parents[1] / "models"


def bf16_plan(**kw):
    plan = make_plan(200, 20, 300, 30, lr=1e-2, **kw)
    plan["train"]["moments"] = "bf16"
    return plan


def test_state_holds_moments_in_the_planned_storage():
    plan = bf16_plan()
    st = ModelState.init(plan)
    for layer, tensors in st.params.items():
        for t in tensors:
            want = np.float32 if t == "label_count" else np.uint16
            assert st.m[layer][t].dtype == st.v[layer][t].dtype == want, (layer, t)
    check_moments(plan, st)
    st.m["scores"]["W"] = np.zeros(st.params["scores"]["W"].shape, np.float32)
    with pytest.raises(ValueError, match="scores.W"):
        check_moments(plan, st)


def test_native_bf16_training_matches_the_interpreter():
    """The update kernels equal runtime/exec/optim.py bit for bit given the same gradient
    (test_optim_bf16.py); here the gradients differ by summation order, so a bf16 moment may round to
    the neighbouring value (one ulp, 2^-8 relative): moments are compared to that, and the weights to
    one ulp of m's share of a step (lr * 2^-7 per step)."""
    plan = bf16_plan()
    s_native = ModelState.init(plan)
    s_spec = copy.deepcopy(s_native)
    nx, ix = NativeExecutor(plan, s_native, threads=2), NumpyExecutor(plan, s_spec)
    assert nx.native, nx.fallback_reason
    rng = np.random.default_rng(2)
    for step in range(3):
        batch = make_batch(rng, 12, 200, 300)
        active = {"scores": random_active(rng, batch.labels, 12, 300, 30)}
        la = nx.train_step(batch, 1e-2, active=active)
        lb = ix.train_step(batch, 1e-2, active=active)
        np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)
    for layer in s_spec.params:
        for t in s_spec.params[layer]:
            a, b = s_native.params[layer][t], s_spec.params[layer][t]
            np.testing.assert_allclose(a, b, rtol=0, atol=3 * 1e-2 * 2 ** -7, err_msg=f"{layer}.{t}")
            for moments in ("m", "v"):
                ma = f32_from_bf16(getattr(s_native, moments)[layer][t]) if t != "label_count" else None
                if ma is not None:
                    mb = f32_from_bf16(getattr(s_spec, moments)[layer][t])
                    np.testing.assert_allclose(ma, mb, rtol=2 ** -7, atol=1e-30, err_msg=f"{moments} {layer}.{t}")
    touched = s_native.m["scores"]["W"].any(axis=1)
    assert 0 < touched.sum() < 300                       # lazy: only the active rows have moments


def test_native_bf16_training_is_the_same_for_one_and_two_threads():
    plan = bf16_plan()
    s1, s2, one, two = twin_executors(plan)
    rng = np.random.default_rng(5)
    for _ in range(3):
        batch = make_batch(rng, 16, 200, 300)
        one.train_step(batch, 1e-2)
        two.train_step(batch, 1e-2)
    for layer in s1.params:
        for t in s1.params[layer]:
            np.testing.assert_array_equal(s1.params[layer][t], s2.params[layer][t])
            np.testing.assert_array_equal(s1.m[layer][t], s2.m[layer][t])
            np.testing.assert_array_equal(s1.v[layer][t], s2.v[layer][t])


def _train(ex, rng, steps):
    for _ in range(steps):
        batch = make_batch(rng, 12, 200, 300)
        ex.train_step(batch, 1e-2, active={"scores": random_active(rng, batch.labels, 12, 300, 30)})


def _checkpoint(tmp_path, plan, state, name="c.boltc"):
    path = tmp_path / name
    savefile.save_model(path, savefile.state_to_saved("model t {}", plan, state, with_optimizer=True))
    return path


def test_checkpoint_keeps_bf16_moments_and_resume_is_bit_identical(tmp_path):
    plan = bf16_plan()
    whole = ModelState.init(plan)
    part = copy.deepcopy(whole)
    _train(NumpyExecutor(plan, whole), np.random.default_rng(7), 3)
    rng = np.random.default_rng(7)
    _train(NumpyExecutor(plan, part), rng, 2)
    path = _checkpoint(tmp_path, plan, part)
    saved = savefile.load_model(path)
    assert saved.manifest["format_version"] == 2                  # older readers refuse, not misread
    assert saved.optimizer["m"]["scores"]["W"].dtype == np.uint16
    resumed = savefile.state_from_saved(saved, path)
    np.testing.assert_array_equal(resumed.m["scores"]["W"], part.m["scores"]["W"])
    _train(NumpyExecutor(saved.plan, resumed), rng, 1)
    for layer in whole.params:
        for t in whole.params[layer]:
            np.testing.assert_array_equal(resumed.params[layer][t], whole.params[layer][t])
            np.testing.assert_array_equal(resumed.m[layer][t], whole.m[layer][t])
            np.testing.assert_array_equal(resumed.v[layer][t], whole.v[layer][t])


def test_float32_checkpoints_of_older_plans_still_load(tmp_path):
    plan = make_plan(200, 20, 300, 30, lr=1e-2)                 # no `moments` key: an older plan
    assert "moments" not in plan["train"]
    st = ModelState.init(plan)
    _train(NumpyExecutor(plan, st), np.random.default_rng(1), 2)
    path = _checkpoint(tmp_path, plan, st)
    saved = savefile.load_model(path)
    assert saved.manifest["format_version"] == 1                  # nothing an older reader cannot read
    back = savefile.state_from_saved(saved, path)
    assert back.m["scores"]["W"].dtype == np.float32
    np.testing.assert_array_equal(back.v["scores"]["W"], st.v["scores"]["W"])


def test_moments_are_converted_when_the_plan_asks_for_the_other_storage(tmp_path):
    plan = make_plan(200, 20, 300, 30, lr=1e-2)
    st = ModelState.init(plan)
    _train(NumpyExecutor(plan, st), np.random.default_rng(1), 2)
    saved = savefile.load_model(_checkpoint(tmp_path, plan, st))
    saved.plan["train"]["moments"] = "bf16"                       # f32 file, bf16 plan: rounded
    back = savefile.state_from_saved(saved)
    np.testing.assert_array_equal(back.m["scores"]["W"], bf16_from_f32(st.m["scores"]["W"]))
    plan16 = bf16_plan()
    st16 = ModelState.init(plan16)
    _train(NumpyExecutor(plan16, st16), np.random.default_rng(1), 2)
    saved = savefile.load_model(_checkpoint(tmp_path, plan16, st16, "b.boltc"))
    saved.plan["train"]["moments"] = "f32"                        # bf16 file, f32 plan: exact widening
    back = savefile.state_from_saved(saved)
    assert back.m["scores"]["W"].dtype == np.float32
    np.testing.assert_array_equal(back.m["scores"]["W"], f32_from_bf16(st16.m["scores"]["W"]))


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.bolt")), ids=lambda p: p.stem)
def test_only_amazon670k_gets_bf16_moments_automatically(path):
    _, plan = load_model_source(path)
    kinds = moment_dtypes(plan)
    bf16 = sorted(f"{layer}.{t}" for layer, ts in kinds.items() for t, k in ts.items() if k == "bf16")
    assert bf16 == (["scores.W"] if path.stem == "amazon670k" else [])
    assert kinds == plan["train"]["moment_dtypes"]


def test_python_api_override_and_checkpoint_resume_with_bf16_moments(tmp_path):
    import boltc
    from boltc.errors import BoltError
    m = boltc.compile(str(MODELS / "tiny.bolt"), moments="bf16", epochs=2, backend="native")
    assert m.plan["train"]["moment_dtypes"]["scores"]["W"] == "bf16"
    ck = tmp_path / "ck.boltc"
    m.fit(checkpoint=ck, progress=False)
    assert m.state.m["scores"]["W"].dtype == np.uint16 and m.state.m["scores"]["W"].any()
    r = boltc.load(ck)
    np.testing.assert_array_equal(r.state.v["scores"]["W"], m.state.v["scores"]["W"])
    np.testing.assert_array_equal(r.state.params["scores"]["W"], m.state.params["scores"]["W"])
    with pytest.raises(BoltError, match="moments must be one of"):
        boltc.compile(str(MODELS / "tiny.bolt"), moments="fp16")
