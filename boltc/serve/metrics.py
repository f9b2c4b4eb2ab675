"""Prometheus collectors, in a registry of the app's own (two apps in one process do not collide)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self._children: dict = {}
        self.requests = Counter("boltc_requests", "HTTP requests by route template and status code",
                                ["route", "code"], registry=r)
        self.errors = Counter("boltc_request_errors", "HTTP requests answered with a 4xx or 5xx",
                              ["route", "code"], registry=r)
        self.latency = Histogram("boltc_request_latency_seconds", "time from request to response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("boltc_batch_rows", "rows per native predict call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.queue_depth = Gauge("boltc_queue_depth_rows", "rows waiting for the inference thread", registry=r)
        self.inflight = Gauge("boltc_inflight_requests", "predict requests being served", registry=r)
        self.load_seconds = Gauge("boltc_model_load_seconds", "time to load, check and warm the serving model",
                                  ["model"], registry=r)
        self.version = Gauge("boltc_model_version", "version of the serving model (1 at start, +1 per reload)",
                             ["model", "sha256"], registry=r)
        self.reloads = Counter("boltc_model_reloads", "model reloads by result", ["model", "result"], registry=r)

    def model_loaded(self, served, previous=None) -> None:
        if previous is not None:
            self.version.remove(previous.name, previous.sha256) if previous.sha256 != served.sha256 else None
        self.version.labels(served.name, served.sha256).set(served.version)
        self.load_seconds.labels(served.name).set(served.load_seconds)

    def observe(self, route: str, code: int, seconds: float) -> None:
        children = self._children.get((route, code))
        if children is None:           # labels() costs a lock and a dict build: look each pair up once
            children = self._children[(route, code)] = (
                self.requests.labels(route, str(code)), self.errors.labels(route, str(code)) if code >= 400 else None,
                self.latency.labels(route))
        children[0].inc()
        if children[1] is not None:
            children[1].inc()
        children[2].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
