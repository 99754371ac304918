"""What the OpenAI API (jielong.serve.api) and the web chat's /api (jielong.serve.chat_routes)
share: errors as OpenAI's JSON, the one path by which a request body is read, the guard in
front of every route, and the plumbing of a running request.

- `read_body(request, Schema)`: every POST/PUT/PATCH body of /v1 and /api is read here and
  nowhere else: size limit (413), UTF-8, JSON without NaN/Infinity, at most MAX_DEPTH levels
  deep, no lone surrogates in any string (text the tokenizer, SQLite and the browser all
  refuse), then the schema; any failure is a 400 naming what is wrong.
- `Guard`: ASGI middleware in front of the app. It answers only requests whose Host header
  names an allowed host (a page on another name that DNS-rebinds to 127.0.0.1 is refused), turns
  away state-changing requests from another site (Origin, Sec-Fetch-Site), takes bodies on
  /v1 and /api only as JSON (415 otherwise: a page may POST text/plain or a form to any
  address without asking, but not JSON), and answers an unexpected exception with a 500 in
  OpenAI's shape without dropping the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit

import jinja2
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import ClientDisconnect

from jielong.errors import UserError, json_problem
from jielong.infer.engine import Engine, Event, SamplingParams
from jielong.infer.engine import Request as EngineRequest

MAX_STOP = 4  # stop sequences per request, as OpenAI
MAX_CHOICES = 128  # n, and prompts × n for /v1/completions
MAX_DEPTH = 64  # levels of JSON nesting; OpenAI's bodies need about 5, json.loads breaks near 1000
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_SURROGATE = re.compile("[\ud800-\udfff]")
log = logging.getLogger("uvicorn.error")


# ----------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered as OpenAI's JSON error object."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ("server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _field_path(loc) -> str:
    """('messages', 0, 'role') -> 'messages[0].role'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(errors: list[dict], drop_first: bool = False) -> ApiError:
    """One line naming the field: the first error's, with the other ways the same field failed
    (a field that may be one of several types fails once per type)."""
    locs = [tuple(e["loc"][1:] if drop_first else e["loc"]) for e in errors]
    first = locs[0]
    same = [i for i, loc in enumerate(locs) if loc[:1] == first[:1]]
    common = first
    for i in same:
        n = 0
        while n < min(len(common), len(locs[i])) and common[n] == locs[i][n]:
            n += 1
        common = common[:n]
    field = _field_path(common) or "body"
    msgs = list(dict.fromkeys(re.sub(r"^Value error, ", "", errors[i]["msg"]) for i in same))
    message = f"{field}: {'; or '.join(msgs[:3])}"
    if errors[0]["type"] == "missing":
        message = f"{field}: this field is required"
    return ApiError(400, message, param=field)


def user_error(e: UserError, rename: dict[str, str] | None = None) -> ApiError:
    """The engine's one-line message, with `param` from the field it names first."""
    msg = str(e)
    m = re.match(r"(\w+)=", msg)
    param = m.group(1) if m else None
    if param and rename and param in rename:
        msg = rename[param] + msg[len(param):]
        param = rename[param]
    return ApiError(400, msg, param=param)

# ----------------------------------------------------------------------------- request bodies


class _Constant(ValueError):
    pass


def _no_constant(name: str):
    raise _Constant(name)


