"""Artifacts: object + bitcode + manifest; loaded in a fresh process without compiling; rebuilt from
bitcode on a CPU lacking features; tampering detected."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from boltc.errors import ModelFileError
from boltc.runtime.savefile import artifact
from boltc.runtime.data.dataset import Batch
from native_helpers import make_batch, make_plan

HERE = Path(__file__).parent

FRESH = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from boltc import codegen
def no_compiler(*a, **k):
    raise AssertionError("loading an artifact must not compile")
codegen.compile_module = no_compiler
codegen.cached_module = no_compiler
codegen.optimize = no_compiler
codegen.object_from_bitcode = no_compiler
from boltc.runtime.savefile.artifact import load_artifact
from native_helpers import make_batch
plan, state, ex = load_artifact(sys.argv[1], threads=2)
assert ex.native
batch = make_batch(np.random.default_rng(11), 20, 120, 400)
ids, sc = ex.predict(batch, 5)
sids, ssc = ex.predict(batch, 5, sparse=True)
print(json.dumps({"ids": ids.tolist(), "scores": sc.tolist(), "sids": sids.tolist(), "sscores": ssc.tolist()}))
"""


def test_artifact_loads_in_a_fresh_process_without_compiling_and_predicts_the_same(tmp_path):
    plan = make_plan(120, 16, 400, 30)
    out = tmp_path / "m.boltc"
    artifact.write_artifact(None, plan, out)
    _, state, ex = artifact.load_artifact(out)
    batch = make_batch(np.random.default_rng(11), 20, 120, 400)
    ids, sc = ex.predict(batch, 5)
    sids, ssc = ex.predict(batch, 5, sparse=True)
    from boltc.runtime.exec.interp import NumpyExecutor
    spec_ids, spec_sc = NumpyExecutor(plan, state).predict(batch, 5)
    np.testing.assert_array_equal(ids, spec_ids)
    env = dict(os.environ, BOLTC_CACHE=str(tmp_path / "empty-cache"))
    r = subprocess.run([sys.executable, "-c", FRESH, str(out), str(HERE)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    np.testing.assert_array_equal(np.array(got["ids"]), ids)
    np.testing.assert_array_equal(np.array(got["scores"], np.float32), sc)
    np.testing.assert_array_equal(np.array(got["sids"]), sids)
    np.testing.assert_array_equal(np.array(got["sscores"], np.float32), ssc)
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())


def test_missing_cpu_feature_rebuilds_from_bitcode():
    plan = make_plan(50, 8, 60, 10)
    members = artifact.native_members(plan)
    man = json.loads(members[artifact.MANIFEST])
    assert man["symbols"] and man["cpu"] and man["ir_hash"] and man["llvmlite"]
    k_ok = artifact.load_native(members)
    assert not k_ok.rebuilt
    man["features"] += ",+a-feature-no-cpu-has"
    members[artifact.MANIFEST] = json.dumps(man).encode()
    k = artifact.load_native(members)
    assert k.rebuilt
    # the rebuilt kernels compute the same forward as the shipped ones
    from boltc.runtime.exec.native import NativeExecutor
    from boltc.runtime.exec.state import ModelState
    state = ModelState.init(plan)
    batch = make_batch(np.random.default_rng(1), 7, 50, 60)
    a = NativeExecutor(plan, state, kernels=k_ok).forward(batch, "dense")["scores"]
    b = NativeExecutor(plan, state, kernels=k).forward(batch, "dense")["scores"]
    np.testing.assert_array_equal(a, b)


def test_tampered_native_members_are_refused():
    plan = make_plan(50, 8, 60, 10)
    members = artifact.native_members(plan)
    bad = dict(members)
    bad[artifact.OBJ] = members[artifact.OBJ][:-8] + b"\0" * 8
    with pytest.raises(ModelFileError, match="kernels.o"):
        artifact.load_native(bad)
    bad = dict(members)
    bad[artifact.BC] = members[artifact.BC][:100]
    with pytest.raises(ModelFileError, match="kernels.bc"):
        artifact.load_native(bad)
    bad = {artifact.BC: members[artifact.BC]}
    with pytest.raises(ModelFileError, match="manifest"):
        artifact.load_native(bad)


def test_boltc_load_runs_the_artifacts_shipped_kernels(tmp_path, monkeypatch):
    """`boltc compile -o` then `boltc.load`: the executor links the shipped object code; lowering the
    plan again is never needed (made to fail here), and predictions equal the interpreter's."""
    import boltc
    from boltc.cli import main
    model = Path(__file__).parents[1] / "models" / "tiny.bolt"
    out = tmp_path / "tiny.boltc"
    assert main(["compile", str(model), "-o", str(out)]) == 0

    def no_lowering(plan):
        raise AssertionError("the plan was lowered again instead of using the artifact's kernels")
    monkeypatch.setattr("boltc.runtime.exec.native.compile_plan", no_lowering)
    m = boltc.load(out)
    X = m.dataset(m.data_source("test"))
    ids, scores = m.predict(X.inputs["features"][:32], top_k=5)
    assert m.backend == "native" and m.executor.native
    ref = boltc.load(out, backend="numpy")
    ids_ref, scores_ref = ref.predict(X.inputs["features"][:32], top_k=5)
    np.testing.assert_allclose(scores, scores_ref, rtol=1e-5, atol=1e-6)


# sha256 of the reference plans' kernel signatures, per NATIVE_FORMAT. When this test fails, a kernel's
# calling convention changed: bump runtime/savefile/artifact.py NATIVE_FORMAT and add its digest here, so model
# files of the old format are recompiled instead of being called with the wrong arguments.
SIGNATURES_OF_FORMAT = {2: "ec7be4d1d06f43d0d565247e699c94e684b2bee6c5af3e044e671cb75b55772c",
                        3: "b90bd5b5cce22835759dfaa40b2bdc6b113f4f4f971ae4ec07bbcd4413dcb0d9",
                        4: "0a4640ced621d83cab7f99a792865cbc6c77ea3959fc06995ecd0e6e1598a178",
                        5: "665a8cf88a8234b0aa10cb2c6668cf45a94e87340528175ac6d3c4674fdba131",
                        6: "bd5f2af89e5b861cc6ed18740d3a57e5a9906555f832b710f4d346341717be1c",
                        7: "fccdabf69e8e3c30b368bb07aeac2995f5818d73ccd5e8276fbb8fe68912a584"}


def test_kernel_signatures_are_pinned_to_the_native_format():
    from boltc.lower.rules import lower_plan
    plans = [make_plan(50, 8, 60, 10), make_plan(50, 8, 60, None, optimizer="sgd")]
    got = hashlib.sha256(json.dumps([lower_plan(p)[0].signatures for p in plans], sort_keys=True).encode())
    assert got.hexdigest() == SIGNATURES_OF_FORMAT.get(artifact.NATIVE_FORMAT)


def test_native_code_of_another_format_is_recompiled_on_load(tmp_path, monkeypatch):
    """A file written by a boltc with another kernel calling convention loads, recompiles its kernels
    from the plan (with a note) and predicts exactly as the current build does."""
    import boltc
    model = Path(__file__).parents[1] / "models" / "tiny.bolt"
    m = boltc.compile(str(model))
    m.fit(progress=False)
    old = tmp_path / "old.boltc"
    monkeypatch.setattr(artifact, "NATIVE_FORMAT", 1)              # as an older boltc wrote it
    artifact.save_with_native(old, m.source, m.plan, m.state, m.history)
    monkeypatch.undo()
    loaded = boltc.load(old)
    x = m.dataset(m.data_source("test")).inputs["features"]
    ids, scores = loaded.predict(x, top_k=3)
    assert loaded.backend == "native" and "recompiled" in loaded.backend_note
    want_ids, want_scores = m.predict(x, top_k=3)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    with pytest.raises(artifact.StaleNativeCode):                  # the low-level loader says why
        artifact.load_native(dict(loaded._native_members), str(old))
