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
  s = fc(n, 2000, softmax, hash=dwta(tables=10, range=9, reservoir=8))
  loss cross_entropy(s, y)
  train { batch 32 }
}'''


def test_memory_after():
    mem = run_pipeline(parse(BEFORE)).graph["memory"]
    w_h, w_n, w_s = (1000 * 64 + 64) * 4, 2 * 64 * 4, (64 * 2000 + 2000) * 4
    assert mem["weights"] == w_h + w_n + w_s
    assert mem["gradients"] == mem["weights"]
    assert mem["optimizer"] == 2 * mem["weights"]                    # Adam: two moments
    active = int(0.05 * 2000)                                        # 1800 <= 2000 < 4000 -> 0.05
    assert mem["activations"] == 32 * 64 * 4 * 2 + 32 * 64 * 4 * 2 + 32 * active * 4 * 2 + 32 * active * 4
    assert mem["hash_tables"] == 10 * 2**9 * 8 * 4
    assert mem["total"] == sum(mem[k] for k in ("weights", "optimizer", "gradients", "activations", "hash_tables"))
    assert sum(b["bytes"] for b in mem["buffers"]) == mem["total"]
    assert {b["name"] for b in mem["buffers"]} >= {"h.W", "h.b", "n.gamma", "n.beta", "s.W", "s.W.grad", "s.W.adam_m_v"}


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
