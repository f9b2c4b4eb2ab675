"""Direct links between the workers of one machine: Unix sockets, one per pair.

Workers that share their weights (runtime/distributed/shared.py) run a whole epoch in one call and
meet each other twice per update: to hand every owner the batch's factors and gradient parts, and to
wait until every owner has updated its rows. Through Ray each meeting costs calls, object-store entries
and the driver's scheduling on the same two cores the workers use (measured: a worker waited more than
it computed); a socket read blocks in the kernel and wakes as soon as the peer writes. The payload is a
few hundred KB per worker and update (factors, not rows). Decision: pickle (protocol 5) over
SOCK_STREAM in the abstract namespace (Linux: nothing to clean up on disk); payloads of more than a
few KB are sent on a helper thread, so two workers sending to each other at once never both block on
full socket buffers.

A peer that dies closes its sockets (the OS does it), so the others' reads end at once with `PeerLost`;
a peer that stops answering trips the timeout.
"""
from __future__ import annotations

import pickle
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

_LEN = struct.Struct("<Q")


class PeerLost(Exception):
    """A peer closed its link (it died) or did not answer within the timeout."""


_HEAD = struct.Struct("<QQ")          # pickle bytes, out-of-band buffers
# A payload up to this size is sent by the calling thread: it fits in the socket's buffer many times over
# (measured: a Unix stream socket here took 32 KB of 4 KB sends, or one 32 KB send, before blocking), so
# the send cannot block on a peer that is sending too, and the barrier's few bytes skip the hand-off to
# the sender thread (a wake-up per meeting on the path of every update)
INLINE_BYTES = 4 << 10


def _frames(obj) -> list:
    """obj as frames to send: (sizes), the pickle, then each out-of-band buffer's own memory."""
    bufs: list = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    try:
        raws = [b.raw() for b in bufs]
    except BufferError:                    # a non-contiguous buffer: send everything in band
        head, raws = pickle.dumps(obj, protocol=5), []
    return [_HEAD.pack(len(head), len(raws)) + struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws)), head] + raws


def _send(s: socket.socket, frames: list) -> None:
    for f in frames:
        s.sendall(f)


def _address(prefix: str, rank: int) -> str:
    return f"\0{prefix}.{rank}"


class Mesh:
    def __init__(self, prefix: str, rank: int, world: int, timeout: float = 300.0):
        self.rank, self.world, self.timeout = rank, world, timeout
        self.prefix = prefix
        self.peers: dict[int, socket.socket] = {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(_address(prefix, rank))
        self.listener.listen(world)
        self.sender = ThreadPoolExecutor(max(1, world - 1), thread_name_prefix="boltc-mesh")

    def connect(self) -> None:
        """Connect to every lower rank, accept every higher one (each says its rank first)."""
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
        worker order (this worker's own entry is per_peer[rank], not sent). Arrays travel out of band
        (pickle protocol 5): sent from their own memory and received into buffers the arrays then
        use, so neither side copies them into or out of the pickle."""
        sends = []
        for j, s in self.peers.items():
            frames = _frames(per_peer[j])
            if sum(memoryview(f).nbytes for f in frames) <= INLINE_BYTES:
                try:
                    _send(s, frames)
                except OSError as e:                # the peer went away
                    raise PeerLost(f"sending to a worker failed ({type(e).__name__})") from None
            else:
                sends.append(self.sender.submit(_send, s, frames))
        out = list(per_peer)
        for j, s in sorted(self.peers.items()):
            nhead, nbufs = _HEAD.unpack(self._read(s, _HEAD.size))
            sizes = struct.unpack(f"<{nbufs}Q", self._read(s, 8 * nbufs)) if nbufs else ()
            head = self._read(s, nhead)
            out[j] = pickle.loads(head, buffers=[self._read(s, n) for n in sizes])
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
