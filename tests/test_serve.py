"""`boltc serve` against a real server process and a real HTTP client: every route, the Open Inference
Protocol payloads, answers identical to Model.predict in process, every kind of bad request, /metrics."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import boltc
from serve_helpers import Server, assert_same, serve_models, sparse_rows  # noqa: F401 (fixture)

MAX_ROWS, MAX_BODY = 8, 16000


@pytest.fixture(scope="module")
def server(serve_models):
    s = Server([serve_models["tiny"], serve_models["dense"], f"topics={serve_models['text']}", serve_models["binary"],
                serve_models["tiny_ensemble"],
                "--max-rows", str(MAX_ROWS), "--max-body-bytes", str(MAX_BODY)])
    yield s
    assert s.stop() == 0, "".join(s.lines)


@pytest.fixture(scope="module")
def oracle(serve_models):
    """The same files loaded in process: the answers the server must give."""
    return {"tiny": boltc.load(serve_models["tiny"]), "dense": boltc.load(serve_models["dense"]),
            "topics": boltc.load(serve_models["text"]), "tiny_ensemble": boltc.load(serve_models["tiny_ensemble"])}


ROWS = [{"ids": [0, 5, 17, 299], "values": [1.0, 0.5, 2.0, 0.25]}, {"ids": [3, 7]}, {"ids": []},
        {"ids": [150, 151, 152, 10], "values": [1, 1, 1, 3]}]


def test_server_and_model_metadata_health_and_ready(server, oracle):
    meta = server.get("/v2").json()
    assert meta["name"] == "boltc" and "model_repository" in meta["extensions"]
    assert server.get("/v2/health/live").json() == {"live": True}
    assert server.get("/v2/health/ready").json() == {"ready": True}
    for name, m in oracle.items():
        md = server.get(f"/v2/models/{name}").json()
        assert md["name"] == name and md["versions"] == ["1"] and md["platform"] == "boltc"
        inp = m.plan["inputs"][0]
        if inp["kind"] == "text":
            assert md["inputs"][0] == {"name": inp["name"], "datatype": "BYTES", "shape": [-1]}
        else:
            assert md["inputs"][0] == {"name": inp["name"], "datatype": "FP32", "shape": [-1, inp["dim"]]}
        assert md["parameters"]["classes"] == m.plan["target"]["classes"]
        assert server.get(f"/v2/models/{name}/versions/1").json()["name"] == name
        assert server.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert sorted(m["name"] for m in server.get("/v1/models").json()["models"]) == sorted([*oracle, "binary"])
    index = server.post("/v2/repository/index").json()
    assert sorted(e["name"] for e in index) == sorted([*oracle, "binary"]) and {e["state"] for e in index} == {"READY"}
    topics = server.get("/v2/models/topics").json()
    assert topics["parameters"]["class_names"] is True and topics["outputs"][-1]["name"] == "labels"


@pytest.mark.parametrize("sparse", [False, True])
def test_v1_sparse_rows_equal_model_predict(server, oracle, sparse):
    m = oracle["tiny"]
    r = server.post("/v1/models/tiny/predict", {"rows": ROWS, "top_k": 3, "sparse": sparse})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["version"] == 1
    ids, scores = m.predict(sparse_rows(ROWS, 300), top_k=3, sparse=sparse)
    assert len(body["predictions"]) == len(ROWS)
    for p, i, s in zip(body["predictions"], ids, scores):
        assert_same(p, i, s, 3)


@pytest.mark.parametrize("sparse", [False, True])
def test_an_ensemble_answers_with_its_members_mean(server, oracle, sparse):
    m = oracle["tiny_ensemble"]
    assert len(m.members) == 2
    r = server.post("/v1/models/tiny_ensemble/predict", {"rows": ROWS, "top_k": 3, "sparse": sparse})
    assert r.status_code == 200, r.text
    ids, scores = m.predict(sparse_rows(ROWS, 300), top_k=3, sparse=sparse)
    for p, i, s in zip(r.json()["predictions"], ids, scores):
        assert_same(p, i, s, 3)


def test_v1_full_vectors_dense_model_and_text_equal_model_predict(server, oracle):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3, 12)).astype(np.float32)
    r = server.post("/v1/models/dense/predict", {"rows": X.tolist(), "top_k": 4})
    ids, scores = oracle["dense"].predict(X, top_k=4)
    for p, i, s in zip(r.json()["predictions"], ids, scores):
        assert_same(p, i, s, 4)
    # a full vector for a sparse input reads as its nonzeros
    vec = [0.0] * 300
    vec[5], vec[17] = 0.5, 2.0
    r = server.post("/v1/models/tiny/predict", {"rows": [vec], "top_k": 2})
    ids, scores = oracle["tiny"].predict(sparse_rows([{"ids": [5, 17], "values": [0.5, 2.0]}], 300), top_k=2)
    assert_same(r.json()["predictions"][0], ids[0], scores[0], 2)
    texts = ["rocket orbit moon launch", "flour butter oven bake", "goal team player"]
    r = server.post("/v1/models/topics/predict", {"rows": texts + [{"body": "moon galaxy"}], "top_k": 2})
    ids, scores = oracle["topics"].predict(texts + ["moon galaxy"], top_k=2)
    for p, i, s in zip(r.json()["predictions"], ids, scores):
        assert_same(p, i, s, 2)
        assert p["labels"] == [oracle["topics"].class_name(j) for j in p["ids"]]
    assert {p["labels"][0] for p in r.json()["predictions"][:3]} <= set(oracle["topics"].plan["target"]["class_names"])


def test_binary_model_answers_label_and_probability(server, serve_models):
    m = boltc.load(serve_models["binary"])
    texts = ["rocket orbit moon", "flour oven sauce"]
    r = server.post("/v1/models/binary/predict", {"rows": texts})
    _, scores = m.predict(texts, top_k=1)
    names = m.plan["target"].get("class_names") or ["0", "1"]
    for p, s in zip(r.json()["predictions"], scores[:, 0]):
        assert np.float32(p["probability"]) == s
        assert p["label"] == (names[1] if s >= 0.5 else names[0])


def test_versioned_oip_routes(server, oracle):
    X = sparse_rows(ROWS[:1], 300)
    body = {"parameters": {"top_k": 2}, "inputs": [
        {"name": "features", "datatype": "FP32", "shape": [1, 300], "data": X.toarray().ravel().tolist()}]}
    r = server.post("/v2/models/tiny/versions/1/infer", body)
    ids, _ = oracle["tiny"].predict(X, top_k=2)
    assert r.json()["outputs"][0]["data"] == ids.ravel().tolist()
    assert server.get("/v2/models/tiny/versions/1/ready").json()["ready"] is True
    assert server.post("/v2/models/tiny/versions/3/infer", body).status_code == 404


def test_exclude_seen_equals_model_predict(server, oracle):
    """exclude_seen: the row's own feature ids (here ids < 40 name labels too) are never ranked."""
    X = sparse_rows(ROWS, 300)
    ids, scores = oracle["tiny"].predict(X, top_k=5, exclude_seen=True)
    r = server.post("/v1/models/tiny/predict", {"rows": ROWS, "top_k": 5, "exclude_seen": True})
    for p, row, i, s in zip(r.json()["predictions"], ROWS, ids, scores):
        assert_same(p, i, s, 5)
        assert not set(p["ids"]) & set(row["ids"])
    r = server.post("/v2/models/tiny/infer", {"parameters": {"top_k": 5, "exclude_seen": True}, "inputs": [
        {"name": "features", "datatype": "FP32", "shape": [len(ROWS), 300], "data": X.toarray().ravel().tolist()}]})
    assert r.json()["outputs"][0]["data"] == ids.ravel().tolist()
    r = server.post("/v1/models/dense/predict", {"rows": [[0.0] * 12], "exclude_seen": True})
    assert r.status_code == 422 and r.json()["field"] == "exclude_seen"
    assert server.get("/v2/models/tiny").json()["parameters"]["exclude_seen"] is True


