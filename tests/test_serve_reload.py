"""`boltc serve` reloads and auth, against a real server process: a reload under load fails no request
and every answer equals Model.predict of the version that served it; corrupt and incompatible files are
refused with the reason while the old model keeps serving; the bearer token guards all but health."""
from __future__ import annotations

import os
import shutil
import threading

import pytest

import boltc
from serve_helpers import Server, assert_same, serve_models, sparse_rows  # noqa: F401 (fixture)

TOKEN = "s3cret-token"
ROWS = [[{"ids": [1, 2, 3, 50]}], [{"ids": [7, 99, 250], "values": [0.5, 1.5, 1.0]}], [{"ids": [5]}]]


@pytest.fixture(scope="module")
def setup(serve_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reload")
    path = str(tmp / "live.boltc")
    shutil.copy(serve_models["tiny"], path)
    (tmp / "token").write_text(TOKEN + "\n")
    s = Server([f"tiny={path}", "--token-file", str(tmp / "token")], token=TOKEN)
    yield s, path, tmp
    assert s.stop() == 0, "".join(s.lines)


@pytest.fixture(scope="module")
def oracles(serve_models):
    """Per version: the answers of Model.predict in process for each request in ROWS (dense, sparse)."""
    out = {}
    for version, key in ((1, "tiny"), (2, "tiny_v2")):
        m = boltc.load(serve_models[key])
        out[version] = {(i, sparse): m.predict(sparse_rows(rows, 300), top_k=4, sparse=sparse)
                        for i, rows in enumerate(ROWS) for sparse in (False, True)}
    return out


def test_bearer_token_guards_every_route_but_health(setup):
    s, _, _ = setup
    import httpx
    bare = httpx.Client(base_url=s.url, timeout=30)
    for method, path in (("GET", "/v2"), ("GET", "/v2/models/tiny"), ("GET", "/metrics"), ("GET", "/v1/models"),
                         ("POST", "/v1/models/tiny/predict"), ("POST", "/v2/models/tiny/infer"),
                         ("POST", "/v2/repository/models/tiny/load")):
        r = bare.request(method, path, json={"rows": ROWS[0]})
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer" and r.json()["field"] == "Authorization"
        wrong = bare.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    assert bare.get("/v2/health/live").status_code == 200
    assert bare.get("/v2/health/ready").status_code == 200
    assert s.get("/v2").status_code == 200
    assert s.post("/v1/models/tiny/predict", {"rows": ROWS[0]}).status_code == 200


def _check(answer: dict, oracles, i: int, sparse: bool) -> None:
    ids, scores = oracles[answer["version"]][(i, sparse)]
    assert_same(answer["predictions"][0], ids[0], scores[0], 4)


def test_reload_under_load_fails_no_request(setup, oracles, serve_models):
    s, path, tmp = setup
    stop = threading.Event()
    results, failures = [], []

    def client(t):
        import httpx
        c = httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        n = 0
        while not stop.is_set():
            i, sparse = n % len(ROWS), (n + t) % 2 == 1
            n += 1
            try:
                r = c.post("/v1/models/tiny/predict", json={"rows": ROWS[i], "top_k": 4, "sparse": sparse})
            except Exception as e:       # a dropped connection is a failed request too
                failures.append(repr(e))
                continue
            if r.status_code != 200:
                failures.append(r.text)
            else:
                results.append((i, sparse, r.json()))
    threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    while len(results) < 20 and not failures:
        threading.Event().wait(0.05)
    staged = str(tmp / "staged.boltc")
    shutil.copy(serve_models["tiny_v2"], staged)
    os.replace(staged, path)                     # deploy: replace the file atomically, then ask for a load
    r = s.post("/v2/repository/models/tiny/load")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    seen_v2 = len([1 for *_, a in results if a["version"] == 2])
    while len([1 for *_, a in results if a["version"] == 2]) < seen_v2 + 20 and not failures:
        threading.Event().wait(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    versions = [a["version"] for *_, a in results]
    assert 1 in versions and 2 in versions
    for i, sparse, a in results:
        _check(a, oracles, i, sparse)
    assert s.get("/v2/models/tiny").json()["versions"] == ["2"]
    assert s.metric("boltc_model_version", model="tiny") == 2.0


@pytest.mark.parametrize("kind", ["truncated", "garbage", "other_input", "missing"])
def test_corrupt_or_incompatible_reload_is_refused_and_the_old_model_serves(setup, oracles, serve_models, kind):
    s, path, tmp = setup
    before = s.get("/v2/models/tiny").json()["versions"][0]
    good = open(path, "rb").read()
    staged = str(tmp / "bad.boltc")
    if kind == "truncated":
        open(staged, "wb").write(good[: len(good) // 2])
    elif kind == "garbage":
        open(staged, "wb").write(b"this is not a model\n" * 50)
    elif kind == "other_input":
        shutil.copy(serve_models["tiny_other_input"], staged)
    try:
        if kind == "missing":
            os.remove(path)
        else:
            os.replace(staged, path)
        r = s.post("/v2/repository/models/tiny/load")
        assert r.status_code == 422, r.text
        err = r.json()
        assert err["field"] == "file" and f"version {before} keeps serving" in err["error"]
        reason = {"truncated": path, "garbage": path, "other_input": "input", "missing": "no such file"}[kind]
        assert reason in err["error"]
        assert s.get("/v2/models/tiny").json()["versions"] == [before]
        a = s.post("/v1/models/tiny/predict", {"rows": ROWS[1], "top_k": 4, "sparse": False}).json()
        assert a["version"] == int(before)
        _check(a, oracles, 1, False)
    finally:
        open(path, "wb").write(good)
    assert s.metric("boltc_model_reloads_total", model="tiny", result="refused") >= 1
