"""Prometheus metrics of the server (GET /metrics): one registry per app, so two servers in
one process (tests) do not share counters. With --workers N each worker counts its own
requests; a scraper sees whichever worker answers (run one worker per replica to scrape
each)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

ENDPOINTS = {"/", "/predict", "/invocations", "/info", "/health", "/ready", "/metrics"}
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's counters and histograms."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mnist_http_requests", "HTTP requests answered",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("mnist_http_request_duration_seconds",
                                 "time from request start to response start", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("mnist_batch_size", "images per model call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.answers = Counter("mnist_predictions", "answers by predicted digit", ["digit"],
                               registry=r)
        self.model = Info("mnist_model", "the model answering", registry=r)
        self.ready = Gauge("mnist_ready", "1 once the model is loaded and warmed up",
                           registry=r)

    def set_model(self, about: dict[str, Any]) -> None:
        self.model.info({k: str(v) for k, v in about.items() if v is not None})


class MetricsMiddleware:
    """Counts each HTTP response by endpoint and status and times it (pure ASGI: no body
    buffering, so streaming and timeouts behave as without it)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        t0 = time.perf_counter()

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
            await send(message)

        await self.app(scope, receive, counting_send)
