"""A real `boltc serve` process on a free loopback port, the model files it serves, and in-process
oracles (`Model.predict` on the same files) for the serve tests."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

import boltc
from runtime_models import text_source, tiny_source, write_lines

DENSE_SOURCE = """
model dense {
  input  x: dense(12)
  target labels: multilabel(20)
  hidden = fc(x, 16, relu)
  scores = fc(hidden, 20, softmax)
  loss    cross_entropy(scores, labels)
  metrics precision@1
  train {
    optimizer adam(lr=0.01)
    batch     16
    epochs    2
  }
}
"""
TOPICS = {"sports": "ball goal team match score player coach league",
          "space": "rocket orbit planet launch moon astronaut telescope galaxy",
          "cooking": "recipe oven flour butter sauce garlic onion bake"}
TEXT_SOURCE = text_source('column="body", tokenizer=words, dim=1024', classes=3, label_column="topic",
                          hidden=8, lr=0.02, batch=16, epochs=4)


def _topic_corpus(path, n, seed, binary=False):
    rng = random.Random(seed)
    rows = ["topic,body"]
    for _ in range(n):
        t = rng.choice(sorted(TOPICS))
        label = int(t == "space") if binary else t
        rows.append(f"{label}," + " ".join(rng.choice(TOPICS[t].split()) for _ in range(6)))
    return write_lines(path, rows)


def build_models(tmp) -> dict:
    """name -> path of the saved models the serve tests use (trained briefly on the numpy backend)."""
    out = {}
    for name, epochs, seed_rows in (("tiny", 1, 300), ("tiny_v2", 2, 200)):
        m = boltc.compile(tiny_source(epochs=epochs, rows=seed_rows), backend="numpy")
        m.fit(progress=False)
        out[name] = str(tmp / f"{name}.boltc")
        m.save(out[name])
    # `ensemble 3`: the server must answer with the members' mean, as Model.predict does
    e = boltc.compile(tiny_source(epochs=1, rows=200).replace("epochs    1", "epochs    1\n    ensemble  3"),
                      backend="numpy")
    e.fit(progress=False)
    out["tiny_ensemble"] = str(tmp / "tiny_ensemble.boltc")
    e.save(out["tiny_ensemble"])
    wide = boltc.compile(tiny_source(epochs=1, rows=100).replace("sparse(300)", "sparse(400)"), backend="numpy")
    out["tiny_other_input"] = str(tmp / "tiny_other_input.boltc")
    wide.save(out["tiny_other_input"])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 12)).astype(np.float32)
    d = boltc.compile(DENSE_SOURCE, backend="numpy")
    d.fit(X, labels=[[i % 20] for i in range(64)], progress=False)
    out["dense"] = str(tmp / "dense.boltc")
    d.save(out["dense"])
    b = boltc.compile(text_source('column="body", tokenizer=words, dim=1024', label_column="topic", hidden=4,
                                  epochs=2), backend="numpy")
    b.fit(_topic_corpus(tmp / "topics_binary.csv", 80, 2, binary=True), progress=False)
    out["binary"] = str(tmp / "binary.boltc")
    b.save(out["binary"])
    t = boltc.compile(TEXT_SOURCE, backend="numpy")
    t.fit(_topic_corpus(tmp / "topics.csv", 120, 1), progress=False)
    out["text"] = str(tmp / "text.boltc")
    t.save(out["text"])
    return out


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install '.[serve]'")
    return build_models(tmp_path_factory.mktemp("serve_models"))


class Server:
    """`python -m boltc.cli serve ... --port 0`; the port comes from its 'listening on' line."""

    def __init__(self, args: list[str], token: str | None = None, timeout: float = 180.0):
        cmd = [sys.executable, "-m", "boltc.cli", "serve", *args, "--port", "0"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.url = None
        found = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
                    found.set()
            found.set()
        threading.Thread(target=pump, daemon=True).start()
        found.wait(timeout)
        if self.url is None:
            self.stop()
            raise RuntimeError("boltc serve did not start:\n" + "".join(self.lines))
        self.port = int(self.url.rsplit(":", 1)[1])
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=60.0)

    def get(self, path, **kw):
        return self.client.get(path, **kw)

    def post(self, path, body=None, **kw):
        if body is not None:
            kw["content"] = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.client.post(path, **kw)

    def metric(self, name: str, **labels) -> float:
        """One sample's value from /metrics (0.0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families
        for fam in text_string_to_metric_families(self.get("/metrics").text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return 0.0

    def wait_metric(self, name: str, value: float, timeout: float = 60.0, **labels) -> None:
        end = time.monotonic() + timeout
        while self.metric(name, **labels) != value:
            if time.monotonic() > end:
                raise AssertionError(f"{name}{labels} never reached {value}")
            time.sleep(0.02)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def raw_request_head(port: int, path: str, body: bytes, token: str | None = None) -> socket.socket:
    """Send a POST's headers but not its body: the request is then in flight on the server (its handler
    waits for the body) until `finish` sends the body."""
    s = socket.create_connection(("127.0.0.1", port))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
    return s


def finish(s: socket.socket, body: bytes) -> tuple[int, dict]:
    s.sendall(body)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"transfer-encoding: chunked" in head.lower():
        payload = _unchunk(payload)
    return status, json.loads(payload)


def _unchunk(b: bytes) -> bytes:
    out = b""
    while b:
        size, _, rest = b.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        b = rest[n + 2:]
    return out


def sparse_rows(rows: list[dict], dim: int):
    """The /v1 rows [{"ids", "values"}] as the CSR matrix Model.predict takes (the oracle's input)."""
    import scipy.sparse as sp
    data, ind, ptr = [], [], [0]
    for r in rows:
        ind += r["ids"]
        data += r.get("values", [1.0] * len(r["ids"]))
        ptr.append(len(ind))
    return sp.csr_matrix((np.asarray(data, np.float32), np.asarray(ind, np.int32), np.asarray(ptr)),
                         shape=(len(rows), dim))


def assert_same(pred: dict, ids: np.ndarray, scores: np.ndarray, top_k: int) -> None:
    """A /v1 prediction equals Model.predict's row (the candidates it has: id >= 0, finite score)."""
    keep = [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0 and np.isfinite(s)][:top_k]
    assert pred["ids"] == [i for i, _ in keep]
    assert np.array_equal(np.asarray(pred["scores"], np.float32), np.asarray([s for _, s in keep], np.float32))