def parse_json(raw: bytes) -> Any:
    """The JSON value in `raw`, or an ApiError (400) saying what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the request body is not valid UTF-8 (at byte {e.start}); send "
                            "JSON in UTF-8", code="invalid_json") from None
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the request body is not valid JSON: {json_problem(e)} of line "
                            f"{e.lineno}", code="invalid_json") from None
    except _Constant as e:
        raise ApiError(400, f"the request body is not valid JSON: {e} is not a JSON number",
                       code="invalid_json") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # an integer of thousands of digits (Python's int-from-string limit)
        raise ApiError(400, "the request body has a number with too many digits",
                       code="invalid_json") from None
    # walk the tree without recursion: its depth and every string (keys too)
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        x, depth = stack.pop()
        if isinstance(x, str):
            _check_text(x)
        elif isinstance(x, dict | list):
            if depth > MAX_DEPTH:
                raise _too_deep()
            if isinstance(x, dict):
                for k in x:
                    _check_text(k)
                x = x.values()
            stack.extend((v, depth + 1) for v in x)
    return obj


def _too_deep() -> ApiError:
    return ApiError(400, f"the request body is nested more than {MAX_DEPTH} levels deep",
                    code="invalid_json")


def _check_text(s: str) -> None:
    m = _SURROGATE.search(s)
    if m:
        raise ApiError(400, f"the request body has a lone surrogate (\\u{ord(m.group()):04x}) in "
                            "a string, which is not a character; send valid Unicode text",
                       code="invalid_json")


async def read_body(request: Request, schema: type[BaseModel], optional: bool = False):
    """The request's JSON body as `schema`; with `optional`, None for an empty body. The limit
    is the app's `state.max_body_bytes`."""
    limit = request.app.state.max_body_bytes
    too_big = ApiError(413, f"the request body is larger than {limit} bytes",
                       code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
    except ClientDisconnect:
        raise ApiError(400, "the client went away before sending the whole body") from None
    if not body.strip():
        if optional:
            return None
        raise ApiError(400, "the request body is empty; send a JSON object")
    obj = parse_json(bytes(body))
    if not isinstance(obj, dict):
        raise ApiError(400, f"the request body must be a JSON object, not "
                            f"{type(obj).__name__}", code="invalid_json")
    try:
        return schema.model_validate(obj)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Body):
    include_usage: bool = False


class SamplingBody(Body):
    """The sampling fields chat and text completions share (and the web chat's settings)."""

    model: str | None = None  # None: the base model
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: go on past the end-of-turn tokens
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, not {len(v)}")
        return v

    @field_validator("n")
    @classmethod
    def _n(cls, v):
        if not 1 <= v <= MAX_CHOICES:
            raise ValueError(f"must be between 1 and {MAX_CHOICES}, not {v}")
        return v


# ----------------------------------------------------------------------------- running requests


class Batch:
    """Requests submitted together (n choices, several prompts); their events, in the order
    the engine made them, as (choice index, Event) on the event loop."""

    def __init__(self, engine: Engine, jobs: list[tuple[list[int], SamplingParams, str | None]],
                 metrics):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.metrics = metrics
        self.reqs: list[EngineRequest] = []
        try:
            for prompt, params, adapter in jobs:
                self.reqs.append(engine.submit(prompt, params, adapter, self._put))
        except BaseException:
            self.cancel()
            raise
        self.index = {r.id: i for i, r in enumerate(self.reqs)}

    def _put(self, e: Event) -> None:  # called from the engine's thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, e)
        except RuntimeError:  # the event loop has closed: nobody is listening
            pass

    def cancel(self) -> None:
        for r in self.reqs:
            if r.finish_reason is None:
                r.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        left = len(self.reqs)
        while left:
            e = await self.queue.get()
            if e.finish_reason:
                left -= 1
                self.metrics.finished(e.request)
            yield self.index[e.request.id], e


async def watch_disconnect(request: Request, batch: Batch) -> None:
    """Cancel the batch when the client goes away (the body is already read, so the next ASGI
    message is the disconnect)."""
    try:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                batch.cancel()
                return
    except Exception:  # noqa: BLE001 - a watcher must never take the request down
        return


# ----------------------------------------------------------------------------- chat prompts and streams


def chat_prompt(tok, messages: list[dict], param: str) -> list[int]:
    """The token ids of `messages` rendered with the model's chat template, ready for the
    assistant's reply; a conversation the template refuses is a 400 naming `param`."""
    try:
        rendered, _ = tok.render_chat(messages, add_generation_prompt=True)
    except UserError as e:
        raise ApiError(400, f"{param}: {e}", param=param) from None
    except jinja2.TemplateError as e:
        raise ApiError(400, f"{param}: the model's chat template cannot render this "
                            f"conversation ({type(e).__name__}: {e})", param=param) from None
    return tok.encode(rendered)


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ----------------------------------------------------------------------------- the guard


