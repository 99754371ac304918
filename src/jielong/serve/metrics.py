"""Prometheus metrics of the server: the engine's own counts read at each scrape (requests
waiting and running, slots, tokens, steps), HTTP requests by route and status
(`CountRequests`, ASGI middleware), and per request the time to first token, decode speed and
latency (`Metrics.finished`), and every safety rail decision by rail, category and action
with the time each check took (`Metrics.safety`). Served at GET /metrics, beside the liveness
check GET /health.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from jielong.infer.engine import Engine
from jielong.infer.engine import Request as EngineRequest

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
          "/v1/moderations", "/health", "/metrics")


class EngineCollector:
    """The engine's own counts, read at each scrape."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        s = self.engine.stats()
        yield GaugeMetricFamily("jielong_requests_waiting", "Requests queued for a slot",
                                value=s["waiting"])
        yield GaugeMetricFamily("jielong_requests_running", "Requests decoding in the batch",
                                value=s["running"])
        yield GaugeMetricFamily("jielong_slots", "Concurrent requests the engine can run",
                                value=s["slots"])
        yield CounterMetricFamily("jielong_prompt_tokens", "Prompt tokens of finished requests",
                                  value=s["prompt_tokens"])
        yield CounterMetricFamily("jielong_generation_tokens", "Tokens generated",
                                  value=s["generated_tokens"])
        yield CounterMetricFamily("jielong_engine_steps", "Decode steps of the engine",
                                  value=s["steps"])


class Metrics:
    """The app's registry and the metrics the server itself records."""

    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine))
        self.requests = Counter("jielong_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.ttft = Histogram("jielong_time_to_first_token_seconds",
                              "From a request's arrival in the engine to its first token",
                              registry=self.registry,
                              buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.rate = Histogram("jielong_decode_tokens_per_second",
                              "Each request's decode speed after its first token",
                              registry=self.registry,
                              buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000))
        self.latency = Histogram("jielong_request_seconds",
                                 "From a request's arrival in the engine to its last token",
                                 registry=self.registry,
                                 buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300))

        self.safety_decisions = Counter(
            "jielong_safety_decisions", "Safety rail decisions by rail, category and action",
            ["rail", "category", "action"], registry=self.registry)
        self.safety_seconds = Histogram(
            "jielong_safety_check_seconds", "Time of one safety rail check (a whole input, or "
            "one growing reply's delta)", ["rail"], registry=self.registry,
            buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))
        self.safety_errors = Counter(
            "jielong_safety_errors", "Safety rail checks that failed (the text went on "
            "unchecked)", ["rail"], registry=self.registry)

    def safety(self, decisions, rail: str | None = None, seconds: float | None = None) -> None:
        """Count `decisions` (jielong.safety.rails.Decision) and the check's time on `rail`."""
        for d in decisions:
            self.safety_decisions.labels(d.rail, d.category, d.action).inc()
        if rail is not None and seconds is not None:
            self.safety_seconds.labels(rail).observe(seconds)

    def finished(self, r: EngineRequest) -> None:
        if r.first_token_at is not None:
            self.ttft.observe(r.first_token_at - r.submitted)
            if r.finished_at is not None and len(r.output) > 1 and r.finished_at > r.first_token_at:
                self.rate.observe((len(r.output) - 1) / (r.finished_at - r.first_token_at))
        if r.finished_at is not None:
            self.latency.observe(r.finished_at - r.submitted)


def route_label(path: str) -> str:
    if path in ROUTES:
        return path
    return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"


class CountRequests:
    """ASGI middleware: count every HTTP request by route and response status."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route_label(scope["path"]), str(status[0])).inc()


router = APIRouter()


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/metrics")
async def prometheus(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
