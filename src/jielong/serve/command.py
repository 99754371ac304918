"""`jielong serve`: the server (jielong.serve.app: the OpenAI-compatible API and the web chat)
on a model, from the shell.

Run as:
    jielong serve --help

For example (runs/demo/model: what `jielong demo` trains):
    jielong serve --model runs/demo/model
    jielong serve --model Qwen/Qwen2.5-0.5B-Instruct --adapter zh=runs/zh/adapter --port 8000
    jielong serve --model runs/demo/assistant --rag docs=runs/index --rag faq=runs/faq-index
    jielong serve --model runs/demo/assistant --rag runs/index --rag_embedder runs/embed/model --rag_method hybrid
    jielong serve --model runs/demo/assistant --max_queue 64 --client_tokens 16384 --request_timeout 120 --metrics_port 9100
    jielong serve --upstream http://127.0.0.1:8001/v1 --upstream_model Qwen/Qwen2.5-7B-Instruct --rag runs/index

Admission (jielong.serve.admission): a bounded queue (--max_queue; 503 when full), a token
budget per request (--max_request_tokens; n × max_tokens + prompt) and per client (the API
key, else the address; --client_tokens in flight; 429 over it), both with Retry-After, and a
request timeout; the engine's queue takes turns between clients. SIGTERM or Ctrl-C drains
(jielong.serve.server): running requests get --drain_seconds, the rest end with their final
event, then the engine and the store close and the command exits 0.

With --rag, every chat reply (/v1 and the web chat) is answered from the documents of an
index (`jielong rag index`), with citations (jielong.serve.documents); the web chat's users
can upload documents into collections of their own (kept under --uploads).

With --upstream, another OpenAI-compatible server generates (vLLM, SGLang, llama.cpp's
server, Ollama, another jielong) and this one keeps the application around it: the web
chat, the feedback store, API keys, the rails, retrieval (jielong.serve.upstream); no model
is loaded here.

Kept apart from app.py so that `jielong --help` works without the serving extra installed:
the app (fastapi, uvicorn, prometheus-client) is imported only when the server starts.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Literal

from jielong.errors import UserError
from jielong.hub import open_model, stop_ids
from jielong.infer.chat import need_demo
from jielong.infer.engine import Engine, one_thread
from jielong.infer.kv import blocks_for_memory
from jielong.rag.embed import load_embedder
from jielong.runtime import decoding_memory, pick_device
from jielong.safety.rails import build_rails
from jielong.serve.hosts import LOOPBACK, host_name
from jielong.serve.store import Store


def serve(
    model: str = "runs/demo/assistant",
    adapter: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: list[str] | None = None,
    allowed_hosts: list[str] | None = None,
    system_prompt: str | None = None,
    slots: int = 16,
    context: int = 4096,
    kv_memory_gb: float | None = None,
    prefill_chunk: int = 512,
    prefix_cache: bool = True,
    compile: bool | None = None,
    name: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    max_body_bytes: int = 1_000_000,
    db: str | None = None,
    safety: str = "default",
    locale: str | None = None,
    guard_model: str | None = None,
    guard_classifier: str | None = None,
    rag: list[str] | None = None,
    rag_embedder: str | None = None,
    rag_method: Literal["bm25", "dense", "hybrid"] | None = None,
    rag_dense_weight: float = 1.0,
    uploads: str | None = None,
    max_upload_bytes: int = 20_000_000,
    redact_pii: bool = False,
    hard_delete: bool = False,
    log_level: str = "info",
    max_queue: int = 128,
    max_request_tokens: int = 0,
    client_tokens: int = 0,
    request_timeout: float = 600.0,
    read_timeout: float = 30.0,
    idle_timeout: float = 5.0,
    drain_seconds: float = 10.0,
    metrics_port: int | None = None,
    upstream: str | None = None,
    upstream_key: str | None = None,
    upstream_model: str | None = None,
    quantize: str | None = None,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (chat, completions, embeddings).

    Any OpenAI client works: base URL http://HOST:PORT/v1, model NAME (or an adapter's name
    for that LoRA adapter). Requests decode together (continuous batching); /metrics has
    Prometheus metrics, /health a liveness check.

    Args:
        model: A model directory or a Hugging Face hub id (default: the assistant `jielong demo` trains).
        adapter: LoRA adapter folders to serve beside the base, each NAME=DIR (or DIR); a
            request picks one with "model": "NAME".
        host: Address to listen on; 127.0.0.1 keeps it on this machine, 0.0.0.0 opens it to
            the network (then set an API key).
        port: Port to listen on.
        api_key: Keys a client must send as `Authorization: Bearer KEY`, each at least
            8 characters (also read from the environment variable JIELONG_API_KEY, which keeps
            it out of the process list).
        allowed_hosts: Host names clients may use to reach the server, beyond 127.0.0.1,
            localhost, [::1] and --host itself (a request naming another is refused, which
            stops DNS-rebinding pages); *.example.com for its subdomains, * for any.
        system_prompt: System message for conversations that bring none.
        slots: Most requests decoding at once.
        context: Most tokens per request, prompt and reply (capped at the model's own).
        kv_memory_gb: Memory for the KV cache, in GB, shared by all requests in blocks of 16
            tokens, so each holds only what its tokens need (default: --slots × --context
            tokens' worth, every request able to reach the whole context at once).
        prefill_chunk: Most prompt tokens fed per engine step: a longer prompt is fed in
            pieces between the running requests' decode steps, so their streams keep flowing.
        prefix_cache: Keep the KV cache of prompt prefixes (a system prompt, a chat's earlier
            turns) for the next request that begins the same way.
        compile: Decode with the compiled step over the paged cache (torch.compile, dynamic
            shapes; jielong.infer.compiled). Default: off for now (measured no faster on a CPU).
        name: The model name clients use (default: --model as given; for an absolute path,
            its folder's name).
        device: auto, cpu, cuda, mps.
        dtype: auto (the checkpoint's on a GPU, float32 on CPU), float32, bfloat16, float16.
        max_body_bytes: Largest request body accepted.
        db: SQLite file keeping the web chat's conversations and feedback (default:
            feedback.db beside a local --model's folder, else runs/serve/feedback.db);
            `jielong feedback export` turns it into training data.
        safety: The safety policy of the rails on every reply (input and output): "default"
            (jielong/safety/default_policy.yaml), "off", or your copy of it (YAML).
        locale: The users' locale (zh-TW, zh-HK, zh-CN, en-US, ...) for the crisis lines a
            self-harm message is answered with (default: told from each message's script).
        guard_model: A guard model directory (Llama Guard or Qwen3Guard layout) the input
            rail also asks.
        guard_classifier: A classifier from `jielong train guard` the input rail also asks.
        rag: Answer from your documents: an index folder (`jielong rag index DOCS --out
            INDEX`), or several as NAME=INDEX; a request picks one with "rag":
            {"collection": NAME} ("rag": false for none); the default is the first.
        rag_embedder: The encoder folder the --rag indexes were built with (`jielong rag
            index --embedder DIR`), for dense and hybrid search; uploads are embedded with it.
        rag_method: How the documents are searched: bm25, dense or hybrid (default: hybrid
            with --rag_embedder, else bm25).
        rag_dense_weight: Hybrid: the dense list's weight in the rank fusion, BM25's being 1.
        uploads: The folder where the web chat keeps the documents users upload into their
            own collections (default: uploads/ beside --db; "off": no uploads).
        max_upload_bytes: Largest document a user may upload.
        redact_pii: Keep the chats with personal data redacted (emails, phone numbers, ID and
            card numbers, keys: the detectors of `jielong data clean`), in --db.
        hard_delete: Deleting a conversation in the web chat removes it from --db (default:
            hidden, kept for `jielong feedback purge`).
        log_level: Server log level: critical, error, warning, info, debug.
        max_queue: Most requests (choices) waiting for a slot; beyond it a request is
            answered 503 server_overloaded with Retry-After (0: no bound).
        max_request_tokens: Most tokens one request may hold, n × max_tokens + its prompt
            (0: a client's whole share, --client_tokens); beyond it a 400.
        client_tokens: Most tokens one client (its API key, else its address) may hold in
            requests in flight; beyond it a 429 rate_limit_exceeded with Retry-After
            (0: half the server's, slots × context / 2).
        request_timeout: Most seconds a request is held, waiting and generating; then its
            choices end with finish_reason "length" (0: no limit).
        read_timeout: Seconds a client has to send a request's headers, and again its body;
            a slower connection is closed.
        idle_timeout: Seconds an idle keep-alive connection stays open.
        drain_seconds: On SIGTERM or Ctrl-C, how long running requests may go on before
            they are cut (each still gets its final event).
        metrics_port: Serve /metrics on this port (same --host) instead of the API's
            (without it /metrics is on the API's port, behind the API key when one is set).
        upstream: Generate on another OpenAI-compatible server at this URL (vLLM, SGLang,
            llama.cpp's server, Ollama, another jielong serve; e.g. http://127.0.0.1:8001/v1)
            instead of loading --model; this server keeps the web chat, store, keys, rails
            and --rag in front of it, and serves the upstream's models.
        upstream_key: The name of the environment variable holding the upstream's API key
            (default: JIELONG_UPSTREAM_KEY, when set).
        upstream_model: The upstream's model to serve (default: the first it lists); its
            other models are served as adapters.
        quantize: int8 or int4: weight-only quantized linear layers (faster on a CPU, 4-8x
            smaller); default: the weights as stored.
    """
    try:  # lazy: the serving extra
        import uvicorn

        from jielong.serve.admission import Admission  # lazy: the serving extra
        from jielong.serve.app import create_app, metrics_app  # lazy: the serving extra
        from jielong.serve.documents import Library, parse_rag  # lazy: the serving extra
        from jielong.serve.server import Quiet, Server, deadline_protocol  # lazy: the serving extra
        from jielong.serve.upstream import open_upstream  # lazy: the serving extra (httpx)
    except ImportError as e:
        raise UserError(f"jielong serve needs the serving extra ({e.name} is missing): "
                        "pip install 'jielong[serve]'") from None

    if upstream is None:
        need_demo(model)
    keys = api_keys(api_key, os.environ.get("JIELONG_API_KEY"))
    hosts = allowed_host_names(host, allowed_hosts)
    for flag, p in (("--port", port), ("--metrics_port", metrics_port)):
        if p is not None and not 0 < p < 65536:
            raise UserError(f"{flag} {p}: must be between 1 and 65535")
    if metrics_port == port:
        raise UserError(f"--metrics_port {metrics_port}: is --port too; give another port")
    limits = {"max_queue": max_queue, "max_request_tokens": max_request_tokens,
              "client_tokens": client_tokens, "request_timeout": request_timeout,
              "drain_seconds": drain_seconds}
    for flag, v in limits.items():
        if v < 0:
            raise UserError(f"--{flag} {v}: must be 0 or more")
    for flag, v in (("read_timeout", read_timeout), ("idle_timeout", idle_timeout)):
        if not v > 0:
            raise UserError(f"--{flag} {v}: must be more than 0 seconds")
    # torch's threads go to the engine's loop (Engine's `threads`: OpenMP keeps a team for
    # every thread that ran a parallel region, and two teams on the cores slow every matmul);
    # this thread loads the model, the rails and the documents on one; all of it in the
    # memory a decoding process asks for (jielong.runtime.decoding_memory)
    with one_thread() as threads, decoding_memory():
        rails = build_rails(safety, locale, guard_model, guard_classifier, pick_device(device))
        home = model if upstream is None else upstream  # where the store goes by default
        folder = uploads_folder(uploads, db, home, max_upload_bytes)
        embedder = load_embedder(rag_embedder) if rag_embedder else None
        library = Library(parse_rag(rag), folder, max_upload_bytes, embedder, rag_method, rag_dense_weight)
        sock = _bind(host, port)  # before loading the model: a busy port fails in a second
        try:
            side_sock = _bind(host, metrics_port) if metrics_port else None
        except BaseException:
            sock.close()
            raise
        try:
            store = open_store(db, home, redact_pii, hard_delete)
        except BaseException:
            sock.close()
            if side_sock is not None:
                side_sock.close()
            raise
        interrupted = store.mark_interrupted()  # replies a crash left unfinished
        try:
            if upstream is None:
                net, tok, gen = open_model(model, device=pick_device(device), dtype=dtype, adapters=adapter,
                                           quantize=quantize, pack=not compile)
                blocks = blocks_for_memory(net, kv_memory_gb) if kv_memory_gb is not None else None
                engine = Engine(net, tok, stop_ids(tok, gen, net.config.eos_token_id), slots=slots,
                                context=context, kv_blocks=blocks, prefix_cache=prefix_cache,
                                prefill_chunk=prefill_chunk, compile=compile, threads=threads).start()
            else:
                engine, tok, gen = open_upstream(upstream, upstream_key, upstream_model, adapter,
                                                   slots, context), None, {}
        except BaseException:
            sock.close()
            if side_sock is not None:
                side_sock.close()
            store.close()
            raise
        served = name or (served_name(model) if upstream is None else engine.model)
        share = client_tokens or slots * engine.context // 2
        admission = Admission(engine, max_queue, max_request_tokens, share, request_timeout)
        app = create_app(engine, tok, served, gen, system_prompt=system_prompt, api_keys=keys,
                         max_body_bytes=max_body_bytes, store=store, allowed_hosts=hosts,
                         rails=rails, library=library, admission=admission,
                         read_timeout=read_timeout, metrics_elsewhere=metrics_port is not None)
        where = f"[{host}]" if ":" in host else host
        if upstream is not None:
            print(f"generating on the upstream engine at {engine.url} ({engine.model}; key "
                  f"{'sent' if engine.key else 'none'})", file=sys.stderr)
        extra = f" + adapters {', '.join(engine.adapters)}" if engine.adapters else ""
        pool = getattr(engine, "pool", None)  # an upstream keeps its own KV cache
        kv = f" · KV cache {pool.total} blocks × {pool.size} tokens ({pool.bytes / 1e9:.2g} GB)" if pool else ""
        print(f"serving {served}{extra} at http://{where}:{port}/v1 · {slots} slots · context "
              f"{engine.context}{kv} · API key {'required' if keys else 'not required'}",
              file=sys.stderr)
        print(f"chats and feedback kept in {store.file}" +
              (" (personal data redacted)" if redact_pii else "") +
              ("; deleting a chat removes it" if hard_delete else "") +
              (f" ({interrupted} unfinished replies marked interrupted)" if interrupted else ""),
              file=sys.stderr)
        print(f"admission: {max_queue or 'unbounded'} queued at most, {admission.max_request_tokens} "
              f"tokens a request, {share} a client"
              + (f", {request_timeout:g} s a request" if request_timeout else "")
              + (f"; metrics at http://{host}:{metrics_port}/metrics" if metrics_port else ""),
              file=sys.stderr)
        if library is not None:
            names = ", ".join(library.collections) or "none yet"
            print(f"documents: {names}" + (f" (default {library.default})" if library.default else "")
                  + (f"; uploads kept in {library.uploads}" if library.uploads else ""),
                  file=sys.stderr)
        print(f"safety policy: {rails.policy.source}" + (f", locale {locale}" if locale else "") +
              ("" if rails.enabled else " (rails off)"), file=sys.stderr)
        if not keys and host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {host} without an API key: anyone who can reach this "
                  "port can use the model; set JIELONG_API_KEY or --api_key", file=sys.stderr)
        if host in _ANY and not allowed_hosts:
            print(f"note: requests must name {', '.join(LOOPBACK)} as their host; add the names "
                  "clients use to reach this machine with --allowed_hosts NAME", file=sys.stderr)
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5,
                                http=deadline_protocol(read_timeout), timeout_keep_alive=idle_timeout,
                                h11_max_incomplete_event_size=16 * 1024)
        side = None if side_sock is None else Quiet(uvicorn.Config(
            metrics_app(app), log_level="warning", http=deadline_protocol(read_timeout),
            timeout_keep_alive=idle_timeout))
        server = Server(config, admission, drain_seconds, app.state.chat_replies, side, side_sock)
        try:
            server.run(sockets=[sock])
        finally:
            engine.close()
            sock.close()
            if side_sock is not None:
                side_sock.close()
            store.close()
            if server.cut:
                print(f"shutdown: {server.cut} requests still running after {drain_seconds:g} s "
                      "were cut (each got its final event)", file=sys.stderr)
            s = engine.stats()
            print(f"served {s['requests']} requests: {s['prompt_tokens']} prompt tokens, "
                  f"{s['generated_tokens']} generated", file=sys.stderr)