def host_name(value: str, bare_ipv6: bool = False) -> str | None:
    """The lower-case host name in a Host header or an origin's netloc ("[::1]:8000" -> "::1",
    "Example.com.:80" -> "example.com"), or None when it is not one. `bare_ipv6`: "::1" is an
    address, as in an allowlist (a Host header brackets it)."""
    value = value.strip().lower()
    if bare_ipv6 and value.count(":") > 1 and not value.startswith("["):
        return value
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
    else:
        name, _, port = value.partition(":")
        if ":" in port or (port and not port.isdigit()):
            return None
    name = name.rstrip(".")
    return name or None


def _matches(name: str, entry: str) -> bool:
    if entry.startswith("*."):
        return name == entry[2:] or name.endswith(entry[1:])
    return name == entry


class Guard:
    """ASGI middleware: Host allowlist, cross-site refusal, JSON-only bodies, and every
    unexpected exception a 500 in OpenAI's shape (the connection stays open)."""

    SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app, allowed_hosts: Iterable[str] = LOOPBACK):
        self.app = app
        entries = [h for h in (host_name(a, True) if a != "*" else "*" for a in allowed_hosts)
                   if h]
        self.any_host = "*" in entries
        self.hosts = [e for e in entries if e != "*"]

    def _allowed(self, name: str | None) -> bool:
        return name is not None and any(_matches(name, e) for e in self.hosts)

    def check(self, scope) -> ApiError | None:
        """The error for a request the guard turns away, else None."""
        headers: dict[str, str] = {}
        hosts = 0
        for k, v in scope["headers"]:
            key = k.decode("latin-1").lower()
            hosts += key == "host"
            headers.setdefault(key, v.decode("latin-1"))
        host = headers.get("host", "")
        if scope["path"] != "/health" and not self.any_host and \
                (hosts != 1 or not self._allowed(host_name(host))):
            return ApiError(400, f"the Host header {host!r} is not a name this server answers "
                                 "to; start it with --allowed_hosts NAME to add one",
                            param="host", code="invalid_host")
        if scope["method"] in self.SAFE:
            return None
        cross = ApiError(403, "cross-site requests are refused: this server only takes "
                              f"{scope['method']} requests from its own pages or from clients "
                              "that are not browsers", code="cross_site_request")
        if headers.get("sec-fetch-site") == "cross-site":
            return cross
        origin = headers.get("origin")
        if origin is not None:
            netloc = urlsplit(origin).netloc if origin != "null" else ""
            if not netloc or (netloc.lower() != host.lower()
                              and not self._allowed(host_name(netloc))):
                return cross
        path = scope["path"]
        if scope["method"] in ("POST", "PUT", "PATCH") and path.startswith(("/v1/", "/api/")):
            return self._content_type(headers)
        return None

    @staticmethod
    def _content_type(headers: dict[str, str]) -> ApiError | None:
        given = headers.get("content-type")
        if given is None:
            if headers.get("content-length", "0").strip() in ("0", "") and \
                    "transfer-encoding" not in headers:
                return None  # no body: fine where the body is optional
            kind, charset = "", None
        else:
            kind, _, params = given.partition(";")
            kind = kind.strip().lower()
            m = re.search(r"charset\s*=\s*\"?([^\";\s]*)", params, re.IGNORECASE)
            charset = m.group(1).lower() if m else None
        is_json = kind == "application/json" or (kind.startswith("application/")
                                                  and kind.endswith("+json"))
        if is_json and charset in (None, "utf-8", "utf8"):
            return None
        what = f"Content-Type {given!r}" if given is not None else "a body without a Content-Type"
        return ApiError(415, f"{what} is not accepted: send the body as JSON in UTF-8, with "
                             "`Content-Type: application/json`", param="content-type",
                        code="unsupported_media_type")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = self.check(scope)
        if refused is not None:
            return await refused.response()(scope, receive, send)
        started = False

        async def watch(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as e:  # noqa: BLE001 - answered here, so the server keeps the connection
            log.error("error in %s %s", scope["method"], scope["path"], exc_info=e)
            if not started:
                await ApiError(500, f"internal error: {type(e).__name__}").response()(
                    scope, receive, send)
