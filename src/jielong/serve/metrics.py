"""Prometheus metrics of the server, the ones an operator graphs
(deploy/grafana/jielong.json is a Grafana dashboard of them):

- the engine's own state, read at each scrape (`EngineCollector`): requests waiting and
  running, KV cache blocks used and free, the prefix cache's hit and query tokens, prefill
  chunks, tokens and steps. A paged engine reports its block pool (Engine.stats()
  "kv_blocks_total", "kv_blocks_used", "kv_block_size"); an engine without a pool (an
  upstream's) is reported as `slots` blocks, each a whole context long, one per running request;
- HTTP requests by route (the route's template, e.g. /api/conversations/{cid}) and status
  (`CountRequests`, ASGI middleware). A stream that ends in an error event was sent as a 200
  before the error was known: `stream_failed` marks it, and it is counted with the error's
  status instead;
- per request, labelled by model (the served name, or a LoRA adapter's): time in the queue,
  time to first token, time per output token, decode speed and latency (`Metrics.timed`, from
  the engine's timestamps on each Request, as vLLM's request_queue_time_seconds and
  time_per_output_token_seconds measure them), and how it ended (`Metrics.ended`: stop,
  length, cancelled, content_filter or error);
- every safety rail decision by rail, category and action, with the time each check took
  (`Metrics.safety`);
- the process (CPU seconds, resident memory, open files: prometheus_client's process
  collector, Linux) and the Python platform and garbage collector.

Served at GET /metrics, beside the liveness check GET /health.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from jielong.infer.engine import Engine
from jielong.infer.engine import Request as EngineRequest

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
          "/v1/moderations", "/health", "/metrics")
FINISH_REASONS = ("stop", "length", "cancelled", "content_filter", "error")
STREAM_STATUS = "jielong.stream_status"  # the ASGI scope's key for a stream's late error
SECONDS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120)
PER_TOKEN = (.001, .0025, .005, .01, .02, .035, .05, .075, .1, .15, .25, .5, 1, 2.5)


class EngineCollector:
    """The engine's own counts, read at each scrape."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        s = self.engine.stats()
        total = s.get("kv_blocks_total", 0)
        if total:  # a paged cache: its block pool
            used, size = s.get("kv_blocks_used", 0), s.get("kv_block_size", 0)
        else:  # the slot cache: a slot is one block of a whole context
            total, used, size = s["slots"], s["running"], getattr(self.engine, "context", 0)
        yield GaugeMetricFamily("jielong_requests_waiting", "Requests queued for a slot",
                                value=s["waiting"])
        yield GaugeMetricFamily("jielong_requests_running", "Requests decoding in the batch",
                                value=s["running"])
        yield GaugeMetricFamily("jielong_slots", "Concurrent requests the engine can run",
                                value=s["slots"])
        yield GaugeMetricFamily("jielong_kv_blocks", "KV cache blocks in the pool", value=total)
        yield GaugeMetricFamily("jielong_kv_blocks_used", "KV cache blocks holding tokens",
                                value=used)
        yield GaugeMetricFamily("jielong_kv_blocks_free", "KV cache blocks free",
                                value=max(0, total - used))
        yield GaugeMetricFamily("jielong_kv_block_tokens", "Tokens one KV cache block holds",
                                value=size)
        yield CounterMetricFamily("jielong_prefix_cache_hit_tokens", "Prompt tokens found in "
                                  "the prefix cache (not computed again)",
                                  value=s.get("prefix_hit_tokens", 0))
        yield CounterMetricFamily("jielong_prefix_cache_query_tokens", "Prompt tokens looked "
                                  "up in the prefix cache", value=s.get("prefix_query_tokens", 0))
        yield CounterMetricFamily("jielong_prefill_chunks", "Prompt pieces prefilled (a long "
                                  "prompt is fed in several)", value=s.get("prefill_chunks", 0))
        yield CounterMetricFamily("jielong_prompt_tokens", "Prompt tokens of finished requests",
                                  value=s["prompt_tokens"])
        yield CounterMetricFamily("jielong_generation_tokens", "Tokens generated",
                                  value=s["generated_tokens"])
        yield CounterMetricFamily("jielong_engine_steps", "Decode steps of the engine",
                                  value=s["steps"])