MIN_KEY = 8  # characters of an API key: shorter is guessed, and "" was taken for none
_ANY = ("0.0.0.0", "::", "")  # listening on every address: no one name to allow


def api_keys(given: list[str] | None, env: str | None) -> list[str]:
    """The API keys from --api_key and JIELONG_API_KEY (None: not set); an empty or short one
    is a UserError, not a server left open."""
    keys = [("--api_key", k) for k in given or []]
    if env is not None:
        keys.append(("JIELONG_API_KEY", env))
    for where, k in keys:
        if len(k.strip()) < MIN_KEY:
            what = "is empty" if not k.strip() else f"has only {len(k.strip())} characters"
            raise UserError(f"{where}: the API key {what}; give one of at least {MIN_KEY} "
                            "characters (e.g. from `openssl rand -hex 16`), or none to serve "
                            "without a key")
    return [k.strip() for _, k in keys]


def allowed_host_names(host: str, extra: list[str] | None) -> list[str]:
    """The names a request's Host header may give: loopback, --host when it is one address,
    and --allowed_hosts."""
    out = list(LOOPBACK) + ([] if host in _ANY else [host])
    for h in extra or []:
        if h != "*" and host_name(h, bare_ipv6=True) is None:
            raise UserError(f"--allowed_hosts {h!r}: not a host name (give e.g. example.com, "
                            "*.example.com, 192.168.1.5 or *)")
        out.append(h)
    return out


