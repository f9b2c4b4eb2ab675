"""codegen: the O3 pipeline vectorizes float reductions; the cache key and object cache behave."""
import re

import pytest

from boltc import codegen, kernel_cache
from boltc.lower.builder import KernelModule
from boltc.lower import fc
from native_helpers import runs_right


def _widest_float_vector(ir_text: str) -> int:
    widths = [int(w) for w in re.findall(r"<(\d+) x float>", ir_text)]
    return max(widths, default=1)


def test_dot_product_kernel_vectorizes_to_host_width():
    km = KernelModule()
    fc.dense_fc_fwd(km, "dot", 256, 16, "linear", False, False)   # every neuron: the plain reduction loop
    opt = codegen.optimized_ir(km.ir_text())
    feats = codegen.host_feature_set()
    if "avx2" not in feats:
        pytest.skip("host has no AVX2: the <8 x float> guarantee is for AVX2 hosts")
    assert _widest_float_vector(opt) >= 8
    # the reduction is vectorized (a vector fadd carrying reassoc), not just the loads
    assert re.search(r"fadd reassoc contract <\d+ x float>", opt)


def test_without_reassoc_the_reduction_stays_scalar():
    """The oracle for why the flags exist: the same loop without reassoc does not vectorize its fadd."""
    km = KernelModule()
    fc.dense_fc_fwd(km, "dot", 256, 16, "linear", False, False)
    text = km.ir_text().replace("fadd reassoc contract", "fadd")
    opt = codegen.optimized_ir(text)
    assert not re.search(r"fadd [a-z ]*<\d+ x float>", opt)


def test_cache_key_depends_on_ir_cpu_and_features():
    t = codegen.host_target()
    other = codegen.Target(t.triple, "x86-64", "+sse2")
    assert codegen.cache_key("a", t) != codegen.cache_key("b", t)
    assert codegen.cache_key("a", t) != codegen.cache_key("a", other)
    assert codegen.cache_key("a", t) == codegen.cache_key("a", t)


def test_object_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTC_CACHE", str(tmp_path))
    km = KernelModule()
    fc.dense_fc_fwd(km, "dot", 8, 2, "linear", False, False)
    obj, key = codegen.cached_object(km.ir_text())
    assert kernel_cache.read(tmp_path / f"{key}.o") == obj
    obj2, key2 = codegen.cached_object(km.ir_text())
    assert key2 == key and obj2 == obj
    runs_right(obj2)                    # the cached object links and runs


def test_bitcode_rebuild_for_a_generic_cpu():
    km = KernelModule()
    fc.dense_fc_fwd(km, "dot", 8, 2, "linear", False, False)
    _, bitcode = codegen.compile_module(km.ir_text())
    generic = codegen.Target(codegen.host_target().triple, "x86-64", "")
    obj = codegen.object_from_bitcode(bitcode, generic)
    assert obj[:4] == b"\x7fELF"


def test_every_layer_op_has_a_lowering_rule():
    from boltc import ir
    from boltc.lower.rules import HOST, LOWERING_RULES
    assert set(LOWERING_RULES) == set(ir.LAYER_OPS)
    assert callable(LOWERING_RULES["fc"])
    assert all(callable(r) or r is HOST for r in LOWERING_RULES.values())


def test_native_support_names_the_reason():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from native_helpers import make_plan
    from boltc.lower.rules import native_support
    assert native_support(make_plan()) is None
    p = make_plan()
    p["loss"] = "binary_cross_entropy"                     # the output would need a sigmoid
    assert "sigmoid" in native_support(p)
    p = make_plan()
    p["layers"][0]["layout"] = "out_major"
    assert "layout" in native_support(p)


def test_softmax_kernels_build_for_trip_counts_that_crashed_llvm():
    """LLVM 22's LoopVectorize aborted the process on these constant trip counts (bibtex's 159-wide
    output and its 79-wide active set); Kernel.opaque_i64 keeps the loops vectorized without that.
    Built in a child process: an LLVM assertion cannot be caught in this one."""
    import subprocess
    import sys
    code = ("from boltc.lower.builder import KernelModule\n"
            "from boltc.lower import fc\n"
            "from boltc import codegen\n"
            "km = KernelModule('t')\n"
            "for k in (79, 159):\n"
            "    fc.softmax_ce(km, f'ce{k}', k)\n"
            "    fc.row_logsumexp(km, f'lse{k}', k)\n"
            "assert '<' in codegen.optimized_ir(km.ir_text())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
