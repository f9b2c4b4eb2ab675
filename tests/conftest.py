"""Shared test setup.

The native executor keeps small kernels on one thread (runtime/exec/native_ops.py MIN_WORK_PER_THREAD: a
slice handed to the pool costs more than the work). The tests use small shapes, and the tests that
compare 1 and 2 threads must see every kernel split, so the threshold is 0 here.

The sparse-or-dense choice uses the fixed cost estimate (BOLTC_CALIBRATION=fixed): measured costs
differ between hosts, and the tests of the calibration plant theirs (tests/test_calibration.py)."""
import pytest


@pytest.fixture(autouse=True)
def _split_every_native_kernel(monkeypatch):
    from boltc.runtime.exec import native_ops
    monkeypatch.setattr(native_ops, "MIN_WORK_PER_THREAD", 0)


@pytest.fixture(autouse=True)
def _fixed_cost_estimate(monkeypatch):
    monkeypatch.setenv("BOLTC_CALIBRATION", "fixed")
