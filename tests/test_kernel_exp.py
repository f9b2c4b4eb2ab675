"""The kernels' exp (boltc/lower/builder.py Kernel.exp, plain arithmetic) against float64 NumPy: within
2 ulp of the correctly rounded float32 over the whole finite range, the IEEE special cases, and a loop
over it vectorizes (no libm call per element)."""
import numpy as np

from boltc import codegen
from boltc.lower.builder import KernelModule
from boltc.lower.kernels import Library


def _exp_kernel():
    km = KernelModule()
    k = km.kernel("e", [("n", "i64"), ("x", "ptr"), ("y", "ptr")])
    with k.loop(0, k.arg["n"], "i") as i:
        k.st(k.arg["y"], i, k.exp(k.ld(k.arg["x"], i)))
    k.ret()
    return km


def _run(x: np.ndarray) -> np.ndarray:
    km = _exp_kernel()
    lib = Library(codegen.build(km.ir_text())[0], km.signatures)
    x = np.ascontiguousarray(x, np.float32)
    y = np.empty_like(x)
    lib.symbol("e")(x.size, x.ctypes.data, y.ctypes.data)
    return y


def test_exp_within_two_ulp_over_the_normal_range():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-87.3, 88.7, 400_001), rng.uniform(-20, 20, 100_000),
                        rng.uniform(-1e-3, 1e-3, 10_000)]).astype(np.float32)
    y = _run(x)
    ref = np.exp(x.astype(np.float64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(y - ref) / ulp) <= 2.0


def test_exp_special_values():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 88.73, 100.0, -87.4, -1e4], np.float32)
    y = _run(x)
    assert y[0] == 1.0 and y[1] == 1.0
    assert y[2] == np.inf and y[3] == 0.0 and np.isnan(y[4])
    assert y[5] == np.inf and y[6] == np.inf             # exp overflows float32 above 88.7228
    assert y[7] == 0.0 and y[8] == 0.0                   # no subnormal results: 0 below -87.3365


def test_exp_loop_vectorizes_without_libm_calls():
    opt = codegen.optimized_ir(_exp_kernel().ir_text())
    assert "x float>" in opt
    assert "@expf" not in opt and "llvm.exp" not in opt
