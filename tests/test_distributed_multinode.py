"""Distributed training across several Ray nodes on one machine (ray.cluster_utils.Cluster).

The cluster has two nodes of one CPU each and every worker asks for one CPU, so the two workers must be
placed on different nodes (each node runs its own raylet and object store): parts and new rows really
travel between object stores. Oracle: the in-process run of the same protocol (bit-identical weights
and moments), and for a worker killed mid-epoch, the uninterrupted run (restarted from the epoch
state, whose optimizer moments were gathered from the workers' shards and are split again).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from boltc.pipeline import load_model_source
from boltc.runtime.distributed.driver import train_distributed
from boltc.runtime.exec.state import ModelState

ray = pytest.importorskip("ray")
TINY = Path(__file__).parents[1] / "models" / "tiny.bolt"


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _same(a, b):
    for which in ("params", "m", "v"):
        for layer, ts in getattr(b, which).items():
            for t, arr in ts.items():
                assert getattr(a, which)[layer][t].tobytes() == arr.tobytes(), (which, layer, t)


def test_two_nodes_train_like_the_in_process_protocol_and_survive_a_killed_worker(two_nodes):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert all(n["Resources"].get("CPU") == 1.0 for n in ray.nodes() if n["Alive"])
    _, plan = load_model_source(TINY)
    train = dict(plan["data"]["train"], rows=640)
    init = ModelState.init(plan)
    local = train_distributed(plan, copy.deepcopy(init), train, workers=2, in_process=True, epochs=2,
                              backend="native")
    on_nodes = train_distributed(plan, copy.deepcopy(init), train, workers=2, epochs=2, backend="native",
                                 timeout=120)
    _same(on_nodes.state, local.state)
    assert on_nodes.stats["bytes_received_per_update_per_worker"] > 0
    # worker 1 dies in epoch 2 (update 13 of 20): all restart from the end of epoch 1, moments re-split
    killed = train_distributed(plan, copy.deepcopy(init), train, workers=2, epochs=2, backend="native",
                               timeout=120, fail_at={1: 13})
    assert killed.stats["restarts"] == 1
    _same(killed.state, local.state)
    assert np.isfinite(killed.history["epochs"][-1]["loss"])
