"""`boltc serve` under pressure, against a real server process: a full queue answers 503 with
Retry-After, a watched model file is reloaded when replaced, SIGTERM lets in-flight requests finish.

Requests are held in flight deterministically (no sleeps to win races): a request whose headers were
sent but not its body is in flight, so the inference thread keeps a queued request waiting for it
(up to --batch-wait-ms) until the test sends the rest."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

import boltc
from serve_helpers import Server, assert_same, finish, raw_request_head, serve_models, sparse_rows  # noqa: F401

PATH = "/v1/models/tiny/predict"
A_ROWS = [{"ids": [1, 2, 3]}, {"ids": [4, 5]}]
S_ROWS = [{"ids": [10, 20, 30], "values": [1.0, 2.0, 0.5]}]


@pytest.fixture(scope="module")
def setup(serve_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drain")
    path = str(tmp / "tiny.boltc")
    shutil.copy(serve_models["tiny"], path)
    s = Server([path, "--max-queue", "4", "--batch-sparse", "--batch-wait-ms", "20000", "--watch", "0.2"])
    yield s, path, tmp
    s.stop()


def _oracle(path, rows, top_k):
    return boltc.load(path).predict(sparse_rows(rows, 300), top_k=top_k, sparse=False)


def _held(s):
    """Request S in flight (headers only), then request A queued behind the batch wait."""
    s_body = json.dumps({"rows": S_ROWS, "top_k": 2}).encode()
    sock = raw_request_head(s.port, PATH, s_body)
    s.wait_metric("boltc_inflight_requests", 1.0)
    pool = ThreadPoolExecutor(1)
    a = pool.submit(s.client.post, PATH, json={"rows": A_ROWS, "top_k": 3})
    s.wait_metric("boltc_queue_depth_rows", 2.0)
    return sock, s_body, a, pool


def test_full_queue_answers_503_with_retry_after(setup, serve_models):
    s, path, _ = setup
    sock, s_body, a, pool = _held(s)
    r = s.post(PATH, {"rows": [{"ids": [9]}, {"ids": [8]}, {"ids": [7]}]})   # 2 + 3 rows > --max-queue 4
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "busy" in r.json()["error"]
    status, s_answer = finish(sock, s_body)
    a_answer = a.result(60)
    pool.shutdown()
    assert status == 200 and a_answer.status_code == 200
    ids, scores = _oracle(path, S_ROWS, 2)
    assert_same(s_answer["predictions"][0], ids[0], scores[0], 2)
    ids, scores = _oracle(path, A_ROWS, 3)
    for p, i, sc in zip(a_answer.json()["predictions"], ids, scores):
        assert_same(p, i, sc, 3)
    assert s.post(PATH, {"rows": [{"ids": [9]}]}).status_code == 200       # room again


def test_watch_reloads_a_replaced_file(setup, serve_models):
    s, path, tmp = setup
    staged = str(tmp / "staged.boltc")
    shutil.copy(serve_models["tiny_v2"], staged)
    os.replace(staged, path)
    s.wait_metric("boltc_model_version", 2.0, model="tiny")
    ids, scores = _oracle(serve_models["tiny_v2"], A_ROWS, 3)
    r = s.post(PATH, {"rows": A_ROWS, "top_k": 3}).json()
    assert r["version"] == 2
    for p, i, sc in zip(r["predictions"], ids, scores):
        assert_same(p, i, sc, 3)


def test_batch_sparse_runs_queued_sparse_requests_as_one_call(setup):
    s, path, _ = setup
    s_body = json.dumps({"rows": S_ROWS, "top_k": 2}).encode()
    sock = raw_request_head(s.port, PATH, s_body)
    s.wait_metric("boltc_inflight_requests", 1.0)
    rows_before, calls_before = s.metric("boltc_batch_rows_sum"), s.metric("boltc_batch_rows_count")
    b_rows = [{"ids": [11, 12, 13, 14], "values": [0.5, 0.5, 1.0, 2.0]}]
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(s.client.post, PATH, json={"rows": A_ROWS, "top_k": 3, "sparse": True})
        s.wait_metric("boltc_queue_depth_rows", 2.0)
        b = pool.submit(s.client.post, PATH, json={"rows": b_rows, "top_k": 3, "sparse": True})
        s.wait_metric("boltc_queue_depth_rows", 3.0)
        assert finish(sock, s_body)[0] == 200
        a, b = a.result(60).json(), b.result(60).json()
    # one native call for A and B (3 rows), one for S: exactly Model.predict on A's and B's rows joined
    assert s.metric("boltc_batch_rows_count") - calls_before == 2
    assert s.metric("boltc_batch_rows_sum") - rows_before == 4
    ids, scores = boltc.load(path).predict(sparse_rows(A_ROWS + b_rows, 300), top_k=3, sparse=True)
    for p, i, sc in zip(a["predictions"] + b["predictions"], ids, scores):
        assert_same(p, i, sc, 3)


def test_sigterm_drains_in_flight_requests_then_exits(setup):
    s, path, _ = setup
    sock, s_body, a, pool = _held(s)
    s.proc.send_signal(signal.SIGTERM)
    status, s_answer = finish(sock, s_body)              # its body arrives after SIGTERM: still served
    a_answer = a.result(60)
    pool.shutdown()
    assert status == 200 and a_answer.status_code == 200
    ids, scores = _oracle(path, S_ROWS, 2)
    assert_same(s_answer["predictions"][0], ids[0], scores[0], 2)
    assert s.proc.wait(60) == 0
    assert any("drained and stopped (SIGTERM)" in line for line in s.lines)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=5)
