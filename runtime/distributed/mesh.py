"""Direct links between the workers of one machine: Unix sockets, one per pair.

Workers that share their weights (runtime/distributed/shared.py) run a whole epoch in one call and
meet each other twice per update: to hand every owner the batch's factors and gradient parts, and to
wait until every owner has updated its rows. Through Ray each meeting costs calls, object-store entries
and the driver's scheduling on the same two cores the workers use (measured: a worker waited more than
it computed); a socket read blocks in the kernel and wakes as soon as the peer writes. The payload is a
few hundred KB per worker and update (factors, not rows). Decision: pickle (protocol 5) over
SOCK_STREAM in the abstract namespace (Linux: nothing to clean up on disk), sends on a helper thread
so two workers sending to each other at once never both block on full socket buffers.

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
        worker order (this worker's own entry is per_peer[rank], not sent)."""
        sends = []
        for j, s in self.peers.items():
            data = pickle.dumps(per_peer[j], protocol=5)
            sends.append(self.sender.submit(s.sendall, _LEN.pack(len(data)) + data))
        out = list(per_peer)
        for j, s in sorted(self.peers.items()):
            n = _LEN.unpack(self._read(s, _LEN.size))[0]
            out[j] = pickle.loads(self._read(s, n))
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
