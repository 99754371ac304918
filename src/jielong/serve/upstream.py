"""An upstream engine: jielong's application layer (the web chat, the feedback store, API
keys, the safety rails, retrieval with citations) in front of any OpenAI-compatible server —
vLLM or SGLang on GPUs, llama.cpp's server or Ollama on a laptop, another `jielong serve`.

    engine = UpstreamEngine("http://127.0.0.1:8001", key=None).start()   # reads /v1/models
    app = create_app(engine, None, engine.model, store=store)            # no tokenizer

This is how a team that outgrows one process scales serving: on an engine built for it, not a
home-made cluster. `UpstreamEngine` stands where jielong.infer.engine.Engine stands for the
routes (submit, check, cancel, events, stats, context, adapters); what differs:

- The prompt is not token ids: a chat is sent as its messages (`Chat`), which the upstream
  renders with its own chat template, and a text completion as its text (`Text`), to
  /v1/chat/completions and /v1/completions with stream=true. Each choice is one upstream
  request (seed + j, as the local engine samples it); its server-sent events become the
  app's Events, so the output rail, the stores and the streams downstream see what they see
  with the local engine.
- No tokenizer is needed, so no tokens are counted here: the upstream checks the context,
  and its 400 (context_length_exceeded) is passed on as a 400. Usage is the upstream's
  (stream_options.include_usage; an upstream that leaves it out, as llama-cpp-python's
  server does, counts a token per chunk and no prompt tokens). The web chat sends the whole
  branch (no turns trimmed).
  Only the passages retrieval adds (--rag) are fitted here, to the upstream's context by
  `most_tokens`, an upper bound: they are this server's addition, so they must not be what
  overflows it.
- The upstream's other models (vLLM's LoRA modules, Ollama's tags) are served as this
  server's adapters: a request names one with "model" and it is forwarded under that name.
- The upstream's errors map to OpenAI's shape with a status that says whose fault it is
  (`upstream_error`): its 4xx (a prompt too long, a bad value) are the client's, passed on
  as 400 (404 for a model); a refused key (401/403) is this server's misconfiguration, 502;
  its 429 and 503 are passed on; a connection refused or dropped, a 5xx or a broken stream
  are 502, a timeout 504 — never a 500. A streamed request waits for the upstream's status
  (`UpstreamRequest.accepted`) before the response starts, so these are HTTP statuses, not
  errors inside a 200 stream.
- `slots` bounds the requests in flight to the upstream (a semaphore): the rest wait here,
  counted as waiting.
- Not passed through: logprobs and token-id prompts (they need the tokenizer), so they are
  a 400 here.

The upstream's key comes from an environment variable (`jielong serve --upstream_key NAME`,
else JIELONG_UPSTREAM_KEY), never from the command line, which other users of the machine
can read.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from jielong.errors import UserError
from jielong.infer.engine import Event
from jielong.infer.sampling import SamplingParams
from jielong.serve.errors import ApiError

CONNECT_SECONDS = 10.0
READ_SECONDS = 600.0  # between two chunks: a long prefill on a busy upstream can take minutes
FINISHES = ("stop", "length", "content_filter")  # others ("tool_calls", "abort") end as "stop"


@dataclass(frozen=True)
class Chat:
    """A conversation the upstream renders with its own chat template."""

    messages: list[dict]

    def __len__(self) -> int:  # what admission counts: at most this many tokens
        return most_tokens(self.messages)


@dataclass(frozen=True)
class Text:
    """A text completion's prompt, as text."""

    text: str

    def __len__(self) -> int:  # at most a token a UTF-8 byte
        return len(self.text.encode())


@dataclass
class UpstreamSampling(SamplingParams):
    """A request's sampling, and which of the fields a model's generation_config gives
    defaults for it set (`given`): only those are sent, so the upstream's model samples the
    rest as its authors meant (as jielong.serve.served fills them from generation_config.json
    for a local model)."""

    DEFAULTED = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
    given: frozenset = field(default_factory=frozenset)


TEMPLATE_TOKENS = 8  # per message: a chat template's role markers and separators


def most_tokens(messages: list[dict]) -> int:
    """At most how many tokens `messages` are, rendered: their UTF-8 bytes (a byte-level BPE
    tokenizer, GPT-2's, Llama 3's, Qwen's, never makes more tokens than bytes) and a few
    per message for the template. Loose (text runs 3-4 bytes a token), but never short."""
    return sum(len(str(m.get("content") or "").encode()) + TEMPLATE_TOKENS for m in messages)


