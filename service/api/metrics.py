"""Prometheus metrics and a Server-Timing header with the per-stage wall times of each request."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from service.pipeline import StageTimes

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class FollowerCollector(Collector):
    """Where this process stands in the change log, read when scraped."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = getattr(self._app.state, "facebank", None)
        if state is None:
            return
        status = state.follower.status()
        yield GaugeMetricFamily(
            "facebank_changes_position",
            "the last change log position applied to this process's index",
            value=status.position,
        )
        yield GaugeMetricFamily(
            "facebank_changes_lag_seconds",
            "seconds since this process's index was last in step with SQL",
            value=status.lag_s,
        )


class BatchCollector(Collector):
    """Batch sizes, failed batches and the queue, read from the app's micro-batcher when scraped.

    The time each request waited for its batch is the `queue` stage of facebank_stage_seconds.
    """

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        state = getattr(self._app.state, "facebank", None)
        batcher = state.serving.batcher if state is not None else None
        if batcher is None:
            return
        stats = batcher.stats()
        buckets = [
            (str(bound), sum(n for size, n in stats.sizes.items() if size <= bound))
            for bound in _BATCH_SIZE_BUCKETS
        ]
        yield HistogramMetricFamily(
            "facebank_batch_size",
            "requests per micro-batch",
            buckets=[*buckets, ("+Inf", stats.batches)],
            sum_value=stats.items,
        )
        yield CounterMetricFamily(
            "facebank_batch_failures",
            "micro-batches whose whole-batch call raised (their requests were retried one at a time)",
            value=stats.failed_batches,
        )
        yield CounterMetricFamily(
            "facebank_batch_requests_failed_alone",
            "requests that also failed when run alone after their batch failed (500 batch_failed)",
            value=stats.failed_alone,
        )
        yield GaugeMetricFamily(
            "facebank_batch_queued", "requests waiting for a micro-batch", value=batcher.queued()
        )


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
    metrics.registry.register(BatchCollector(app))
    metrics.registry.register(FollowerCollector(app))

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

    # async: a sync route would wait for a worker thread, and an overloaded server is when metrics matter.
    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