def test_v1_exclude_drops_labels_from_the_full_ranking(server, oracle):
    m = oracle["tiny"]
    full_ids, full_scores = m.predict(sparse_rows(ROWS[:2], 300), top_k=40, sparse=False)
    exclude = [[int(full_ids[0, 0]), int(full_ids[0, 2])], [int(full_ids[1, 1])]]
    r = server.post("/v1/models/tiny/predict", {"rows": ROWS[:2], "top_k": 3, "exclude": exclude})
    for p, ids, scores, ex in zip(r.json()["predictions"], full_ids, full_scores, exclude):
        keep = [(i, s) for i, s in zip(ids, scores) if i not in ex and i >= 0 and np.isfinite(s)][:3]
        assert p["ids"] == [int(i) for i, _ in keep] and not set(p["ids"]) & set(ex)
        assert np.array_equal(np.float32(p["scores"]), np.float32([s for _, s in keep]))


def test_oip_infer_tensors_equal_model_predict(server, oracle):
    m = oracle["tiny"]
    X = sparse_rows(ROWS, 300)
    dense = X.toarray()
    ref_ids, ref_scores = m.predict(X, top_k=3)
    csr = {"id": "req-1", "parameters": {"top_k": 3}, "inputs": [
        {"name": "features.indices", "datatype": "INT64", "shape": [int(X.nnz)], "data": X.indices.tolist()},
        {"name": "features.values", "datatype": "FP32", "shape": [int(X.nnz)], "data": X.data.tolist()},
        {"name": "features.offsets", "datatype": "INT64", "shape": [len(ROWS) + 1], "data": X.indptr.tolist()}]}
    flat = {"parameters": {"top_k": 3}, "inputs": [
        {"name": "features", "datatype": "FP32", "shape": [len(ROWS), 300], "data": dense.ravel().tolist()}]}
    nested = {"parameters": {"top_k": 3}, "inputs": [
        {"name": "features", "datatype": "FP32", "shape": [len(ROWS), 300], "data": dense.tolist()}]}
    for body in (csr, flat, nested):
        r = server.post("/v2/models/tiny/infer", body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model_name"] == "tiny" and out["model_version"] == "1"
        assert out.get("id") == body.get("id")
        o = {t["name"]: t for t in out["outputs"]}
        assert o["ids"]["shape"] == [len(ROWS), 3] and o["ids"]["datatype"] == "INT32"
        got_ids = np.asarray(o["ids"]["data"]).reshape(len(ROWS), 3)
        got_scores = np.asarray(o["scores"]["data"], np.float32).reshape(len(ROWS), 3)
        assert np.array_equal(got_ids, np.where(ref_ids >= 0, ref_ids, -1))
        assert np.array_equal(got_scores[ref_ids >= 0], ref_scores[ref_ids >= 0])
        assert (got_scores[ref_ids < 0] == np.finfo(np.float32).min).all()
    texts = ["rocket planet", "garlic sauce"]
    r = server.post("/v2/models/topics/infer", {"parameters": {"top_k": 1}, "inputs": [
        {"name": "doc", "datatype": "BYTES", "shape": [2], "data": texts}]})
    o = {t["name"]: t for t in r.json()["outputs"]}
    ids, _ = oracle["topics"].predict(texts, top_k=1)
    assert o["ids"]["data"] == ids.ravel().tolist()
    assert o["labels"]["data"] == [oracle["topics"].class_name(i) for i in ids.ravel()]


def test_concurrent_requests_each_equal_model_predict_alone(server, oracle):
    """Requests that arrive together are batched; every answer must still be its rows' own (exactly, for
    layers this small: no BLAS path, whose summation order depends on the batch size)."""
    rng = np.random.default_rng(3)
    reqs = [[{"ids": sorted(rng.choice(300, 6, replace=False).tolist())}] for _ in range(48)]

    def one(rows):
        return server.client.post("/v1/models/tiny/predict", json={"rows": rows, "top_k": 5}).json()
    with ThreadPoolExecutor(16) as ex:
        answers = list(ex.map(one, reqs))
    for rows, a in zip(reqs, answers):
        ids, scores = oracle["tiny"].predict(sparse_rows(rows, 300), top_k=5)
        assert_same(a["predictions"][0], ids[0], scores[0], 5)


BAD = [  # (route, body, status, field, row)
    ("tiny", b'{"rows": [{"ids": [1, 2]}', 400, "body", None),
    ("tiny", b"\xff\xfe", 400, "body", None),
    ("tiny", b"[1, 2]", 400, "body", None),
    ("tiny", {"top_k": 3}, 422, "rows", None),
    ("tiny", {"rows": {"ids": [1]}}, 422, "rows", None),
    ("tiny", {"rows": []}, 422, "rows", None),
    ("tiny", {"rows": [{"ids": [1]}, {"ids": [300]}]}, 422, "rows[1].ids[0]", 1),
    ("tiny", {"rows": [{"ids": [1, -1]}]}, 422, "rows[0].ids[1]", 0),
    ("tiny", {"rows": [{"ids": [1, "2"]}]}, 422, "rows[0].ids[1]", 0),
    ("tiny", {"rows": [{"ids": [1, 2.5]}]}, 422, "rows[0].ids[1]", 0),
    ("tiny", {"rows": [{"ids": [1, 2], "values": [1.0]}]}, 422, "rows[0].values", 0),
    ("tiny", {"rows": [{"ids": [1, 2], "values": [1.0, "x"]}]}, 422, "rows[0].values[1]", 0),
    ("tiny", b'{"rows": [{"ids": [1], "values": [NaN]}]}', 422, "rows[0].values[0]", 0),
    ("tiny", {"rows": [{"ids": [1], "weights": [1]}]}, 422, "rows[0].weights", 0),
    ("tiny", {"rows": [{"values": [1]}]}, 422, "rows[0].ids", 0),
    ("tiny", {"rows": ["some text"]}, 422, "rows[0]", 0),
    ("tiny", {"rows": [[1.0, 2.0]]}, 422, "rows[0]", 0),
    ("tiny", {"rows": [{"ids": [1]}], "top_k": 0}, 422, "top_k", None),
    ("tiny", {"rows": [{"ids": [1]}], "top_k": "3"}, 422, "top_k", None),
    ("tiny", {"rows": [{"ids": [1]}], "sparse": "yes"}, 422, "sparse", None),
    ("tiny", {"rows": [{"ids": [1]}], "exclude_seen": 1}, 422, "exclude_seen", None),
    ("tiny", {"rows": [{"ids": [1]}], "exclude": [[1], [2]]}, 422, "exclude", None),
    ("tiny", {"rows": [{"ids": [1]}], "exclude": [[40]]}, 422, "exclude[0][0]", 0),
    ("tiny", {"rows": [{"ids": [1]}], "colour": "red"}, 422, "colour", None),
    ("tiny", {"rows": [{"ids": [1]}] * (MAX_ROWS + 1)}, 413, "rows", None),
    ("tiny", {"rows": [{"ids": list(range(299)), "values": [0.5] * 299}] * 8}, 413, "body", None),
    ("dense", {"rows": [[0.0] * 11]}, 422, "rows[0]", 0),
    ("dense", {"rows": [[0.0] * 11 + [None]]}, 422, "rows[0][11]", 0),
    ("dense", {"rows": [[0.0] * 12], "sparse": True}, 422, "sparse", None),
    ("topics", {"rows": ["ok", 7]}, 422, "rows[1]", 1),
    ("topics", {"rows": [{"title": "x"}]}, 422, "rows[0].title", 0),
    ("nosuch", {"rows": [{"ids": [1]}]}, 404, "model", None),
]


@pytest.mark.parametrize("name,body,status,field,row", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_v1_requests_get_4xx_naming_field_row_and_expected(server, name, body, status, field, row):
    r = server.post(f"/v1/models/{name}/predict", body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field and err.get("row") == row
    assert err["expected"] and field.split("[")[0].split(".")[0] in err["error"] or err["error"]


OIP_BAD = [
    ({"inputs": []}, "inputs"),
    ({"inputs": [{"name": "other", "datatype": "FP32", "shape": [1, 300], "data": [0] * 300}]}, "inputs"),
    ({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 299], "data": [0] * 299}]},
     "inputs[0].shape"),
    ({"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 300], "data": [0] * 300}]},
     "inputs[0].data"),
    ({"inputs": [{"name": "features", "datatype": "BOOL", "shape": [1, 300], "data": [0] * 300}]},
     "inputs[0].datatype"),
    ({"inputs": [{"name": "features.indices", "datatype": "INT64", "shape": [2], "data": [1, 2]},
                 {"name": "features.offsets", "datatype": "INT64", "shape": [2], "data": [0, 3]}]},
     "inputs[1].data"),
    ({"inputs": [{"name": "features.indices", "datatype": "INT64", "shape": [2], "data": [1, 900]},
                 {"name": "features.offsets", "datatype": "INT64", "shape": [2], "data": [0, 2]}]},
     "inputs[0].data (row 0)"),
    ({"inputs": [{"name": "features.indices", "datatype": "INT64", "shape": [1], "data": [1]}]}, "inputs"),
    ({"parameters": {"top_k": -2}, "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 300],
                                               "data": [0] * 300}]}, "top_k"),
    ({"parameters": [1], "inputs": []}, "parameters"),
]


