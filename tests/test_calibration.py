"""The host calibration of the sparse-or-dense choice (boltc/calibration.py): the choice follows the
measured costs both ways, the cache survives a read-only folder and a corrupt entry, and a real
measurement gives usable numbers. Measurements are faked where the test is about the cache."""
import json

import pytest

import boltc.pipeline  # noqa: F401  (installs the host calibration as the passes' cost source)
from boltc import calibration, kernel_cache
from boltc.passes import execution_cost
from test_kernel_cache import _make_read_only
from test_pass_choose_sparsity import model, run

# a 300-wide output at sparsity 0.5 reading a 16-wide hidden layer, batch 256 (the pass test's model)
HALF = model(300, ", sparsity=0.5")


def record(gather, adam=1.0, hash_=0.0, probe=0.0):
    return {"version": calibration.CALIBRATION_VERSION, "gather": gather, "adam": adam, "hash": hash_,
            "probe": probe, "cpu": "test-cpu", "measured": "2026-01-02 03:04:05"}


def execution(text):
    (c,) = [c for c in run(text).graph["choices"] if c.key == "execution"]
    return c


@pytest.mark.parametrize("gather,want", [(0.2, "sparse"), (20.0, "dense")])
def test_the_choice_follows_a_planted_calibration_both_ways(tmp_path, monkeypatch, gather, want):
    """Cheap gathers and free hashing keep the half-share layer sparse: sparse 3 * 150 * 16 * 0.2 + 18.75
    = 1,459 multiply-adds against dense 14,419; expensive ones (x20) make it dense."""
    planted = tmp_path / "calibration.json"
    planted.write_text(json.dumps(record(gather)))
    monkeypatch.setenv("BOLTC_CALIBRATION", str(planted))
    c = execution(HALF)
    assert c.value == want
    assert f"a gathered one {gather:.2f}" in c.reason and f"measured on this host (test-cpu, 2026-01-02; {planted})" in c.reason


def test_compile_explain_shows_the_estimate_and_its_source(tmp_path, monkeypatch, capsys):
    from boltc.cli import main
    planted = tmp_path / "calibration.json"
    planted.write_text(json.dumps(record(20.0)))
    monkeypatch.setenv("BOLTC_CALIBRATION", str(planted))
    src = tmp_path / "m.bolt"
    src.write_text(HALF)
    assert main(["compile", str(src), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "runs dense: active set 150 of 300 (50%)" in out and str(planted) in out


def test_a_bad_planted_file_falls_back_to_the_fixed_estimate(tmp_path, monkeypatch):
    for content in ("{not json", json.dumps({"gather": "x"}), json.dumps(record(-1.0))):
        planted = tmp_path / "calibration.json"
        planted.write_text(content)
        monkeypatch.setenv("BOLTC_CALIBRATION", str(planted))
        costs = calibration.host_costs()
        assert (costs.gather, costs.adam) == (execution_cost.FIXED_GATHER, execution_cost.FIXED_ADAM)
        assert costs.source.startswith("fixed estimate") and str(planted) in costs.source
    monkeypatch.setenv("BOLTC_CALIBRATION", str(tmp_path / "missing.json"))
    assert "unreadable" in calibration.host_costs().source


@pytest.fixture
def fake_measurement(monkeypatch):
    """The host cache path with measure_host replaced by a counted, instant fake."""
    calls = []

    def fake():
        calls.append(1)
        return record(3.0, 7.0, 1.0, 50.0)
    monkeypatch.delenv("BOLTC_CALIBRATION")
    monkeypatch.setattr(calibration, "measure_host", fake)
    return calls


def test_measured_once_then_read_from_the_cache(tmp_path, monkeypatch, fake_measurement):
    monkeypatch.setenv("BOLTC_CACHE", str(tmp_path))
    first = calibration.host_costs()
    second = calibration.host_costs()
    assert len(fake_measurement) == 1
    assert (first.gather, first.adam, first.hash, first.probe) == (3.0, 7.0, 1.0, 50.0)
    assert "stored in" in first.source and "cached in" in second.source
    assert (tmp_path / f"{calibration.cache_key()}.json").exists()


def test_below_the_dense_share_nothing_is_measured(tmp_path, monkeypatch, fake_measurement):
    monkeypatch.setenv("BOLTC_CACHE", str(tmp_path))
    c = execution(model(300, ", sparsity=0.25"))
    assert c.value == "sparse" and "fixed estimate (not measured" in c.reason and not fake_measurement


def test_a_read_only_cache_folder_measures_without_storing(tmp_path, monkeypatch, fake_measurement):
    ro = tmp_path / "ro"
    ro.mkdir()
    _make_read_only(ro, monkeypatch)
    monkeypatch.setenv("BOLTC_CACHE", str(ro))
    try:
        costs = calibration.host_costs()
        assert costs.gather == 3.0 and "measured now" in costs.source
        # the compile goes on with the measured costs: sparse 3 * 150 * 16 * 3 + 300 * 16 * 7 / 256 +
        # 6,144 entries + 771 slots x 50 = 66,425 against dense 14,531
        assert execution(HALF).value == "dense"
        assert [p.name for p in ro.iterdir() if not p.name.endswith(".lock")] == []
    finally:
        ro.chmod(0o755)


def test_a_corrupt_cache_entry_is_measured_again_and_replaced(tmp_path, monkeypatch, fake_measurement):
    monkeypatch.setenv("BOLTC_CACHE", str(tmp_path))
    path = tmp_path / f"{calibration.cache_key()}.json"
    path.write_bytes(b"garbage, no checksum")
    costs = calibration.host_costs()
    assert costs.gather == 3.0 and len(fake_measurement) == 1
    assert json.loads(kernel_cache.read(path))["gather"] == 3.0
    # a checksummed entry whose content is no calibration: the fixed estimate, saying why
    kernel_cache.write(path, b"[1, 2]")
    costs = calibration.host_costs()
    assert costs.source.startswith("fixed estimate") and "not usable" in costs.source
    kernel_cache.write(path, b"{half")
    assert "not JSON" in calibration.host_costs().source


def test_a_failing_measurement_falls_back_to_the_fixed_estimate(tmp_path, monkeypatch):
    monkeypatch.delenv("BOLTC_CALIBRATION")
    monkeypatch.setenv("BOLTC_CACHE", "off")

    def broken():
        raise RuntimeError("no compiler")
    monkeypatch.setattr(calibration, "measure_host", broken)
    costs = calibration.host_costs()
    assert costs.gather == execution_cost.FIXED_GATHER and "calibration failed: RuntimeError" in costs.source


def test_a_real_measurement_gives_usable_costs():
    """The real kernels, timed once (about a second with compiling): every cost positive and finite,
    and the record reads back as a measured CostModel."""
    rec = calibration.measure_host(rounds=1)
    assert all(rec["seconds"][k] > 0 for k in ("dense_fwd", "dense_dx", "dense_update", "sparse_fwd",
                                                 "sparse_dx", "hash", "lookup"))
    costs = calibration.from_record(json.loads(json.dumps(rec)), "test")
    assert costs.source.startswith("measured on this host")
    assert 0 < costs.gather < 1e3 and costs.adam >= 1 and costs.hash > 0 and costs.probe > 0