def base_url(url: str) -> str:
    """http://host:port, from what a user gives (with or without /v1, a trailing slash)."""
    u = url.strip().rstrip("/")
    if u.endswith("/v1"):
        u = u[:-3]
    if not u.startswith(("http://", "https://")) or len(u.split("//", 1)[1]) == 0:
        raise UserError(f"--upstream {url!r}: give the engine's base URL, e.g. "
                        "http://127.0.0.1:8001/v1 (vLLM, SGLang, llama.cpp's server, Ollama)")
    return u


def message_of(resp: httpx.Response) -> str:
    """The upstream's own error message: OpenAI's error.message, FastAPI's detail, or text."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err:
            return str(err)[:300]
    return json.dumps(body)[:300]


def upstream_error(status: int, message: str, code: str | None = None,
                   retry_after: str | None = None) -> ApiError:
    """The ApiError for the upstream's answer `status` (see the module's docstring); a 429
    or 503 keeps the upstream's Retry-After, so the client waits as long as it asked."""
    if status in (401, 403):
        return ApiError(502, f"the upstream engine refused this server's key ({status}: "
                             f"{message}); check --upstream_key", code="upstream_auth")
    if status == 404:
        return ApiError(404, f"the upstream engine: {message}", code=code or "model_not_found")
    if status in (429, 503):
        wait = retry_after if retry_after and retry_after.strip().isdigit() else "1"
        return ApiError(status, f"the upstream engine is busy: {message}",
                        code="rate_limit_exceeded" if status == 429 else "server_overloaded",
                        headers={"Retry-After": wait})
    if 400 <= status < 500:
        if "context" in message.lower() and code is None:
            code = "context_length_exceeded"
        return ApiError(400, f"the upstream engine refused the request: {message}", code=code)
    return ApiError(502, f"the upstream engine failed ({status}): {message}",
                    code="upstream_error")


def connection_error(url: str, e: httpx.HTTPError) -> ApiError:
    """A request that never got an answer: 504 for a timeout, 502 otherwise."""
    if isinstance(e, httpx.TimeoutException):
        return ApiError(504, f"the upstream engine at {url} did not answer in time "
                             f"({type(e).__name__})", code="upstream_timeout")
    what = "cannot be reached (is it running?)" if isinstance(e, httpx.ConnectError) \
        else "dropped the connection"
    return ApiError(502, f"the upstream engine at {url} {what}: {type(e).__name__}",
                    code="upstream_unavailable")


def sampling_fields(p: SamplingParams) -> dict:
    """A request's sampling as OpenAI's fields (vLLM's names for top_k, min_p,
    repetition_penalty, ignore_eos; other engines ignore them): what the request set (all
    but the defaulted ones that an UpstreamSampling's request left out)."""
    given = p.given if isinstance(p, UpstreamSampling) else UpstreamSampling.DEFAULTED
    out: dict = {k: getattr(p, k) for k in UpstreamSampling.DEFAULTED if k in given}
    if p.max_tokens is not None:
        out["max_tokens"] = p.max_tokens
    if p.presence_penalty:
        out["presence_penalty"] = p.presence_penalty
    if p.frequency_penalty:
        out["frequency_penalty"] = p.frequency_penalty
    if p.stop:
        out["stop"] = list(p.stop)
    if p.seed is not None:
        out["seed"] = p.seed
    if p.ignore_eos:
        out["ignore_eos"] = True
    return out


class UpstreamRequest:
    """One choice sent upstream, in the shape of jielong.infer.engine.Request for the routes
    and metrics: `cancel()`, timing, finish_reason; `output` stays empty (the upstream sends
    text, not token ids) and the counts are the upstream's (`prompt_tokens`,
    `completion_tokens`). `accepted` resolves when the upstream answers: to None (200,
    streaming) or the ApiError it answered with."""

    _ids = itertools.count()

    def __init__(self, engine: UpstreamEngine, prompt: Chat | Text, params: SamplingParams,
                 adapter: str | None, on_event: Callable[[Event], None] | None):
        self.id = next(self._ids)
        self.engine, self.prompt, self.params, self.adapter = engine, prompt, params, adapter
        self.on_event = on_event or (lambda e: None)
        self.output: list[int] = []
        self.prompt_tokens = self.completion_tokens = 0
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self.failure: ApiError | None = None
        self.accepted: asyncio.Future = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(engine.run(self))
        # a task cancelled before it ran never enters run(): end the request all the same
        self.task.add_done_callback(lambda t: self.emit("", "cancelled"))

    def cancel(self) -> None:
        if not self.task.done():
            self.task.cancel()

    def emit(self, text: str, finish: str | None = None, error: ApiError | None = None) -> None:
        if finish is not None:
            if self.finish_reason is not None:
                return
            self.finish_reason, self.finished_at, self.failure = finish, time.perf_counter(), error
            if not self.accepted.done():
                self.accepted.set_result(error)
        elif self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.on_event(Event(self, text, [], None, finish, error.message if error else None))