@pytest.mark.parametrize("body,field", OIP_BAD, ids=[str(i) for i in range(len(OIP_BAD))])
def test_bad_oip_requests_get_422_naming_the_tensor(server, body, field):
    r = server.post("/v2/models/tiny/infer", body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["expected"]


def test_unknown_routes_methods_and_versions_are_json_4xx(server):
    r = server.get("/v3/nothing")
    assert r.status_code == 404 and r.json()["field"] == "path"
    r = server.get("/v1/models/tiny/predict")
    assert r.status_code == 405 and r.json()["field"] == "method" and "POST" in r.json()["expected"]
    r = server.get("/v2/models/tiny/versions/7")
    assert r.status_code == 404 and r.json()["field"] == "version"
    r = server.post("/v2/models/nosuch/infer", {"inputs": []})
    assert r.status_code == 404 and r.json()["field"] == "model"


def test_metrics_in_prometheus_format_and_no_500(server):
    from prometheus_client.parser import text_string_to_metric_families
    server.post("/v1/models/tiny/predict", {"rows": ROWS[:1]})
    server.post("/v1/models/tiny/predict", {"rows": []})
    fams = {f.name: f for f in text_string_to_metric_families(server.get("/metrics").text)}
    for name in ("boltc_requests", "boltc_request_errors", "boltc_request_latency_seconds", "boltc_batch_rows",
                 "boltc_queue_depth_rows", "boltc_inflight_requests", "boltc_model_load_seconds",
                 "boltc_model_version"):
        assert name in fams, name
    codes = {(s.labels["route"], s.labels["code"]) for s in fams["boltc_requests"].samples
             if s.name == "boltc_requests_total"}
    assert ("/v1/models/{name}/predict", "200") in codes and ("/v1/models/{name}/predict", "422") in codes
    assert not any(c.startswith("5") for _, c in codes)          # every bad request above was a 4xx
    versions = {s.labels["model"]: s.value for s in fams["boltc_model_version"].samples}
    assert versions == {"tiny": 1.0, "dense": 1.0, "topics": 1.0, "binary": 1.0, "tiny_ensemble": 1.0}
    assert all(s.value > 0 for s in fams["boltc_model_load_seconds"].samples)
    assert server.metric("boltc_batch_rows_count") >= 1
    assert server.get("/v2/health/ready").status_code == 200     # still serving


@pytest.mark.parametrize("args,message", [
    (["missing.boltc"], "cannot serve missing.boltc: missing.boltc: no such file"),
    (["{bad}"], "not a boltc model or truncated"),
    (["{tiny}", "--max-batch", "0"], "--max-batch must be at least 1"),
    (["{tiny}", "--token-file", "nope.txt"], "nope.txt: cannot read the token file"),
    (["a={tiny}", "a={tiny}"], "two models are named 'a'"),
])
def test_command_line_mistakes_exit_1_with_the_reason(serve_models, tmp_path, args, message):
    bad = tmp_path / "bad.boltc"
    bad.write_bytes(b"not a model")
    args = [a.format(tiny=serve_models["tiny"], bad=bad) for a in args]
    p = subprocess.run([sys.executable, "-m", "boltc.cli", "serve", *args, "--port", "0"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and message in p.stderr and "Traceback" not in p.stderr
