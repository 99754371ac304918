"""Errors as OpenAI's JSON, `{"error": {"message", "type", "param", "code"}}`, for every route of
the server (/v1 and the web chat's /api): the exception a route raises (`ApiError`), how a
failed schema, an engine's UserError or a failed request become one, and the app's handlers
that answer them (`add_error_handlers`).
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jielong.errors import UserError


class ApiError(Exception):
    """An error answered as OpenAI's JSON error object."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type_: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ("server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers  # e.g. Retry-After on a 429 or 503 (jielong.serve.admission)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def field_path(loc) -> str:
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
    field = field_path(common) or "body"
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


def engine_failed(error: str | None) -> ApiError:
    """A request the engine failed (its Event's `error`)."""
    return ApiError(500, f"the engine failed: {error}", code="engine_error")


# ----------------------------------------------------------------------------- the app's handlers


async def on_api_error(request: Request, e: ApiError) -> JSONResponse:
    return e.response()


async def on_invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    return validation_error(list(e.errors()), drop_first=True).response()


async def on_http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (an unknown route, a wrong method) in OpenAI's shape."""
    if e.status_code == 404:
        err = ApiError(404, f"no such route: {request.method} {request.url.path}",
                       code="not_found")
    elif e.status_code == 405:
        err = ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                       code="method_not_allowed")
    else:
        err = ApiError(e.status_code, str(e.detail))
    return JSONResponse(err.body(), status_code=err.status, headers=e.headers)


def add_error_handlers(app: FastAPI) -> None:
    """Answer ApiError, a failed path or query parameter, and Starlette's HTTP errors as
    OpenAI's JSON. An unexpected exception is jielong.serve.guard.Guard's to answer:
    Starlette's handler for Exception would re-raise it after answering, and uvicorn then
    drops the connection."""
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
