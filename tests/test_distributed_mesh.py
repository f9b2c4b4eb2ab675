"""Direct links between workers of one machine (runtime/distributed/mesh.py): payloads through the
shared boards or, when they do not fit, in band through the sockets.

Oracle: what was sent (arrays bit for bit, other objects by equality), received in worker order, for
payloads on the board, payloads too large for a slot, one array sent to several peers, and a payload
that must stay intact while its sender goes through the meetings that follow (until BOARD_SLOTS
meetings later; an update has at most 3)."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from boltc.runtime.distributed import mesh as mesh_mod
from boltc.runtime.distributed.mesh import BOARD_SLOTS, Mesh, PeerLost


def _meshes(world, prefix):
    meshes = [Mesh(prefix, r, world, timeout=20) for r in range(world)]
    ts = [threading.Thread(target=m.connect) for m in meshes]
    [t.start() for t in ts]
    [t.join() for t in ts]
    return meshes


def _together(meshes, fn):
    out, errors = [None] * len(meshes), []

    def run(r):
        try:
            out[r] = fn(r, meshes[r])
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    ts = [threading.Thread(target=run, args=(r,)) for r in range(len(meshes))]
    [t.start() for t in ts]
    [t.join() for t in ts]
    if errors:
        raise errors[0]
    return out


def _payload(rank, to, k, n=1000):
    rng = np.random.default_rng([rank, to, k])
    return {"from": rank, "to": to, "k": k, "x": rng.standard_normal((n, 3)).astype(np.float32),
            "ids": rng.integers(0, 1 << 30, n).astype(np.int32), "strided": np.arange(20.0)[::2]}


def _check(got, rank, to, k, n=1000):
    want = _payload(rank, to, k, n)
    assert got["from"] == rank and got["to"] == to and got["k"] == k
    for key in ("x", "ids", "strided"):
        assert got[key].dtype == want[key].dtype and got[key].tobytes() == want[key].tobytes()


@pytest.mark.parametrize("world", [2, 3])
def test_payloads_arrive_bit_for_bit_in_worker_order_and_stay_until_slots_come_round(world):
    meshes = _meshes(world, f"boltc-test-mesh-{os.getpid()}-{world}")
    try:
        def run(r, m):
            kept = []
            for k in range(3 * BOARD_SLOTS):
                got = m.exchange([_payload(r, j, k) for j in range(world)])
                for j in range(world):
                    if j != r:
                        _check(got[j], j, r, k)
                kept.append(got)
                if k >= 2:                         # the payload of 2 meetings ago is still intact
                    for j in range(world):
                        if j != r:
                            _check(kept[k - 2][j], j, r, k - 2)
            m.barrier()
            return True
        assert _together(meshes, run) == [True] * world
        # the boards were used (and their files are gone: unlinked once every peer had mapped them)
        assert all(m.board is not None and not os.path.exists(m.board.path) for m in meshes)
    finally:
        for m in meshes:
            m.close()


def test_one_array_for_every_peer_is_placed_once_and_large_payloads_go_in_band(monkeypatch):
    monkeypatch.setattr(mesh_mod, "BOARD_SLOT_BYTES", 64 << 10)
    meshes = _meshes(3, f"boltc-test-mesh-big-{os.getpid()}")
    placed = []
    real = mesh_mod.Board.place
    monkeypatch.setattr(mesh_mod.Board, "place", lambda self, slot, raws: placed.append(
        (len(raws), real(self, slot, raws))) or placed[-1][1])
    try:
        shared = np.arange(1000, dtype=np.float64)
        big = np.arange(100_000, dtype=np.float32)            # 400 KB: more than a 64 KB slot

        def run(r, m):
            same = m.exchange([shared * (r + 1)] * 3)
            large = m.exchange([big + r] * 3)
            return same, large
        out = _together(meshes, run)
        for r, (same, large) in enumerate(out):
            for j in range(3):
                if j != r:
                    assert same[j].tobytes() == (shared * (j + 1)).tobytes()
                    assert large[j].tobytes() == (big + j).tobytes()
        fits = [p for n, p in placed if p is not None]
        assert len(fits) == 3 and all(p[0] == p[1] for p in fits)   # the same offset for both peers
        assert sum(p is None for _, p in placed) == 3               # too large: in band
    finally:
        for m in meshes:
            m.close()


def test_a_peer_that_closes_its_links_ends_the_others_wait():
    meshes = _meshes(2, f"boltc-test-mesh-lost-{os.getpid()}")
    meshes[1].close()
    with pytest.raises(PeerLost):
        meshes[0].exchange([np.zeros(10), np.ones(10)])
    meshes[0].close()


def test_a_worker_whose_peers_never_connect_stops_and_leaves_no_board_behind():
    m = Mesh(f"boltc-test-mesh-alone-{os.getpid()}", 1, 2, timeout=0.3)
    path = m.board.path
    assert os.path.exists(path)
    with pytest.raises(PeerLost, match="did not open its link"):
        m.connect()
    assert not os.path.exists(path)
