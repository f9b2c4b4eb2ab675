"""plan_memory: .bolt text before, the memory plan after (bytes worked out by hand), and the error
when a model does not fit the machine."""
import pytest

from boltc.errors import BoltValidationError
from boltc.frontend import parse
from boltc.passes import run_pipeline
from boltc.passes.plan_memory import machine_memory

BEFORE = '''model m {
  input x: sparse(1000)
  target y: multilabel(2000)
  h = fc(x, 64, relu)
  n = layernorm(h)
  s = fc(n, 2000, softmax, sparsity=0.05, hash=dwta(tables=10, range=9, reservoir=8))
  loss cross_entropy(s, y)
  train { batch 32 }
}'''


def test_memory_after():
    mem = run_pipeline(parse(BEFORE)).graph["memory"]
    w_h, w_n, w_s = (1000 * 64 + 64) * 4, 2 * 64 * 4, (64 * 2000 + 2000) * 4
    assert mem["weights"] == w_h + w_n + w_s
    assert mem["gradients"] == 0                  # the native backend fuses gradient and update per row
    assert mem["numpy_gradients"] == mem["weights"]       # batch 32 x 100 active may touch all 2000 rows
    assert mem["optimizer"] == 2 * mem["weights"]                    # Adam: two float32 moments
    active = int(0.05 * 2000)                                        # sparsity=0.05 by hand
    assert mem["activations"] == 32 * 64 * 4 * 2 + 32 * 64 * 4 * 2 + 32 * active * 4 * 2 + 32 * active * 4
    assert mem["hash_tables"] == 10 * 2**9 * 8 * 4
    assert mem["total"] == sum(mem[k] for k in ("weights", "optimizer", "gradients", "activations", "hash_tables"))
    assert sum(b["bytes"] for b in mem["buffers"]) == mem["total"]
    assert {b["name"] for b in mem["buffers"]} >= {"h.W", "h.b", "n.gamma", "n.beta", "s.W", "s.W.adam_m_v"}
    assert not [b for b in mem["buffers"] if b["kind"] == "gradients"]


def test_sgd_without_momentum_keeps_no_optimizer_state():
    mem = run_pipeline(parse(BEFORE.replace("batch 32", "batch 32 optimizer sgd"))).graph["memory"]
    assert mem["optimizer"] == 0
    mem = run_pipeline(parse(BEFORE.replace("batch 32", "batch 32 optimizer sgd(momentum=0.9)"))).graph["memory"]
    assert mem["optimizer"] == mem["weights"]


def test_machine_memory_is_read():
    total, available = machine_memory()
    assert total is None or (total > 0 and 0 < available <= total)


def test_a_model_larger_than_the_machine_is_a_located_error():
    total, _ = machine_memory()
    if total is None:
        pytest.skip("no /proc/meminfo on this system")
    # 2,000,000 x 4,000,000 float32 weights = 32 TB
    text = BEFORE.replace("sparse(1000)", "dense(2000000)").replace("fc(x, 64", "fc(x, 4000000")
    text = text.replace("multilabel(2000)", "multilabel(2000)")
    with pytest.raises(BoltValidationError) as info:
        run_pipeline(parse(text, "big.bolt"))
    e = info.value
    assert e.message.startswith("the model needs ") and "but this machine has" in e.message
    assert "largest buffer: h.W" in e.message
    assert (e.location.line, e.location.column) == (4, 3)


def test_numpy_gradient_bound_counts_touched_rows_of_a_sparse_layer():
    mem = run_pipeline(parse(BEFORE.replace("batch 32", "batch 4"))).graph["memory"]
    touched = 4 * 100                                                # batch x active rows of s
    assert mem["numpy_gradients"] == (1000 * 64 + 64 + 2 * 64 + 64 * touched + touched) * 4


def test_bf16_moments_halve_the_optimizer_bytes():
    g = run_pipeline(parse(BEFORE.replace("batch 32", "batch 32 optimizer adam(moments=bf16)")))
    mem = g.graph["memory"]
    assert mem["optimizer"] == mem["weights"]                        # 2 moments x 2 bytes per weight
    assert g.graph["train"]["moment_dtypes"] == {"h": {"W": "bf16", "b": "bf16"},
                                                 "n": {"gamma": "bf16", "beta": "bf16"},
                                                 "s": {"W": "bf16", "b": "bf16"}}
    assert "s.W.adam_m_v (bf16)" in {b["name"] for b in mem["buffers"]}
    g = run_pipeline(parse(BEFORE.replace("batch 32", "batch 32 optimizer adam(moments=f32)")))
    assert g.graph["memory"]["optimizer"] == 2 * g.graph["memory"]["weights"]


AUTO = """model m {
  input x: dense(256)
  target y: label(DIM)
  s = fc(x, DIM, softmax, sparsity=1.0)
  loss cross_entropy(s, y)
  train { batch 8 }
}"""


@pytest.mark.parametrize("dim,kind", [(524288, "f32"), (524289, "bf16")])
def test_auto_moments_switch_to_bf16_above_one_gib_of_f32_moments(dim, kind):
    """256 x 524288 weights = 2^27: their f32 m + v are exactly 1 GiB, which is not above it."""
    g = run_pipeline(parse(AUTO.replace("DIM", str(dim))))
    assert g.graph["train"]["moment_dtypes"] == {"s": {"W": kind, "b": "f32"}}
    w = 256 * dim * 4
    assert g.graph["memory"]["optimizer"] == (w if kind == "bf16" else 2 * w) + 2 * dim * 4
    choices = [c for c in g.graph["choices"] if c.key == "moments.W"]
    assert (len(choices) == 1 and choices[0].value == "bf16") if kind == "bf16" else not choices


def test_sgd_keeps_float32_momentum_whatever_moments_says():
    text = AUTO.replace("DIM", "524289").replace("batch 8", "batch 8 optimizer sgd(momentum=0.9)")
    g = run_pipeline(parse(text))
    assert g.graph["train"]["moment_dtypes"] == {"s": {"W": "f32", "b": "f32"}}
    assert g.graph["memory"]["optimizer"] == g.graph["memory"]["weights"]


def test_the_estimate_names_its_backend():
    g = run_pipeline(parse(BEFORE))
    assert g.graph["memory"]["backend"] == "native"
    (c,) = [c for c in g.graph["choices"] if c.key == "memory.backend"]
    assert c.value == "native" and "--backend numpy" in c.reason


def test_moments_option_is_checked_and_written_back():
    from boltc.frontend import format_source
    g = parse(BEFORE.replace("batch 32", "batch 32 optimizer adam(lr=0.01, moments=bf16)"))
    assert g.graph["train"]["moments"] == "bf16"
    assert "optimizer adam(lr=0.01, moments=bf16)" in format_source(g)
    with pytest.raises(BoltValidationError) as info:
        parse(BEFORE.replace("batch 32", "batch 32 optimizer adam(moments=fp16)"), "m.bolt")
    assert "unknown moment storage 'fp16' (did you mean 'bf16'?); expected f32, bf16 or auto" in info.value.message