def served_name(model: str) -> str:
    """The name clients use by default: --model as given, but an absolute path's last
    folder (a response must not name a file of the machine)."""
    return Path(model).name if Path(model).is_absolute() else model


def db_path(db: str | None, model: str) -> str:
    """--db, or feedback.db beside a local model's folder (a hub id: under runs/serve/)."""
    if db is None:
        where = Path(model)
        db = str(where.resolve().parent / "feedback.db") if where.is_dir() \
            else "runs/serve/feedback.db"
    return db


def open_store(db: str | None, model: str, redact_pii: bool = False,
               hard_delete: bool = False) -> Store:
    """The chat store (db_path)."""
    return Store(db_path(db, model), redact_pii=redact_pii, hard_delete=hard_delete)


def uploads_folder(uploads: str | None, db: str | None, model: str,
                   max_upload_bytes: int) -> Path | None:
    """Where uploaded documents are kept: --uploads, by default uploads/ beside the chat
    store; None for "off"."""
    if max_upload_bytes < 1:
        raise UserError(f"--max_upload_bytes {max_upload_bytes}: must be at least 1")
    if uploads is not None and uploads.lower() == "off":
        return None
    folder = Path(uploads) if uploads else Path(db_path(db, model)).parent / "uploads"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--uploads {folder}: is a file; give a folder (or off)")
    return folder


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (uvicorn listens on it), or a clear error."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: not an address this machine can listen on ({e.strerror})") \
            from None
    family, kind, proto, _, address = info[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); is another server "
                        "running there? pick another --port") from None
    sock.set_inheritable(True)
    return sock
