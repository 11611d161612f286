"""Prometheus metrics and a Server-Timing header with the per-stage wall times of each request."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from service.pipeline import StageTimes

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "facebank_requests_total", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "facebank_request_seconds",
            "request wall time",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "facebank_stage_seconds",
            "pipeline stage wall time",
            ["stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )


def install_metrics(app: FastAPI) -> Metrics:
    metrics = Metrics()

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        elapsed = time.perf_counter() - start
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics.requests.labels(name, str(response.status_code)).inc()
        metrics.latency.labels(name).observe(elapsed)
        times: StageTimes | None = getattr(request.state, "times", None)
        if times is not None and times.seconds:
            for stage, seconds in times.seconds.items():
                metrics.stages.labels(stage).observe(seconds)
            response.headers["Server-Timing"] = ", ".join(
                f"{stage};dur={seconds * 1000:.2f}" for stage, seconds in times.seconds.items()
            )
        return response

    @app.get("/metrics", include_in_schema=False)
    def _metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
