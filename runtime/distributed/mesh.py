"""Direct links between the workers of one machine: Unix sockets, one per pair, and a shared board each.

Workers that share their weights (runtime/distributed/shared.py) run a whole epoch in one call and
meet each other two or three times per update: to hand every owner the batch's factors and gradient
parts, (when the owners compute the output's input gradient) to sum their shares of it, and to wait
until every owner has updated its rows. Through Ray each meeting costs calls, object-store entries
and the driver's scheduling on the same two cores the workers use (measured: a worker waited more than
it computed); a socket read blocks in the kernel and wakes as soon as the peer writes.

The payload (factors, not rows: a few hundred KB per worker and update) does not travel through the
sockets: each worker owns a board, a shared-memory file every peer maps, and copies a payload's arrays
into it once; the socket carries only the pickle and where each array lies on the board (a few hundred
bytes, sent inline), and the peer unpickles arrays that are views of the sender's board, with no copy.
Measured (benchmarks/mesh_exchange.py: 2 processes, 643 KB of factors each way, 2 cores): through the
socket 280-381 CPU us of a worker's process and 357-484 wall us per meeting (the kernel's copy in and
out, a hand-off to a sender thread), on the boards 102-147 and 125-176 us. A board has BOARD_SLOTS slots used in turn, one per meeting: a payload's views stay
valid until the sender writes the same slot again, BOARD_SLOTS meetings later, and by then every peer
has entered a later meeting, which it does only after it has used the payload (every update ends with
a barrier after the last use of its payloads, and no update has more than 3 meetings). A payload that
does not fit its slot travels through the socket as before (pickle protocol 5, its arrays out of band:
sent from their own memory on a helper thread when large, so two workers sending to each other at
once never both block on full socket buffers).

Decision: pickle (protocol 5) over SOCK_STREAM in the abstract namespace (Linux: nothing to clean up on
disk); boards are files under /dev/shm unlinked as soon as every peer has mapped them, so nothing is
left behind whatever happens to the processes.

A peer that dies closes its sockets (the OS does it), so the others' reads end at once with `PeerLost`;
a peer that stops answering trips the timeout.
"""
from __future__ import annotations

import mmap
import os
import pickle
import socket
import struct
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_LEN = struct.Struct("<Q")


class PeerLost(Exception):
    """A peer closed its link (it died) or did not answer within the timeout."""


_HEAD = struct.Struct("<QQB")         # pickle bytes, out-of-band buffers, where they are (IN_BAND or ON_BOARD)
IN_BAND, ON_BOARD = 0, 1
# A payload up to this size is sent by the calling thread: it fits in the socket's buffer many times over
# (measured: a Unix stream socket here took 32 KB of 4 KB sends, or one 32 KB send, before blocking), so
# the send cannot block on a peer that is sending too, and the barrier's few bytes skip the hand-off to
# the sender thread (a wake-up per meeting on the path of every update)
INLINE_BYTES = 4 << 10
BOARD_SLOTS = 4                      # > the meetings of one update (see the module's docstring)
BOARD_SLOT_BYTES = 8 << 20           # per slot: the 100k model's factors take 0.65 MB per worker
ALIGN = 64
SHM_DIR = "/dev/shm"


def _pickled(obj) -> tuple[bytes, list]:
    """(the pickle, its out-of-band buffers as flat byte views); everything in band when a buffer is
    not contiguous."""
    bufs: list = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    try:
        return head, [b.raw() for b in bufs]
    except BufferError:                    # a non-contiguous buffer: send everything in band
        return pickle.dumps(obj, protocol=5), []


def _frames(head: bytes, raws: list) -> list:
    """A payload sent in band: (sizes), the pickle, then each out-of-band buffer's own memory."""
    return [_HEAD.pack(len(head), len(raws), IN_BAND) + struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws)),
            head] + raws


def _board_frames(head: bytes, places: list) -> list:
    """A payload whose buffers lie on the sender's board: (sizes), the pickle, (offset, size) pairs."""
    flat = [v for p in places for v in p]
    return [_HEAD.pack(len(head), len(places), ON_BOARD) + struct.pack(f"<{len(flat)}Q", *flat) + head]


def _send(s: socket.socket, frames: list) -> None:
    for f in frames:
        s.sendall(f)


def _address(prefix: str, rank: int) -> str:
    return f"\0{prefix}.{rank}"


