"""Who may ask the server what: the `Guard` middleware in front of every route, and the API
key check (`authorize`) on /v1 and /api.

`Guard` answers only requests whose Host header names an allowed host (a page on another name
that DNS-rebinds to 127.0.0.1 is refused: 400 invalid_host), turns away state-changing requests
from another site (Origin, Sec-Fetch-Site: 403), takes bodies on /v1 and /api only as JSON (415
otherwise: a page may POST text/plain or a form to any address without asking, but not JSON)
— an uploaded document (POST /api/collections/NAME/documents) only as
application/octet-stream, which a page on another site cannot send without a CORS preflight
either —
and answers an unexpected exception with a 500 in OpenAI's shape without dropping the
connection.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi import Request

from jielong.serve.errors import ApiError
from jielong.serve.hosts import LOOPBACK, host_matches, host_name

log = logging.getLogger("uvicorn.error")
UPLOAD = re.compile(r"^/api/collections/[^/]+/documents$")  # jielong.serve.documents


async def authorize(request: Request) -> None:
    """A route's dependency: when the app has API keys (`state.api_keys`, as bytes), the request
    must send `Authorization: Bearer KEY` with one of them (401 otherwise)."""
    keys = request.app.state.api_keys
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
        return name is not None and any(host_matches(name, e) for e in self.hosts)

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
            if UPLOAD.match(path):
                return self._upload_type(headers)
            return self._content_type(headers)
        return None

    @staticmethod
    def _upload_type(headers: dict[str, str]) -> ApiError | None:
        given = headers.get("content-type", "")
        if given.partition(";")[0].strip().lower() == "application/octet-stream":
            return None
        return ApiError(415, f"Content-Type {given!r} is not accepted for a document: send the "
                             "file's bytes as the body with `Content-Type: "
                             "application/octet-stream` and its name in ?filename=",
                        param="content-type", code="unsupported_media_type")

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
