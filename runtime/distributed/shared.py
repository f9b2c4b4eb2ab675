"""Weights shared by the workers of one machine: one copy in shared memory instead of one per worker.

Workers on the same machine would otherwise each hold a replica and, after every update, copy the
rows the other owners updated into it: on the 100k model ~72% of the output's rows per update, so
the copies (the owner's copy-out, the object store's, the installs) cost as much memory traffic as
the update itself. Sharing the trained tensors removes them: each owner updates its rows in place
and the others read them at the next forward pass. The protocol's order already makes this safe
(runtime/distributed/worker.py): an owner updates only after every worker's gradient call of the
update has returned (it waits for their factors), and a worker computes the next update only after
every owner's update has returned (`finish` waits for their results), so no row is read while it is
written. The moments live there too, each owner writing only its rows (so the driver reads them
all from the file at an epoch's end); label counts stay per replica (each replica adds the same
counts). LSH tables and their bucket counts are shared too when the native
kernels fill them, and their upkeep is divided: at a rebuild each worker hashes a share of the
neurons into a shared codes buffer ((neurons, tables) int32 per DWTA layer), then refills its share
of the tables from all codes; frozen tables' inserts go into each worker's share, before the update's
barrier (worker.py). Every table is written by one worker and read only after a barrier.

Decision: a file under /dev/shm mapped by every worker with Python's mmap (plain ndarrays over it),
created and deleted by the driver, rather than multiprocessing.shared_memory, whose resource tracker
(Python < 3.13) unlinks a block when any attached process exits. Used when every worker runs on the
driver's machine (Ray node ids equal); workers on other machines exchange new rows through the object
store instead (the same protocol, tested on a two-node cluster).
"""
from __future__ import annotations

import mmap
import os
import tempfile

import numpy as np

ALIGN = 64                                # each tensor starts on a cache line (the kernels' rows are aligned)
SHM_DIR = "/dev/shm"


def _layout(tensors: dict) -> tuple[list, int]:
    out, offset = [], 0
    for key, a in tensors.items():
        out.append((key, offset, tuple(a.shape), a.dtype.str))
        offset += -(-a.nbytes // ALIGN) * ALIGN
    return out, max(offset, ALIGN)


def attach(spec: dict) -> dict:
    """key -> ndarray over the shared file `spec` describes (writable)."""
    with open(spec["path"], "r+b") as f:
        # mapped in full now (MAP_POPULATE), not a page fault at a time in the first updates
        # (20ng_nextword's weights and moments are ~150k pages)
        mem = mmap.mmap(f.fileno(), spec["size"], flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    return {tuple(key): np.frombuffer(mem, np.dtype(dt), int(np.prod(shape)), offset).reshape(shape)
            for key, offset, shape, dt in spec["layout"]}


class SharedWeights:
    """The driver's side: creates the file with the initial values, hands out its spec, deletes it."""

    def __init__(self, tensors: dict):
        layout, size = _layout(tensors)
        fd, self.path = tempfile.mkstemp(prefix="boltc_weights_", dir=SHM_DIR if os.path.isdir(SHM_DIR) else None)
        with os.fdopen(fd, "wb") as f:
            f.truncate(size)
        self.spec = {"path": self.path, "size": size, "layout": layout}
        arrays = attach(self.spec)
        for key, a in tensors.items():
            arrays[key][...] = a
        del arrays

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
