"""An OpenAI-compatible HTTP API over the engine (jielong.infer.engine), with FastAPI.

    app = create_app(engine, tok, "mine", generation_config, api_keys=["sekret"])
    uvicorn.run(app, host="127.0.0.1", port=8000)          # or `jielong serve --model DIR`

Routes (what the official `openai` client and curl speak):
- POST /v1/chat/completions: messages rendered with the model's chat template; `model` is the
  served model's name, or a loaded LoRA adapter's name (that adapter for this request);
  sampling (temperature, top_p, top_k, min_p, presence/frequency/repetition penalties, stop,
  seed, max_tokens), n choices, logprobs + top_logprobs, streaming (server-sent events) with
  stream_options.include_usage;
- POST /v1/completions: a text prompt (or several, or token ids), the same options, echo;
- POST /v1/embeddings: unit-length mean-pooled final hidden states, as floats or base64;
- GET /v1/models, /v1/models/{id}; GET /health; GET /metrics (Prometheus text).

Sampling settings a request leaves out come from the model's generation_config.json
(temperature, top_p, top_k, min_p, repetition_penalty), as the model's authors meant it to
be sampled; replies stop at the model's end-of-turn tokens (the engine's stop ids).

Every error is OpenAI's JSON, `{"error": {"message", "type", "param", "code"}}`: 400 for a
malformed body, a field of the wrong type or value, or a prompt longer than the context
(code context_length_exceeded); 401 for a missing or wrong API key; 404 for an unknown model
(model_not_found) or route; 405 for a wrong method; 413 for a body over the limit; 415 for a
body that is not JSON; 400 (invalid_host) for a Host header that is not an allowed name; 403 for
a state-changing request from another site. A user's mistake is never a 500. Bodies, the Host
check and the rest of what every route shares are in jielong.serve.common.

A client that goes away (a closed stream, a dropped connection) cancels its requests, so
their slots in the engine free at the next step.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import time
import uuid
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from jielong.errors import UserError
from jielong.infer.engine import MAX_TOP_LOGPROBS, Engine, Event, SamplingParams
from jielong.infer.engine import Request as EngineRequest
from jielong.serve.chat_routes import chat_router
from jielong.serve.common import (
    LOOPBACK,
    MAX_CHOICES,
    ApiError,
    Batch,
    Body,
    Guard,
    SamplingBody,
    chat_prompt,
    read_body,
    sse,
    user_error,
    validation_error,
    watch_disconnect,
)

MAX_EMBED_INPUTS = 2048


# ----------------------------------------------------------------------------- request bodies


class ContentPart(Body):
    type: str
    text: str | None = None


class Message(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatRequest(SamplingBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(SamplingBody):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None


class EmbeddingRequest(Body):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


# ----------------------------------------------------------------------------- metrics


class _EngineCollector:
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


class _Metrics:
    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
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

    def finished(self, r: EngineRequest) -> None:
        if r.first_token_at is not None:
            self.ttft.observe(r.first_token_at - r.submitted)
            if r.finished_at is not None and len(r.output) > 1 and r.finished_at > r.first_token_at:
                self.rate.observe((len(r.output) - 1) / (r.finished_at - r.first_token_at))
        if r.finished_at is not None:
            self.latency.observe(r.finished_at - r.submitted)


_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
           "/health", "/metrics")


def _route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"


class _CountRequests:
    """ASGI middleware: count every HTTP request by route and response status."""

    def __init__(self, app, metrics: _Metrics):
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
            self.metrics.requests.labels(_route_label(scope["path"]), str(status[0])).inc()


# ----------------------------------------------------------------------------- the app


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def create_app(engine: Engine, tok, model_name: str, generation_config: dict | None = None, *,
               system_prompt: str | None = None, api_keys=(), max_body_bytes: int = 1_000_000,
               max_messages: int = 256, max_message_chars: int = 100_000,
               store=None, allowed_hosts=LOOPBACK) -> FastAPI:
    """The FastAPI app serving `engine` (already started) as `model_name`; its LoRA adapters
    are served under their own names. `api_keys`: when any, every /v1 request must send
    `Authorization: Bearer KEY` with one of them. `store` (a jielong.serve.store.Store): also
    serve the web chat's /api routes (jielong.serve.chat_routes), kept in it.
    `allowed_hosts`: the names a request's Host header may give (loopback by default; "*":
    any, "*.example.com": its subdomains too); see jielong.serve.common.Guard."""
    if any(not k for k in api_keys):
        raise UserError("an API key must not be empty")
    gen = dict(generation_config or {})
    keys = [k.encode() for k in api_keys if k]
    metrics = _Metrics(engine)
    vocab = engine.model.config.vocab_size
    created = int(time.time())

    app = FastAPI(title="jielong", summary=f"OpenAI-compatible API serving {model_name}",
                  docs_url=None, redoc_url=None)
    app.state.metrics, app.state.engine = metrics, engine
    app.state.max_body_bytes = max_body_bytes
    app.add_middleware(Guard, allowed_hosts=list(allowed_hosts))
    app.add_middleware(_CountRequests, metrics=metrics)  # outermost: counts what Guard refuses

    # ------------------------------------------------------------------ errors as OpenAI's

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return validation_error(list(e.errors()), drop_first=True).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        if e.status_code == 404:
            err = ApiError(404, f"no such route: {request.method} {request.url.path}",
                           code="not_found")
        elif e.status_code == 405:
            err = ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                           code="method_not_allowed")
        else:
            err = ApiError(e.status_code, str(e.detail))
        return JSONResponse(err.body(), status_code=err.status, headers=e.headers)

    # an unexpected exception is Guard's to answer: Starlette's handler for Exception would
    # re-raise it after answering, and uvicorn then drops the connection

    # ------------------------------------------------------------------ request plumbing

    async def authorize(request: Request) -> None:
        if not keys:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "no API key given: send the header `Authorization: Bearer KEY`",
                           code="invalid_api_key")
        ok = False
        for k in keys:  # compare with every key, in constant time
            ok |= hmac.compare_digest(given.encode(), k)
        if not ok:
            raise ApiError(401, "the API key is not valid", code="invalid_api_key")

    def adapter_for(name: str | None) -> str | None:
        if name is None or name == model_name:
            return None
        if name in engine.adapters:
            return name
        served = ", ".join([model_name, *engine.adapters])
        raise ApiError(404, f"the model {name!r} does not exist here; served: {served}",
                       param="model", code="model_not_found")

    def sampling(body: SamplingBody, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        sampled = gen.get("do_sample", True) is not False

        def pick(value, key, default):
            if value is not None:
                return value
            v = gen.get(key)
            return v if isinstance(v, int | float) and not isinstance(v, bool) else default

        if body.logit_bias:
            raise ApiError(400, "logit_bias is not supported by this server", param="logit_bias")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=pick(body.temperature, "temperature", 1.0) if sampled or
            body.temperature is not None else 0.0,
            top_p=pick(body.top_p, "top_p", 1.0),
            top_k=pick(body.top_k, "top_k", 0),
            min_p=pick(body.min_p, "min_p", 0.0),
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            repetition_penalty=pick(body.repetition_penalty, "repetition_penalty", 1.0),
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            ignore_eos=body.ignore_eos, seed=body.seed, logprobs=logprobs)

    def fit(prompt: list[int], params: SamplingParams, what: str, param: str,
            adapter: str | None, max_name: str = "max_tokens",
            rename: dict[str, str] | None = None) -> None:
        """Check one prompt against the context, then everything else the engine checks."""
        ctx, n = engine.context, len(prompt)
        if not n:
            raise ApiError(400, f"the {what} is empty: give at least one token", param=param)
        if n >= ctx:
            raise ApiError(400, f"the {what} is {n} tokens, but this model's context is {ctx} "
                                f"tokens (at least one is needed for the reply); shorten it",
                           param=param, code="context_length_exceeded")
        if params.max_tokens is not None and n + params.max_tokens > ctx:
            raise ApiError(400, f"the {what} ({n} tokens) + {max_name} ({params.max_tokens}) is "
                                f"more than this model's context of {ctx} tokens; lower "
                                f"{max_name} to at most {ctx - n}",
                           param=max_name, code="context_length_exceeded")
        try:
            engine.check(prompt, params, adapter)
        except UserError as e:
            raise user_error(e, rename) from None

    def check_ids(ids: list[int], param: str) -> list[int]:
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise ApiError(400, f"{param}: token id {bad} is outside the vocabulary "
                                f"(0 to {vocab - 1})", param=param)
        return ids

    def jobs(prompts: list[list[int]], params: SamplingParams, adapter: str | None, n: int):
        if len(prompts) * n > MAX_CHOICES:
            raise ApiError(400, f"{len(prompts)} prompts × n={n} is more than {MAX_CHOICES} "
                                "choices in one request", param="n")
        out = []
        for prompt in prompts:
            for j in range(n):
                seed = None if params.seed is None else (params.seed + j) % 2**64
                out.append((prompt, SamplingParams(**{**params.__dict__, "seed": seed}), adapter))
        return out

    @functools.lru_cache(maxsize=65536)
    def token_text(t: int) -> tuple[str, list[int]]:
        b = tok.token_bytes(t)
        return b.decode("utf-8", errors="replace"), list(b)

    def chat_logprobs(lps) -> list[dict]:
        out = []
        for lp in lps:
            text, raw = token_text(lp.token)
            top = []
            for t, v in lp.top:
                s, b = token_text(t)
                top.append({"token": s, "logprob": v, "bytes": b})
            out.append({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top})
        return out

    def text_logprobs(lps, offset: int) -> dict:
        tokens, values, tops, offsets = [], [], [], []
        for lp in lps:
            s = token_text(lp.token)[0]
            tokens.append(s)
            values.append(lp.logprob)
            tops.append({token_text(t)[0]: v for t, v in lp.top})
            offsets.append(offset)
            offset += len(s)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
                "text_offset": offsets}

    def engine_failed(e: Event) -> ApiError:
        return ApiError(500, f"the engine failed: {e.error}", code="engine_error")

    async def collect(request: Request, batch: Batch) -> list[dict]:
        """Wait for every choice of a batch; cancel it if the client goes away first."""
        watch = asyncio.create_task(watch_disconnect(request, batch))
        out = [{"text": [], "logprobs": [], "finish": None} for _ in batch.reqs]
        try:
            async for i, e in batch.events():
                out[i]["text"].append(e.text)
                out[i]["logprobs"] += e.logprobs or []
                if e.finish_reason == "error":
                    raise engine_failed(e)
                if e.finish_reason:
                    out[i]["finish"] = e.finish_reason
        finally:
            watch.cancel()
            batch.cancel()
        for o, r in zip(out, batch.reqs, strict=True):
            o["text"], o["tokens"] = "".join(o["text"]), len(r.output)
        return out

    def stream(request: Request, batch: Batch, chunks) -> StreamingResponse:
        """Server-sent events from `chunks` (an async generator of dicts), ending in [DONE];
        the batch is cancelled when the client goes away or the stream ends early."""

        async def body():
            watch = asyncio.create_task(watch_disconnect(request, batch))
            try:
                async for c in chunks:
                    yield sse(c)
            except ApiError as e:
                yield sse(e.body())
            finally:
                watch.cancel()
                batch.cancel()
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ routes

    if store is not None:  # the web chat's /api (before any catch-all mount of static files)
        app.include_router(chat_router(
            store, engine, tok, model_name, metrics=metrics, sampling=sampling, fit=fit,
            adapter_for=adapter_for, system_prompt=system_prompt,
            dependencies=[Depends(authorize)]))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card(name: str, parent: str | None) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "jielong",
                "root": model_name, "parent": parent}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        return {"object": "list", "data": [model_card(model_name, None)] +
                [model_card(a, model_name) for a in engine.adapters]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(authorize)])
    async def one_model(model_id: str):
        adapter = adapter_for(model_id)
        return model_card(model_id, None if adapter is None else model_name)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(request: Request):
        body: ChatRequest = await read_body(request, ChatRequest)
        adapter = adapter_for(body.model)
        if body.tools or body.functions:
            raise ApiError(400, "tools and function calling are not supported by this server",
                           param="tools" if body.tools else "functions")
        if body.response_format and body.response_format.get("type", "text") != "text":
            raise ApiError(400, "only response_format {\"type\": \"text\"} is supported",
                           param="response_format")
        if len(body.messages) > max_messages:
            raise ApiError(400, f"messages: {len(body.messages)} messages, more than this "
                                f"server's limit of {max_messages}", param="messages")
        messages = []
        for i, m in enumerate(body.messages):
            if isinstance(m.content, list):
                for j, part in enumerate(m.content):
                    if part.type != "text" or part.text is None:
                        raise ApiError(400, f"messages[{i}].content[{j}]: only text parts "
                                            f"({{\"type\": \"text\", \"text\": …}}) are supported, "
                                            f"not {part.type!r}",
                                       param=f"messages[{i}].content[{j}].type")
                text = "\n".join(p.text for p in m.content)
            elif m.content is None:
                if m.role != "assistant":
                    raise ApiError(400, f"messages[{i}].content: a {m.role} message needs content",
                                   param=f"messages[{i}].content")
                text = ""
            else:
                text = m.content
            if len(text) > max_message_chars:
                raise ApiError(400, f"messages[{i}].content: {len(text)} characters, more than "
                                    f"this server's limit of {max_message_chars}",
                               param=f"messages[{i}].content")
            messages.append({"role": "system" if m.role == "developer" else m.role,
                             "content": text})
        if system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        prompt = chat_prompt(tok, messages, "messages")
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        k = (body.top_logprobs or 0) if body.logprobs else None
        if k is not None and not 0 <= k <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"top_logprobs={k} must be in [0, {MAX_TOP_LOGPROBS}]",
                           param="top_logprobs")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None \
            else body.max_tokens
        params = sampling(body, max_tokens, k)
        max_name = "max_tokens" if body.max_completion_tokens is None else "max_completion_tokens"
        fit(prompt, params, "conversation", "messages", adapter, max_name,
            {"logprobs": "top_logprobs", "max_tokens": max_name})
        batch = Batch(engine, jobs([prompt], params, adapter, body.n), metrics)
        rid, now, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model or model_name

        if not body.stream:
            out = await collect(request, batch)
            return {"id": rid, "object": "chat.completion", "created": now, "model": name,
                    "system_fingerprint": None,
                    "choices": [{"index": i,
                                 "message": {"role": "assistant", "content": o["text"]},
                                 "logprobs": {"content": chat_logprobs(o["logprobs"])}
                                 if k is not None else None,
                                 "finish_reason": o["finish"]} for i, o in enumerate(out)],
                    "usage": _usage(len(prompt), sum(o["tokens"] for o in out))}

        usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(choices: list[dict]) -> dict:
            c = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                 "system_fingerprint": None, "choices": choices}
            if usage:
                c["usage"] = None
            return c

        async def chunks():
            for i in range(len(batch.reqs)):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}])
            async for i, e in batch.events():
                if e.finish_reason == "error":
                    raise engine_failed(e)
                lps = chat_logprobs(e.logprobs) if k is not None and e.logprobs else None
                if e.text or lps:
                    yield chunk([{"index": i, "delta": {"content": e.text},
                                  "logprobs": {"content": lps} if lps else None,
                                  "finish_reason": None}])
                if e.finish_reason:
                    yield chunk([{"index": i, "delta": {}, "logprobs": None,
                                  "finish_reason": e.finish_reason}])
            if usage:
                c = chunk([])
                c["usage"] = _usage(len(prompt), sum(len(r.output) for r in batch.reqs))
                yield c

        return stream(request, batch, chunks())

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(request: Request):
        body: CompletionRequest = await read_body(request, CompletionRequest)
        adapter = adapter_for(body.model)
        if body.suffix:
            raise ApiError(400, "suffix (fill-in-the-middle) is not supported by this server",
                           param="suffix")
        p = body.prompt
        if isinstance(p, str):
            texts, prompts = [p], [tok.encode(p)]
        elif p and isinstance(p[0], str):
            texts, prompts = list(p), [tok.encode(s) for s in p]
        elif p and isinstance(p[0], list):
            prompts = [check_ids(ids, "prompt") for ids in p]
            texts = [tok.decode(ids) for ids in prompts]
        else:  # one list of token ids (or an empty list)
            prompts = [check_ids(list(p), "prompt")]
            texts = [tok.decode(prompts[0])]
        if not prompts:
            raise ApiError(400, "prompt: give at least one prompt", param="prompt")
        if body.echo and body.logprobs is not None:
            raise ApiError(400, "echo with logprobs (the prompt's log-probabilities) is not "
                                "supported; drop one of them", param="echo")
        params = sampling(body, body.max_tokens if body.max_tokens is not None else 16,
                          body.logprobs)
        for prompt in prompts:
            fit(prompt, params, "prompt", "prompt", adapter)
        n = body.n
        batch = Batch(engine, jobs(prompts, params, adapter, n), metrics)
        rid, now, name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model or model_name
        prefix = [texts[i // n] if body.echo else "" for i in range(len(batch.reqs))]

        if not body.stream:
            out = await collect(request, batch)
            return {"id": rid, "object": "text_completion", "created": now, "model": name,
                    "system_fingerprint": None,
                    "choices": [{"index": i, "text": prefix[i] + o["text"],
                                 "logprobs": text_logprobs(o["logprobs"], len(prefix[i]))
                                 if body.logprobs is not None else None,
                                 "finish_reason": o["finish"]} for i, o in enumerate(out)],
                    "usage": _usage(sum(len(q) for q in prompts),
                                    sum(o["tokens"] for o in out))}

        usage = bool(body.stream_options and body.stream_options.include_usage)
        offsets = [len(s) for s in prefix]

        def chunk(i: int, text: str, lps, finish: str | None) -> dict:
            c = {"id": rid, "object": "text_completion", "created": now, "model": name,
                 "system_fingerprint": None,
                 "choices": [{"index": i, "text": text, "logprobs": lps,
                              "finish_reason": finish}]}
            if usage:
                c["usage"] = None
            return c

        async def chunks():
            for i, s in enumerate(prefix):
                if s:
                    yield chunk(i, s, None, None)
            async for i, e in batch.events():
                if e.finish_reason == "error":
                    raise engine_failed(e)
                lps = None
                if body.logprobs is not None and e.logprobs:
                    lps = text_logprobs(e.logprobs, offsets[i])
                offsets[i] += len(e.text)
                if e.text or lps:
                    yield chunk(i, e.text, lps, None)
                if e.finish_reason:
                    yield chunk(i, "", None, e.finish_reason)
            if usage:
                c = {"id": rid, "object": "text_completion", "created": now, "model": name,
                     "choices": [], "usage": _usage(sum(len(q) for q in prompts),
                                                    sum(len(r.output) for r in batch.reqs))}
                yield c

        return stream(request, batch, chunks())

    @app.post("/v1/embeddings", dependencies=[Depends(authorize)])
    async def embeddings(request: Request):
        body: EmbeddingRequest = await read_body(request, EmbeddingRequest)
        adapter = adapter_for(body.model)
        x = body.input
        if isinstance(x, str):
            inputs = [tok.encode(x)]
        elif x and isinstance(x[0], str):
            inputs = [tok.encode(s) for s in x]
        elif x and isinstance(x[0], list):
            inputs = [check_ids(ids, "input") for ids in x]
        else:
            inputs = [check_ids(list(x), "input")]
        if not inputs:
            raise ApiError(400, "input: give at least one text", param="input")
        if len(inputs) > MAX_EMBED_INPUTS:
            raise ApiError(400, f"input: {len(inputs)} inputs, more than {MAX_EMBED_INPUTS} in "
                                "one request", param="input")
        hidden = engine.model.config.hidden_size
        if body.dimensions is not None and body.dimensions != hidden:
            raise ApiError(400, f"dimensions={body.dimensions}: this model's embeddings have "
                                f"{hidden} dimensions; leave it out", param="dimensions")
        for i, ids in enumerate(inputs):
            if not ids:
                raise ApiError(400, f"input[{i}] is empty; give at least one token",
                               param="input")
            if len(ids) >= engine.context:
                raise ApiError(400, f"input[{i}] is {len(ids)} tokens, more than this model's "
                                    f"context of {engine.context} tokens; shorten it",
                               param="input", code="context_length_exceeded")
        try:
            future = engine.embed(inputs, adapter)
        except UserError as e:
            raise ApiError(400, str(e), param="input") from None
        vectors = await asyncio.wrap_future(future)

        def encode(v: list[float]):
            if body.encoding_format == "base64":
                return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
            return v

        n = sum(len(ids) for ids in inputs)
        return {"object": "list", "model": body.model or model_name,
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    if store is not None:  # the web chat's page: GET / and its files under /static
        from pathlib import Path

        from fastapi.responses import FileResponse
        from fastapi.staticfiles import StaticFiles

        static = Path(__file__).parent / "static"
        page_headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"}

        @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
        async def chat_page():
            return FileResponse(static / "index.html", headers=page_headers)

        app.mount("/static", StaticFiles(directory=static), name="static")

    return app