class Board:
    """This worker's shared-memory slots (written here, read by the peers through their own map)."""

    def __init__(self, slots: int | None = None, slot_bytes: int | None = None):
        self.slots, self.slot_bytes = int(slots or BOARD_SLOTS), int(slot_bytes or BOARD_SLOT_BYTES)
        fd, self.path = tempfile.mkstemp(prefix="boltc_board_", dir=SHM_DIR if os.path.isdir(SHM_DIR) else None)
        try:
            os.ftruncate(fd, self.slots * self.slot_bytes)
            self.mem = mmap.mmap(fd, self.slots * self.slot_bytes, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self.bytes = np.frombuffer(self.mem, np.uint8)

    def place(self, slot: int, raws: list) -> list | None:
        """Copy the buffers `raws` into slot `slot` (one copy of a buffer given twice): their (offset,
        size) on the board, or None when they do not fit (the caller sends them in band)."""
        base, end = slot * self.slot_bytes, (slot + 1) * self.slot_bytes
        at, seen, places = base, {}, []
        for r in raws:
            a = np.frombuffer(r, np.uint8)
            key = (a.ctypes.data, a.nbytes)
            if key not in seen:
                if at + a.nbytes > end:
                    return None
                self.bytes[at:at + a.nbytes] = a
                seen[key] = at
                at += -(-a.nbytes // ALIGN) * ALIGN
            places.append((seen[key], a.nbytes))
        return places

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _map(path: str) -> memoryview:
    with open(path, "r+b") as f:
        return memoryview(mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED))


class Mesh:
    def __init__(self, prefix: str, rank: int, world: int, timeout: float = 300.0, board: bool = True):
        self.rank, self.world, self.timeout = rank, world, timeout
        self.prefix = prefix
        self.peers: dict[int, socket.socket] = {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(_address(prefix, rank))
        self.listener.listen(world)
        self.sender = ThreadPoolExecutor(max(1, world - 1), thread_name_prefix="boltc-mesh")
        self.board = Board() if board and world > 1 else None
        self.boards: dict[int, memoryview] = {}          # the peers' boards, mapped here
        self.meetings = 0                                 # exchanges so far (the same count on every worker)

    def connect(self) -> None:
        """Connect to every lower rank, accept every higher one (each says its rank first), then map
        every peer's board (its path comes through the link) and unlink ours once all have mapped it.
        A failure closes the links and unlinks the board (nothing left under /dev/shm)."""
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        deadline = time.monotonic() + self.timeout
        for peer in range(self.rank):
            while True:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(_address(self.prefix, peer))
                    break
                except (ConnectionRefusedError, FileNotFoundError):
                    s.close()
                    if time.monotonic() > deadline:
                        raise PeerLost(f"worker {peer} did not open its link") from None
                    time.sleep(0.01)
            s.sendall(_LEN.pack(self.rank))
            self.peers[peer] = s
        self.listener.settimeout(self.timeout)
        for _ in range(self.rank + 1, self.world):
            try:
                s, _ = self.listener.accept()
            except socket.timeout:
                raise PeerLost("a worker did not connect") from None
            self.peers[_LEN.unpack(self._read(s, _LEN.size))[0]] = s
        for s in self.peers.values():
            s.settimeout(self.timeout)
        if self.world > 1:
            paths = self.exchange([self.board.path if self.board else None] * self.world)
            self.boards = {j: _map(p) for j, p in enumerate(paths) if j != self.rank and p is not None}
            self.barrier()                                # every peer has mapped our board
            if self.board is not None:
                self.board.unlink()

    def _read(self, s: socket.socket, n: int) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            try:
                k = s.recv_into(view[got:])
            except (socket.timeout, OSError) as e:
                raise PeerLost(f"link to a worker failed ({type(e).__name__})") from None
            if k == 0:
                raise PeerLost("a worker closed its link (it stopped)")
            got += k
        return buf

    def exchange(self, per_peer: list) -> list:
        """Send per_peer[j] to worker j (every j but this one) and return what each sent here, in
        worker order (this worker's own entry is per_peer[rank], not sent). Arrays travel out of band:
        copied once onto this worker's board, the receiver's arrays are views of it, valid until
        BOARD_SLOTS meetings later (see the module's docstring); a payload that does not fit is sent
        from its own memory through the socket and received into buffers the arrays then use."""
        slot = self.meetings % self.board.slots if self.board is not None else 0
        self.meetings += 1
        pickled = {j: _pickled(per_peer[j]) for j in self.peers}
        places = None
        if self.board is not None and any(raws for _, raws in pickled.values()):
            order = sorted(pickled)
            placed = self.board.place(slot, [r for j in order for r in pickled[j][1]])
            if placed is not None:
                it = iter(placed)
                places = {j: [next(it) for _ in pickled[j][1]] for j in order}
        sends = []
        for j, s in self.peers.items():
            head, raws = pickled[j]
            frames = _frames(head, raws) if places is None or not raws else _board_frames(head, places[j])
            if sum(memoryview(f).nbytes for f in frames) <= INLINE_BYTES:
                try:
                    _send(s, frames)
                except OSError as e:                # the peer went away
                    raise PeerLost(f"sending to a worker failed ({type(e).__name__})") from None
            else:
                sends.append(self.sender.submit(_send, s, frames))
        out = list(per_peer)
        for j, s in sorted(self.peers.items()):
            nhead, nbufs, where = _HEAD.unpack(self._read(s, _HEAD.size))
            if where == ON_BOARD:
                flat = struct.unpack(f"<{2 * nbufs}Q", self._read(s, 16 * nbufs))
                board = self.boards[j]
                buffers = [board[flat[2 * i]:flat[2 * i] + flat[2 * i + 1]] for i in range(nbufs)]
                head = self._read(s, nhead)
            else:
                sizes = struct.unpack(f"<{nbufs}Q", self._read(s, 8 * nbufs)) if nbufs else ()
                head = self._read(s, nhead)
                buffers = [self._read(s, n) for n in sizes]
            out[j] = pickle.loads(head, buffers=buffers)
        for f in sends:
            try:
                f.result(timeout=self.timeout)
            except Exception as e:                  # the peer went away while we sent
                raise PeerLost(f"sending to a worker failed ({type(e).__name__})") from None
        return out

    def barrier(self) -> None:
        self.exchange([None] * self.world)

    def close(self) -> None:
        for s in list(self.peers.values()) + [self.listener]:
            try:
                s.close()
            except OSError:
                pass
        self.peers = {}
        self.sender.shutdown(wait=False)
        if self.board is not None:
            self.board.unlink()
