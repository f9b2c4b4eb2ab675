"""The trainer's report on the adaptive sampler: per-epoch overhead share and the rank correlation of
predicted vs true losses, computed from `true_losses` (checked here against the training loss)."""
import numpy as np
from pathlib import Path

import boltc
from boltc.runtime.train.trainer import true_losses

TINY = Path(__file__).parents[1] / "models" / "tiny.bolt"


def test_true_losses_equal_the_training_loss_of_a_dense_output():
    # with a dense output the active set is every label, so the loss train_step reports (before its
    # update) is exactly the dense cross entropy against the normalised multi-hot target
    src = TINY.read_text().replace("sparsity=0.2, hash=auto", "sparsity=1.0")
    m = boltc.compile(src, backend="numpy")
    plan_out = next(l for l in m.plan["layers"] if l["name"] == m.plan["output"])
    assert plan_out["hash"] is None, "test needs a dense output layer"
    ds = m.dataset(m.data_source("train"))
    batch = ds.take(np.arange(64))
    want = true_losses(m.executor, m.plan, batch)
    got = m.executor.train_step(batch, lr=1e-3)
    np.testing.assert_allclose(want, got, rtol=1e-4, atol=1e-5)


def test_nw_sketch_epochs_report_overhead_share_and_rank_correlation():
    src = TINY.read_text().replace("    seed      7\n", "    seed      7\n    sampler   nw_sketch(warmup=1)\n")
    m = boltc.compile(src, backend="numpy", epochs=2)
    hist = m.fit(progress=False)
    second = hist["epochs"][1]
    assert 0.0 < second["sampler_share"] < 1.0
    corr = second["sampler"]["rank_correlation"]
    assert corr is not None and -1.0 <= corr <= 1.0
