"""`GET /metrics` in the Prometheus text format.

- `ims_http_requests_total{method,route,status}` and `ims_http_request_duration_seconds{method,route}`:
  every request, by route template (`/v3/images/{record_id}`), never by raw path;
- `ims_s3_errors_total{operation,kind}`: failed S3 calls (`unavailable`, `error`, and for request-path calls
  `fast_fail` while S3 is known down and `busy` when the request S3 pool is full);
- `ims_tasks_unfinished`, `ims_task_oldest_age_seconds`, `ims_tasks{state}`: the S3 task queue;
- `ims_jobs{status}`: jobs by status;
- `ims_db_commits_total`, `ims_db_committed_writes_total`: SQLite commits of the server processes and the writes
  they held (ims.store.group_commit); their ratio is the mean number of requests per durable commit.

Queue and job figures are read from the database at scrape time, so every process reports the same.
With several server processes (`ims serve --workers N`), the counters and histograms use prometheus-client's
multiprocess mode: `ims serve` points PROMETHEUS_MULTIPROC_DIR at `<data dir>/metrics` (emptied at start)
and a scrape of any process sums them all. prometheus_client is imported lazily, after that variable is set.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ims.services.context import ServiceContext
from ims.services.metrics import on_database_commit, on_s3_error, queue_and_job_counts

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ROUTE_KEY = "ims.route_template"
_METRICS: dict[str, Any] = {}


def prepare_multiprocess(data_dir: Path) -> None:
    """Before the server processes start: an empty directory for their metric files."""
    directory = data_dir / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory.resolve())


def setup() -> dict[str, Any]:
    """Create the process's metrics once (and count S3 errors into them)."""
    if _METRICS:
        return _METRICS
    from prometheus_client import Counter, Histogram

    _METRICS["requests"] = Counter(
        "ims_http_requests", "HTTP requests by method, route template and status", ["method", "route", "status"]
    )
    _METRICS["latency"] = Histogram(
        "ims_http_request_duration_seconds",
        "HTTP request latency by method and route template",
        ["method", "route"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
    _METRICS["s3_errors"] = Counter("ims_s3_errors", "Failed S3 calls by operation and kind", ["operation", "kind"])
    on_s3_error(lambda operation, kind: _METRICS["s3_errors"].labels(operation, kind).inc())
    _METRICS["commits"] = Counter("ims_db_commits", "SQLite write transactions committed (group commits)")
    _METRICS["committed_writes"] = Counter("ims_db_committed_writes", "Write blocks those commits made durable")

    def count_commit(writes: int) -> None:
        _METRICS["commits"].inc()
        _METRICS["committed_writes"].inc(writes)

    on_database_commit(count_commit)
    return _METRICS


class RequestMetrics:
    """Count and time every request by the template of the route that answered it."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self.metrics = setup()
        self._templates: list[tuple[re.Pattern[str], str]] | None = None
        # The labelled children, looked up once: `labels()` takes a lock and builds a key on every call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _route(self, scope: Scope) -> str:
        """The documented path template the request matched (cached answers never reach a route); a middleware
        that answers before routing may name it in ROUTE_KEY."""
        named = scope.get(ROUTE_KEY)
        if named is not None:
            return str(named)
        if self._templates is None:
            paths = list(self.api.openapi().get("paths", {})) + ["/metrics"]
            # Literal segments win over parameters (/v3/remote-build-nodes/status before .../{xname}).
            paths.sort(key=lambda template: (template.count("{"), template))
            self._templates = [
                (re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"), template)
                for template in paths
            ]
        path = scope.get("path", "")
        for pattern, template in self._templates:
            if pattern.match(path):
                return template
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = self._route(scope)
            method = scope.get("method", "GET")
            children = self._children.get((method, route, status))
            if children is None:
                children = self._children[(method, route, status)] = (
                    self.metrics["requests"].labels(method, route, str(status)),
                    self.metrics["latency"].labels(method, route),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - start)


def _database_families(ctx: ServiceContext) -> list[Any]:
    from prometheus_client.core import GaugeMetricFamily

    now = time.time()
    counts = queue_and_job_counts(ctx)
    task_states, oldest, job_states = counts.task_states, counts.oldest_unfinished_task, counts.job_states
    unfinished = GaugeMetricFamily("ims_tasks_unfinished", "S3 tasks pending or running (queue depth)")
    unfinished.add_metric([], int(task_states.get("pending", 0)) + int(task_states.get("running", 0)))
    age = GaugeMetricFamily("ims_task_oldest_age_seconds", "Age of the oldest unfinished S3 task (0: none)")
    if oldest is not None:
        from ims.domain.timeutil import utcnow

        age.add_metric([], max(0.0, (utcnow() - oldest).total_seconds()))
    else:
        age.add_metric([], 0.0)
    by_state = GaugeMetricFamily("ims_tasks", "S3 tasks by state", labels=["state"])
    for state, count in sorted(task_states.items()):
        by_state.add_metric([str(state)], int(count))
    by_status = GaugeMetricFamily("ims_jobs", "Jobs by status", labels=["status"])
    from ims.domain.jobs import JOB_STATUSES

    for status in JOB_STATUSES:
        by_status.add_metric([status], int(job_states.get(status, 0)))
    scraped = GaugeMetricFamily("ims_metrics_scrape_timestamp_seconds", "When these figures were read")
    scraped.add_metric([], now)
    return [unfinished, age, by_state, by_status, scraped]


def render(ctx: ServiceContext) -> bytes:
    from prometheus_client import REGISTRY as DEFAULT
    from prometheus_client import CollectorRegistry, generate_latest

    setup()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body: bytes = generate_latest(registry)
    else:
        body = generate_latest(DEFAULT)

    class _Database:
        def collect(self) -> list[Any]:
            return _database_families(ctx)

    extra = CollectorRegistry()
    extra.register(_Database())  # type: ignore[arg-type]
    return body + generate_latest(extra)


def install(app: FastAPI) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST

    app.add_middleware(RequestMetrics, api=app)

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics (requests, latency, S3 errors, task queue, jobs)",
        responses={
            200: {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    )
    async def metrics(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        ctx: ServiceContext = request.app.state.services.ctx
        body = await run_in_threadpool(render, ctx)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
