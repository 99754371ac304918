"""The one path by which the server reads a request body: every POST/PUT/PATCH body of /v1 and
/api comes through `read_body(request, Schema)` and nowhere else, but an uploaded document's
bytes (`read_raw`, the size limit alone: jielong.serve.documents).

It checks, in order: the size limit (413), UTF-8, JSON without NaN/Infinity, at most MAX_DEPTH
levels deep, no integer of thousands of digits, no lone surrogates in any string (text the
tokenizer, SQLite and the browser all refuse), a JSON object, then the schema
(jielong.serve.schemas); any failure is a 400 naming what is wrong, never a 500.

A body must arrive whole within the app's `state.read_timeout` seconds (30 by default) of
the request's start: one sent slowly (a byte a second) is answered 408 and its connection
closed, so a slow client cannot hold a connection open (uvicorn bounds the headers and idle
connections: jielong.serve.command).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from jielong.errors import json_problem
from jielong.serve.errors import ApiError, validation_error

MAX_DEPTH = 64  # levels of JSON nesting; OpenAI's bodies need about 5, json.loads breaks near 1000
READ_TIMEOUT = 30.0  # seconds for a body to arrive, when the app sets none
SURROGATE = re.compile("[\ud800-\udfff]")


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
    m = SURROGATE.search(s)
    if m:
        raise ApiError(400, f"the request body has a lone surrogate (\\u{ord(m.group()):04x}) in "
                            "a string, which is not a character; send valid Unicode text",
                       code="invalid_json")


async def read_raw(request: Request, limit: int, what: str = "request body") -> bytes:
    """The request's body as bytes, at most `limit` of them (413 otherwise, told before
    reading when Content-Length says so)."""
    too_big = ApiError(413, f"the {what} is larger than {limit} bytes",
                       code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    seconds = getattr(request.app.state, "read_timeout", None) or READ_TIMEOUT
    end = request.scope.setdefault("jielong.read_deadline", time.monotonic() + seconds)
    try:
        async with asyncio.timeout(max(0.0, end - time.monotonic())):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_big
    except ClientDisconnect:
        raise ApiError(400, "the client went away before sending the whole body") from None
    except TimeoutError:
        raise ApiError(408, f"the {what} did not arrive within {seconds:g} seconds",
                       code="request_timeout", headers={"Connection": "close"}) from None
    return bytes(body)


async def read_body(request: Request, schema: type[BaseModel], optional: bool = False):
    """The request's JSON body as `schema`; with `optional`, None for an empty body. The limit
    is the app's `state.max_body_bytes`."""
    body = await read_raw(request, request.app.state.max_body_bytes)
    if not body.strip():
        if optional:
            return None
        raise ApiError(400, "the request body is empty; send a JSON object")
    obj = parse_json(body)
    if not isinstance(obj, dict):
        raise ApiError(400, f"the request body must be a JSON object, not "
                            f"{type(obj).__name__}", code="invalid_json")
    try:
        return schema.model_validate(obj)
    except ValidationError as e:
        raise validation_error(e.errors()) from None