class UpstreamEngine:
    """An OpenAI-compatible server at `url`, as the app's engine (see the module's
    docstring). `model`: the upstream's model to serve (default: the first it lists);
    `context`: used when the upstream does not say its own (vLLM's max_model_len)."""

    def __init__(self, url: str, key: str | None = None, model: str | None = None,
                 slots: int = 16, context: int = 4096):
        if slots < 1:
            raise UserError(f"--slots {slots}: must be at least 1")
        self.url, self.key, self.model, self.slots = base_url(url), key, model, slots
        self.context = context
        self.adapters: list[str] = []
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        # per event loop (a client's connections belong to the loop that opened them)
        self.clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.waiting = self.running = 0
        self.totals = {"requests": 0, "prompt_tokens": 0, "generated_tokens": 0, "steps": 0}

    # --------------------------------------------------------------------- as Engine

    def start(self) -> UpstreamEngine:
        """Read the upstream's models (GET /v1/models): which to serve, the others as
        adapters, its context; a UserError naming the fix when it cannot be read."""
        where = f"--upstream {self.url}"
        try:
            r = httpx.get(self.url + "/v1/models", headers=self.headers,
                          timeout=CONNECT_SECONDS)
        except httpx.HTTPError as e:
            raise UserError(f"{where}: cannot reach the engine ({type(e).__name__}: {e}); "
                            "start it first, or fix the URL") from None
        if r.status_code in (401, 403):
            raise UserError(f"{where}: the engine refused the key ({r.status_code}); set "
                            "JIELONG_UPSTREAM_KEY (or --upstream_key NAME) to its key")
        try:
            cards = r.json()["data"] if r.status_code == 200 else None
            ids = [c["id"] for c in cards]
        except (ValueError, KeyError, TypeError):
            cards = ids = None
        if not ids:
            raise UserError(f"{where}: GET /v1/models answered {r.status_code} with no models "
                            f"({message_of(r)[:120]}); is this an OpenAI-compatible server?")
        if self.model is None:
            self.model = ids[0]
        elif self.model not in ids:
            raise UserError(f"--upstream_model {self.model!r}: the engine serves "
                            f"{', '.join(ids)}; give one of them")
        card = cards[ids.index(self.model)]
        if isinstance(card.get("max_model_len"), int) and card["max_model_len"] > 1:
            self.context = card["max_model_len"]
        self.adapters = [i for i in ids if i != self.model]
        return self

    def close(self) -> None:
        self.clients.clear()  # their connections close with the event loops that owned them

    def check(self, prompt, params: SamplingParams, adapter: str | None = None) -> int | None:
        """What can be checked here: the sampling values and the adapter (the upstream
        checks the rest)."""
        params.validate()
        if adapter is not None and adapter not in self.adapters:
            raise UserError(f"unknown adapter {adapter!r} (adapters: "
                            f"{', '.join(self.adapters) or 'none'})")
        if not isinstance(prompt, Chat | Text):
            raise UserError("an upstream engine takes a chat or a text prompt, not token ids")
        return params.max_tokens

    def submit(self, prompt: Chat | Text, params: SamplingParams, adapter: str | None = None,
               on_event: Callable[[Event], None] | None = None,
               client: str | None = None) -> UpstreamRequest:
        """Send one choice upstream (on the running event loop); `on_event` gets its Events.
        `client` (admission's name for the caller) is not sent: the upstream sees one client,
        this server, and admission here keeps the turns between clients."""
        self.check(prompt, params, adapter)
        self.totals["requests"] += 1
        return UpstreamRequest(self, prompt, params, adapter, on_event)

    def decoding(self) -> int:
        """Choices being generated upstream now (as Engine.decoding)."""
        return self.running

    def stats(self) -> dict:
        return {"waiting": self.waiting, "running": self.running, "slots": self.slots,
                **self.totals}

    # --------------------------------------------------------------------- the wire

    def connection(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """The running event loop's client and gate (made at its first request)."""
        loop = asyncio.get_running_loop()
        if loop not in self.clients:
            self.clients[loop] = (httpx.AsyncClient(
                timeout=httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64)),
                asyncio.Semaphore(self.slots))
        return self.clients[loop]

    def payload(self, r: UpstreamRequest) -> tuple[str, dict]:
        body = {"model": r.adapter or self.model, "stream": True,
                "stream_options": {"include_usage": True}, **sampling_fields(r.params)}
        if isinstance(r.prompt, Chat):
            return "/v1/chat/completions", {**body, "messages": r.prompt.messages}
        return "/v1/completions", {**body, "prompt": r.prompt.text}

    async def run(self, r: UpstreamRequest) -> None:
        """Stream one choice from the upstream into `r`'s events; always ends it (a finish
        reason, "cancelled", or "error" with the ApiError in `r.failure`)."""
        (client, gate), (path, body) = self.connection(), self.payload(r)
        self.waiting += 1
        waited = False
        try:
            async with gate:
                self.waiting, self.running, waited = self.waiting - 1, self.running + 1, True
                try:
                    await self.relay(r, client, path, body)
                finally:
                    self.running -= 1
        except asyncio.CancelledError:
            r.emit("", "cancelled")
        except ApiError as e:
            r.emit("", "error", e)
        except httpx.HTTPError as e:
            r.emit("", "error", connection_error(self.url, e))
        finally:
            if not waited:  # cancelled while waiting at the gate
                self.waiting -= 1
            self.totals["prompt_tokens"] += r.prompt_tokens
            self.totals["generated_tokens"] += r.completion_tokens

    async def relay(self, r: UpstreamRequest, client: httpx.AsyncClient, path: str,
                    body: dict) -> None:
        finish, chunks, counted = None, 0, False
        async with client.stream("POST", self.url + path, json=body,
                                 headers=self.headers) as resp:
            if resp.status_code != 200:
                await resp.aread()
                raise upstream_error(resp.status_code, message_of(resp),
                                     retry_after=resp.headers.get("retry-after"))
            r.accepted.set_result(None)
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise ApiError(502, f"the upstream engine sent a chunk that is not JSON: "
                                        f"{data[:80]!r}", code="upstream_error") from None
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    err = chunk["error"]
                    text = err.get("message", err) if isinstance(err, dict) else err
                    raise ApiError(502, f"the upstream engine failed mid-reply: {text}",
                                   code="upstream_error")
                if isinstance(chunk.get("usage"), dict):
                    u, counted = chunk["usage"], True
                    r.prompt_tokens = int(u.get("prompt_tokens") or 0)
                    r.completion_tokens = int(u.get("completion_tokens") or 0)
                for c in chunk.get("choices") or []:
                    delta = c.get("delta") or {}
                    text = delta.get("content") if "delta" in c else c.get("text")
                    if text:
                        chunks += 1
                        if not counted:  # until its usage comes, if it ever does
                            r.completion_tokens = chunks
                        r.emit(text)
                        self.totals["steps"] += 1
                    finish = c.get("finish_reason") or finish
        if finish is None:
            raise ApiError(502, "the upstream engine ended the stream before the reply's "
                                "end (no finish_reason)", code="upstream_error")
        r.emit("", finish if finish in FINISHES else "stop")

    async def embeddings(self, body: dict) -> dict:
        """POST /v1/embeddings upstream, its answer as it is (errors mapped)."""
        client, _ = self.connection()
        try:
            resp = await client.post(self.url + "/v1/embeddings", json=body,
                                     headers=self.headers)
        except httpx.HTTPError as e:
            raise connection_error(self.url, e) from None
        if resp.status_code != 200:
            raise upstream_error(resp.status_code, message_of(resp),
                                     retry_after=resp.headers.get("retry-after"))
        try:
            return resp.json()
        except ValueError:
            raise ApiError(502, "the upstream engine's embeddings are not JSON",
                           code="upstream_error") from None


def open_upstream(url: str, key_env: str | None, model: str | None,
                  adapter: list[str] | None, slots: int, context: int) -> UpstreamEngine:
    """The upstream engine at `url` (started: its models read), its key from the environment
    variable `key_env` (JIELONG_UPSTREAM_KEY when not named)."""
    if adapter:
        raise UserError("--adapter loads LoRA adapters into a local model; with --upstream, "
                        "load them in the upstream engine (its models are served as adapters)")
    name = key_env or "JIELONG_UPSTREAM_KEY"
    key = os.environ.get(name)
    if key_env and key is None:
        raise UserError(f"--upstream_key {key_env}: no such environment variable; export "
                        f"{key_env}=KEY (the name of the variable, not the key itself)")
    return UpstreamEngine(url, (key or "").strip() or None, model, slots, context).start()