class Metrics:
    """The app's registry and the metrics the server itself records; `model` is the served
    model's name (a request for a LoRA adapter is labelled with the adapter's)."""

    def __init__(self, engine: Engine, model: str = ""):
        self.model = model
        self.registry = r = CollectorRegistry()
        r.register(EngineCollector(engine))
        ProcessCollector(registry=r)  # process_*: nothing where /proc is missing
        PlatformCollector(registry=r)  # python_info
        GCCollector(registry=r)  # python_gc_*
        self.requests = Counter("jielong_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.finish = Counter("jielong_requests_finished", "Requests (each choice) by model "
                              "and how they ended: stop, length, cancelled, content_filter, "
                              "error", ["model", "reason"], registry=r)
        self.queue_wait = Histogram("jielong_queue_wait_seconds", "From a request's arrival "
                                    "in the engine to its start (or its end, if it never "
                                    "started)", ["model"], registry=r, buckets=SECONDS)
        self.ttft = Histogram("jielong_time_to_first_token_seconds",
                              "From a request's arrival in the engine to its first token",
                              ["model"], registry=r, buckets=SECONDS)
        self.tpot = Histogram("jielong_time_per_output_token_seconds", "Each request's mean "
                              "time between output tokens after the first", ["model"],
                              registry=r, buckets=PER_TOKEN)
        self.rate = Histogram("jielong_decode_tokens_per_second",
                              "Each request's decode speed after its first token", ["model"],
                              registry=r,
                              buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000))
        self.latency = Histogram("jielong_request_seconds",
                                 "From a request's arrival in the engine to its last token",
                                 ["model"], registry=r, buckets=SECONDS[1:] + (300,))

        self.safety_decisions = Counter(
            "jielong_safety_decisions", "Safety rail decisions by rail, category and action",
            ["rail", "category", "action"], registry=r)
        self.safety_seconds = Histogram(
            "jielong_safety_check_seconds", "Time of one safety rail check (a whole input, or "
            "one growing reply's delta)", ["rail"], registry=r,
            buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))
        self.safety_errors = Counter(
            "jielong_safety_errors", "Safety rail checks that failed (the text went on "
            "unchecked)", ["rail"], registry=r)
        for reason in FINISH_REASONS:  # the series exist from the start: rate() sees 0s
            self.finish.labels(model, reason)
        for h in (self.queue_wait, self.ttft, self.tpot, self.rate, self.latency):
            h.labels(model)
        for rail in ("input", "output"):
            self.safety_errors.labels(rail)

    def safety(self, decisions, rail: str | None = None, seconds: float | None = None) -> None:
        """Count `decisions` (jielong.safety.rails.Decision) and the check's time on `rail`."""
        for d in decisions:
            self.safety_decisions.labels(d.rail, d.category, d.action).inc()
        if rail is not None and seconds is not None:
            self.safety_seconds.labels(rail).observe(seconds)

    def model_of(self, r: EngineRequest) -> str:
        return r.adapter or self.model

    def ended(self, model: str, reason: str, n: int = 1) -> None:
        """`n` requests (choices) of `model` ended with `reason` (an engine's "stopped" and
        anything else unknown count as what they are closest to)."""
        reason = {"stopped": "cancelled"}.get(reason, reason)
        self.finish.labels(model, reason if reason in FINISH_REASONS else "error").inc(n)

    def timed(self, r: EngineRequest) -> None:
        """Observe a finished engine request's timings."""
        m = self.model_of(r)
        queued = getattr(r, "queued_at", r.submitted)
        started = getattr(r, "started_at", None) or r.finished_at
        if started is not None:
            self.queue_wait.labels(m).observe(max(0.0, started - queued))
        if r.first_token_at is not None:
            self.ttft.labels(m).observe(r.first_token_at - queued)
            if r.finished_at is not None and len(r.output) > 1 and r.finished_at > r.first_token_at:
                per_token = (r.finished_at - r.first_token_at) / (len(r.output) - 1)
                self.tpot.labels(m).observe(per_token)
                self.rate.labels(m).observe(1 / per_token)
        if r.finished_at is not None:
            self.latency.labels(m).observe(r.finished_at - queued)


def stream_failed(scope: dict, status: int = 500) -> None:
    """Mark a response whose stream ended in an error (its 200 already sent): CountRequests
    counts it with `status`."""
    scope[STREAM_STATUS] = status


def route_label(scope: dict) -> str:
    """The route's template (/api/messages/{mid}/rating), so ids do not make new series;
    "other" for a path no route matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    path = scope["path"]
    if path in ROUTES:
        return path
    return "/v1/models/{model_id:path}" if path.startswith("/v1/models/") else "other"


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
            late = scope.get(STREAM_STATUS)
            self.metrics.requests.labels(route_label(scope), str(late or status[0])).inc()


router = APIRouter()


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/metrics")
async def prometheus(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
