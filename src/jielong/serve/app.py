"""The server: an OpenAI-compatible HTTP API over the engine (jielong.infer.engine), and the
web chat, as one FastAPI app composed of routers and middleware.

    app = create_app(engine, tok, "mine", generation_config, api_keys=["sekret"])
    uvicorn.run(app, host="127.0.0.1", port=8000)          # or `jielong serve --model DIR`

What answers what:
- /v1/* (chat and text completions, embeddings, models): jielong.serve.openai_routes;
- /api/* and the chat page at / (with a store): jielong.serve.chat_routes, and the arena's
  /api/arena (two models answer one question; the user votes): jielong.serve.arena_routes;
  the document collections, /api/collections (list, upload): jielong.serve.documents;
  the "Look inside" panel's /api/inspect (next tokens, attention): jielong.serve.inspect_routes;
- retrieval before generation from the user's documents (with a `library`, `jielong serve
  --rag`), on /v1/chat/completions and the web chat: jielong.serve.documents;
- GET /health, GET /metrics (Prometheus text): jielong.serve.metrics; with API keys,
  /metrics needs one too, as do /openapi.json and /docs (the API's schema and its page);
  with `metrics_elsewhere`, /metrics is served by `metrics_app` on its own port instead
  (`jielong serve --metrics_port`);
- admission (jielong.serve.admission: a bounded queue, token budgets per request and per
  client, a request timeout, the drain on shutdown) in front of every generation;
- the safety rails on chat and completions, /v1 and the web chat alike:
  jielong.serve.safety_rails;
- in front of them all, jielong.serve.guard.Guard (Host allowlist, cross-site writes, JSON
  bodies, a 500 that keeps the connection) and, outermost, metrics.CountRequests.

Every error is OpenAI's JSON, `{"error": {"message", "type", "param", "code"}}`
(jielong.serve.errors): 400 for a malformed body, a field of the wrong type or value, or a
prompt longer than the context (code context_length_exceeded); 401 for a missing or wrong API
key; 404 for an unknown model (model_not_found) or route; 405 for a wrong method; 413 for a
body over the limit; 415 for a body that is not JSON; 400 (invalid_host) for a Host header that
is not an allowed name; 403 for a state-changing request from another site. A user's mistake
is never a 500. Bodies are read by jielong.serve.body alone.

The app's state: `served` (jielong.serve.served.Served: engine, tokenizer, names, defaults),
`metrics`, `engine`, `api_keys`, `max_body_bytes`, `read_timeout` (seconds for a body to
arrive: jielong.serve.body), `admission` (or None: everything is taken), `library` (the
document collections, or None), and with a store `store` and `chat_replies` (the web chat's
replies being generated). No response names a file of the machine.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jielong.errors import UserError
from jielong.infer.engine import Engine
from jielong.safety.policy import load_policy
from jielong.safety.rails import Rails
from jielong.serve import (
    arena_routes,
    chat_routes,
    documents,
    inspect_routes,
    metrics,
    openai_routes,
)
from jielong.serve.admission import Admission
from jielong.serve.documents import Library
from jielong.serve.errors import ApiError, add_error_handlers
from jielong.serve.guard import LOOPBACK, Guard, authorize
from jielong.serve.metrics import CountRequests, Metrics
from jielong.serve.served import Served
from jielong.serve.store import Store


def create_app(engine: Engine, tok, model_name: str, generation_config: dict | None = None, *,
               system_prompt: str | None = None, api_keys=(), max_body_bytes: int = 1_000_000,
               max_messages: int = 256, max_message_chars: int = 100_000,
               store: Store | None = None, allowed_hosts=LOOPBACK,
               rails: Rails | None = None, library: Library | None = None,
               admission: Admission | None = None, read_timeout: float = 30.0,
               metrics_elsewhere: bool = False) -> FastAPI:
    """The FastAPI app serving `engine` (already started) as `model_name`; its LoRA adapters
    are served under their own names. `api_keys`: when any, every /v1 request must send
    `Authorization: Bearer KEY` with one of them. `store` (a jielong.serve.store.Store): also
    serve the web chat's /api routes (jielong.serve.chat_routes), kept in it.
    `allowed_hosts`: the names a request's Host header may give (loopback by default; "*":
    any, "*.example.com": its subdomains too); see jielong.serve.guard.Guard. `rails`: the
    safety rails (jielong.safety.rails.Rails; default: the default policy's, as `jielong
    serve` has them unless --safety off). `library`: the document collections
    (jielong.serve.documents.Library) answers are retrieved from, and uploaded into.
    `admission` (jielong.serve.admission.Admission): the limits generation requests pass
    first (none: all are taken). `read_timeout`: seconds a request body may take to arrive.
    `metrics_elsewhere`: /metrics is served by `metrics_app` on another port, not here."""
    if any(not k for k in api_keys):
        raise UserError("an API key must not be empty")
    counts = Metrics(engine, model_name)
    app = FastAPI(title="jielong", summary=f"OpenAI-compatible API serving {model_name}",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = Served(engine, tok, model_name, counts,
                              generation_config=dict(generation_config or {}),
                              system_prompt=system_prompt, max_messages=max_messages,
                              max_message_chars=max_message_chars,
                              rails=rails if rails is not None else Rails(load_policy("default")))
    app.state.metrics, app.state.engine = counts, engine
    app.state.api_keys = [k.encode() for k in api_keys if k]
    app.state.max_body_bytes = max_body_bytes
    app.state.library = library
    app.state.admission, app.state.read_timeout = admission, read_timeout
    app.state.metrics_elsewhere = metrics_elsewhere
    app.add_middleware(Guard, allowed_hosts=list(allowed_hosts))
    app.add_middleware(CountRequests, metrics=counts)  # outermost: counts what Guard refuses
    add_error_handlers(app)

    if store is not None:  # the web chat's /api (before any catch-all mount of static files)
        app.state.store, app.state.chat_replies = store, set()
        app.include_router(chat_routes.router)
        app.include_router(arena_routes.router)
        app.include_router(documents.router)
        app.include_router(inspect_routes.router)
    app.include_router(metrics.router, dependencies=[Depends(guard_metrics)])
    app.add_api_route("/openapi.json", openapi, dependencies=[Depends(authorize)],
                      include_in_schema=False)
    app.add_api_route("/docs", docs, dependencies=[Depends(authorize)], include_in_schema=False)
    app.include_router(openai_routes.router)
    if store is not None:  # the web chat's page: GET / and its files under /static
        app.include_router(chat_routes.page_router)
        app.mount("/static", StaticFiles(directory=chat_routes.STATIC), name="static")
    return app


async def guard_metrics(request: Request) -> None:
    """/metrics needs the API key when the server has keys, and is not here when served on
    its own port; /health is open to all (a liveness check)."""
    if request.url.path == "/metrics":
        if request.app.state.metrics_elsewhere:
            raise ApiError(404, "no such route: GET /metrics (served on the metrics port)",
                           code="not_found")
        await authorize(request)


async def openapi(request: Request):
    return request.app.openapi()


async def docs(request: Request):
    return get_swagger_ui_html(openapi_url="/openapi.json", title="jielong API")


def metrics_app(app: FastAPI) -> FastAPI:
    """An app serving only `app`'s GET /metrics (and /health): for a port of its own, which
    a firewall can keep to the monitoring network."""
    side = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    async def scrape():
        return Response(generate_latest(app.state.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    async def health():
        return {"status": "ok"}

    side.add_api_route("/metrics", scrape)
    side.add_api_route("/health", health)
    return side
