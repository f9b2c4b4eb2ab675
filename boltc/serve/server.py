"""Run the app under uvicorn on a socket bound before serving starts.

Why bind ourselves: `--port 0` then means a free port the OS picks, and the line
`boltc serve: listening on http://HOST:PORT` tells clients (and tests) which one, with no race.
SIGTERM/SIGINT: uvicorn stops accepting connections, lets the requests in flight finish (the inference
thread keeps running until they have), then the app's shutdown drains the queue and the process exits 0.
"""
from __future__ import annotations

import signal
import socket
import sys

from boltc.errors import BoltError


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise BoltError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(app, host: str, port: int, drain_seconds: float = 30.0) -> int:
    try:
        import uvicorn  # optional: the serve extra
    except ImportError:
        raise BoltError("boltc serve needs the serve extra: pip install 'boltc[serve]'") from None
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=drain_seconds, server_header=False,
                            proxy_headers=False)
    server = uvicorn.Server(config)
    # uvicorn drains on SIGTERM/SIGINT, then raises the signal again through the handlers it found: make
    # those record it, so a drained shutdown ends as a normal exit (status 0) instead of death by signal
    got: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _frame: got.append(s))
    print(f"boltc serve: listening on http://{shown}:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    print("boltc serve: drained and stopped" + (f" ({signal.Signals(got[0]).name})" if got else ""),
          file=sys.stderr, flush=True)
    return 0
