"""The Starlette app: Open Inference Protocol v2 routes, /v1 predict, reloads, /metrics.

Every answer is JSON; every mistake in a request is a 4xx whose body names the field, the row and what
was expected (rows.RequestError). Only a bug in boltc answers 500. With a token, every route but the
two health checks needs `Authorization: Bearer <token>`.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version as dist_version

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from boltc.errors import BoltError
from boltc.serve import answers as A
from boltc.serve import rows as R
from boltc.serve.batcher import Batcher, Job, QueueFull
from boltc.serve.metrics import Metrics
from boltc.serve.models import LoadRefused, ModelSet

log = logging.getLogger("boltc.serve")


@dataclass
class Settings:
    """The command line's serving options (boltc/commands/serve.py)."""
    max_batch: int = 64
    max_wait_ms: float = 1.0
    max_queue: int = 4096
    max_rows: int = 1024
    max_body: int = 8 << 20
    token: str | None = None
    watch: float = 0.0
    batch_sparse: bool = False


def json_error(e: R.RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def build_app(models: ModelSet, settings: Settings) -> Starlette:
    metrics = Metrics()
    for m in models.models.values():
        metrics.model_loaded(m)
    batcher = Batcher(settings.max_batch, settings.max_wait_ms / 1000.0, settings.max_queue, metrics)
    version = _boltc_version()

    # ------------------------------------------------------------ plumbing
    def endpoint(route: str, handler, guarded: bool = True):
        async def run(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                if guarded and settings.token is not None:
                    check_token(request)
                resp = await handler(request)
            except R.RequestError as e:
                resp = json_error(e)
            except Exception:
                log.exception("error serving %s", request.url.path)
                resp = JSONResponse({"error": "internal server error (a bug in boltc; see the server log)"},
                                    status_code=500)
            metrics.observe(route, resp.status_code, time.perf_counter() - t0)
            return resp
        return run

    def check_token(request: Request) -> None:
        got = request.headers.get("authorization", "")
        scheme, _, tok = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(tok.strip().encode(), settings.token.encode()):
            raise R.RequestError(401, "missing or wrong bearer token", "Authorization", None,
                                 "the header 'Authorization: Bearer <token>'",
                                 headers={"WWW-Authenticate": "Bearer"})

    def served_model(name: str, version: str | None = None):
        m = models.models.get(name)
        if m is None:
            raise R.RequestError(404, f"unknown model {name!r}", "model", None,
                                 f"one of {sorted(models.models)}")
        if version is not None and version != str(m.version):
            raise R.RequestError(404, f"model {name!r} has no version {version!r}", "version", None,
                                 f"the serving version {m.version}")
        return m

    async def body_json(request: Request) -> dict:
        cl = request.headers.get("content-length")
        if cl and cl.isdigit() and int(cl) > settings.max_body:
            raise too_large()
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > settings.max_body:
                raise too_large()
            chunks.append(chunk)
        return R.parse_json(b"".join(chunks))

    def too_large() -> R.RequestError:
        return R.RequestError(413, f"the body is larger than the limit of {settings.max_body} bytes", "body", None,
                              f"at most {settings.max_body} bytes (--max-body-bytes)")

    async def run_rows(served, rows: R.Rows, top_k: int, sparse: bool, exclude_seen: bool = False):
        try:
            done = batcher.try_inline(served, rows.X, rows.n, top_k, sparse, exclude_seen)
        except BoltError as e:
            raise R.RequestError(422, e.message, "rows", None, "rows the model can read") from None
        if done is not None:
            return done
        try:
            fut = batcher.submit(Job(served, rows.X, rows.n, top_k, sparse, settings.batch_sparse, exclude_seen))
        except QueueFull as e:
            raise R.RequestError(503, f"the server is busy: {e}", None, None, "a retry after a moment",
                                 headers={"Retry-After": "1"}) from None
        try:
            return await fut
        except BoltError as e:            # the model refused these rows (checked above, so rare)
            raise R.RequestError(422, e.message, "rows", None, "rows the model can read") from None

    class counted:
        """Counts a predict request in flight (the batcher's wait and inline rule read the count)."""
        __slots__ = ()

        def __init__(self, request: Request):
            batcher.saw_client(request.client)
            batcher.inflight += 1
            metrics.inflight.inc()

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            batcher.inflight -= 1
            metrics.inflight.dec()
            batcher.poke()             # a request that ends without queueing must not hold a batch back

    # ------------------------------------------------------------ OIP v2
    async def server_meta(request):
        return JSONResponse({"name": "boltc", "version": version, "extensions": ["model_repository"]})

    async def live(request):
        return JSONResponse({"live": True})

    async def ready(request):
        ok = bool(models.models)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def model_meta(request):
        m = served_model(request.path_params["name"], request.path_params.get("version"))
        s = m.schema
        if s.kind == "text":
            inputs = [{"name": s.name, "datatype": "BYTES", "shape": [-1]}]
        else:
            inputs = [{"name": s.name, "datatype": "FP32", "shape": [-1, s.dim]}]
            if s.kind == "sparse":
                inputs += [{"name": f"{s.name}.indices", "datatype": "INT64", "shape": [-1]},
                           {"name": f"{s.name}.values", "datatype": "FP32", "shape": [-1]},
                           {"name": f"{s.name}.offsets", "datatype": "INT64", "shape": [-1]}]
        outputs = [{"name": "ids", "datatype": "INT32", "shape": [-1, -1]},
                   {"name": "scores", "datatype": "FP32", "shape": [-1, -1]}]
        if m.class_names:
            outputs.append({"name": "labels", "datatype": "BYTES", "shape": [-1, -1]})
        return JSONResponse({"name": m.name, "versions": [str(m.version)], "platform": "boltc",
                             "inputs": inputs, "outputs": outputs, "parameters": m.metadata()})

    async def model_ready(request):
        m = served_model(request.path_params["name"], request.path_params.get("version"))
        return JSONResponse({"name": m.name, "ready": True})

    async def infer(request):
        async with counted(request):
            m = served_model(request.path_params["name"], request.path_params.get("version"))
            body = await body_json(request)
            params = body.get("parameters") or {}
            if not isinstance(params, dict):
                raise R.bad("parameters", "an object", got=params)
            top_k = R.parse_top_k(params, m, "top_k")
            sparse = R.parse_sparse(params, m, "sparse")
            seen = R.parse_exclude_seen(params, m)
            rows = R.parse_oip_inputs(body, m.schema, settings.max_rows)
            ids, scores = await run_rows(m, rows, top_k, sparse, seen)
        out = {"model_name": m.name, "model_version": str(m.version), "outputs": A.oip_outputs(m, ids, scores)}
        if "id" in body:
            out["id"] = body["id"]
        return JSONResponse(out)

    # ------------------------------------------------------------ plain predict
    async def predict(request):
        async with counted(request):
            m = served_model(request.path_params["name"])
            body = await body_json(request)
            unknown = set(body) - {"rows", "top_k", "sparse", "exclude", "exclude_seen"}
            if unknown:
                raise R.bad(sorted(unknown)[0], "only the fields rows, top_k, sparse, exclude, exclude_seen")
            if "rows" not in body:
                raise R.bad("rows", "a list of rows (the model's input, one entry per example)")
            top_k = R.parse_top_k(body, m)
            sparse = R.parse_sparse(body, m)
            seen = R.parse_exclude_seen(body, m)
            rows = R.parse_rows(body["rows"], m.schema, settings.max_rows)
            exclude = R.parse_exclude(body, rows.n, m.classes)
            # excluding e labels: ask for top_k + e, drop the excluded, keep top_k (exact)
            extra = max((len(s) for s in exclude), default=0) if exclude else 0
            ids, scores = await run_rows(m, rows, min(top_k + extra, max(1, m.classes)), sparse, seen)
        preds = A.v1_predictions(m, ids, scores, top_k, exclude)
        return JSONResponse({"model": m.name, "version": m.version, "predictions": preds})

    async def list_models(request):
        return JSONResponse({"models": [m.metadata() for m in models.models.values()]})

    # ------------------------------------------------------------ reloads
    async def reload_route(request):
        name = request.path_params["name"]
        served_model(name)
        new = await reload(name)
        return JSONResponse({"name": name, "version": new.version, "sha256": new.sha256,
                             "load_seconds": round(new.load_seconds, 4)})

    async def reload(name: str):
        old = models.models[name]
        try:
            new = await asyncio.to_thread(models.reload, name)
        except LoadRefused as e:
            metrics.reloads.labels(name, "refused").inc()
            print(f"boltc serve: reload of {name!r} refused, version {old.version} keeps serving: {e.reason}",
                  file=sys.stderr, flush=True)
            raise R.RequestError(422, f"reload refused, version {old.version} keeps serving: {e.reason}",
                                 "file", None, "a loadable model file with the same inputs and labels") from None
        metrics.reloads.labels(name, "ok").inc()
        metrics.model_loaded(new, old)
        print(f"boltc serve: {name!r} version {new.version} ({new.sha256}) serving, loaded in "
              f"{new.load_seconds:.2f} s", file=sys.stderr, flush=True)
        return new

    async def repository_index(request):
        return JSONResponse([{"name": m.name, "version": str(m.version), "state": "READY"}
                             for m in models.models.values()])

    async def watch_files():
        """--watch: poll each model file; a changed one is reloaded (a refused one is not retried
        until it changes again)."""
        def stamp(path):
            try:
                st = os.stat(path)
                return st.st_mtime_ns, st.st_size
            except OSError:
                return None
        seen = {n: stamp(m.path) for n, m in models.models.items()}
        while True:
            await asyncio.sleep(settings.watch)
            for name, m in list(models.models.items()):
                now = stamp(m.path)
                if now is not None and now != seen.get(name):
                    seen[name] = now
                    with contextlib.suppress(R.RequestError):
                        await reload(name)

    async def metrics_route(request):
        return Response(metrics.render(), media_type=metrics.content_type)

    # ------------------------------------------------------------ app
    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        watcher = asyncio.create_task(watch_files()) if settings.watch > 0 else None
        try:
            yield
        finally:
            if watcher:
                watcher.cancel()
            await asyncio.to_thread(batcher.stop)

    def r(path, handler, methods, guarded=True):
        return Route(path, endpoint(path, handler, guarded), methods=methods)

    routes = [
        r("/v2", server_meta, ["GET"]),
        r("/v2/health/live", live, ["GET"], guarded=False),
        r("/v2/health/ready", ready, ["GET"], guarded=False),
        r("/v2/models/{name}", model_meta, ["GET"]),
        r("/v2/models/{name}/versions/{version}", model_meta, ["GET"]),
        r("/v2/models/{name}/ready", model_ready, ["GET"]),
        r("/v2/models/{name}/versions/{version}/ready", model_ready, ["GET"]),
        r("/v2/models/{name}/infer", infer, ["POST"]),
        r("/v2/models/{name}/versions/{version}/infer", infer, ["POST"]),
        r("/v2/repository/index", repository_index, ["POST"]),
        r("/v2/repository/models/{name}/load", reload_route, ["POST"]),
        r("/v1/models", list_models, ["GET"]),
        r("/v1/models/{name}/predict", predict, ["POST"]),
        r("/metrics", metrics_route, ["GET"]),
    ]

    async def http_error(request, exc: HTTPException):
        if exc.status_code == 405:
            body = {"error": f"method {request.method} is not allowed on {request.url.path}", "field": "method",
                    "expected": exc.headers.get("Allow", "") if exc.headers else ""}
        else:
            body = {"error": f"no route {request.url.path}", "field": "path",
                    "expected": "one of /v2, /v2/health/{live,ready}, /v2/models/{name}[/ready|/infer], "
                                "/v2/repository/..., /v1/models/{name}/predict, /metrics"}
        metrics.observe("unmatched", exc.status_code, 0.0)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    star = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    hot = {("v1", "predict"): endpoint("/v1/models/{name}/predict", predict),
           ("v2", "infer"): endpoint("/v2/models/{name}/infer", infer)}

    async def app(scope, receive, send):
        """The two predict routes go straight to their handlers (Starlette's router and middleware
        stack cost about a third of a small request's time on the event loop); all else via Starlette."""
        if scope["type"] == "http" and scope["method"] == "POST":
            parts = scope["path"].split("/")
            handler = hot.get((parts[1], parts[4])) if len(parts) == 5 and parts[2] == "models" else None
            if handler is not None and parts[3]:
                scope["path_params"] = {"name": parts[3]}
                resp = await handler(Request(scope, receive))
                await resp(scope, receive, send)
                return
        await star(scope, receive, send)

    app.state = star.state
    app.state.models, app.state.batcher, app.state.metrics = models, batcher, metrics
    return app


def _boltc_version() -> str:
    try:
        return dist_version("boltc")
    except Exception:
        return "0"
