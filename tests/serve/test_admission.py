"""Admission and exposure (jielong.serve.admission, jielong.serve.server, jielong.serve.app)
over real HTTP: 400/429/503 in OpenAI's shape with Retry-After, the official `openai` client
retrying them by itself; the request timeout's final event; /metrics, /docs and /openapi.json
behind the key; no machine path in responses; connections that send slowly or nothing are
closed (raw sockets). The engine is held by a gate on its decode step, so "busy" is exact."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from conftest import serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.serve.admission import Admission  # noqa: E402
from jielong.serve.app import create_app, metrics_app  # noqa: E402
from jielong.serve.command import served_name  # noqa: E402
from jielong.serve.server import Server, deadline_protocol  # noqa: E402

K1, K2, K3 = "sk-one-0123456789", "sk-two-0123456789", "sk-three-0123456789"
HI = [{"role": "user", "content": "你好，今天天氣如何？"}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("admit")
    model, tok, gen = open_model(make_hf_dir(root, "qwen2"))
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=1,
                    context=256).start()
    gate = threading.Event()
    gate.set()
    decode = engine._decode

    def gated():  # held while the gate is shut, unless a running request was cancelled
        while not gate.is_set() and not any(r.cancelled for r in engine.running):
            gate.wait(0.01)
        decode()

    engine._decode = gated
    share = Admission(engine, client_tokens=150)
    queue = Admission(engine, max_queue=1)
    timed = Admission(engine, request_timeout=0.5)
    apps = {"share": create_app(engine, tok, "tiny", gen, api_keys=[K1, K2], admission=share),
            "queue": create_app(engine, tok, "tiny", gen, admission=queue),
            "timed": create_app(engine, tok, "tiny", gen, admission=timed),
            "keyed": create_app(engine, tok, "tiny", gen, api_keys=[K3]),
            "apart": create_app(engine, tok, "tiny", gen, metrics_elsewhere=True)}
    apps["side"] = metrics_app(apps["apart"])
    with serving(apps["share"]) as a, serving(apps["queue"]) as b, serving(apps["timed"]) as c, \
            serving(apps["keyed"]) as d, serving(apps["apart"]) as e, serving(apps["side"]) as f:
        yield SimpleNamespace(engine=engine, gate=gate, share=share, queue=queue, root=root,
                              urls=dict(zip(apps, (a, b, c, d, e, f), strict=True)))
    gate.set()
    engine.close()


def client(url: str, key: str = "unused", retries: int = 0):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=retries, timeout=30)


def background(fn) -> dict:
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - the test reads it
            out["error"] = e

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def wait_until(cond, seconds: float = 10) -> None:
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def ask(c, max_tokens: int, **kw):
    return c.chat.completions.create(model="tiny", messages=HI, max_tokens=max_tokens,
                                     temperature=0, **kw)


def test_too_large_400_over_share_429_retried_by_the_client(srv):
    url = srv.urls["share"]
    with pytest.raises(openai.BadRequestError) as e:  # n × max_tokens over any share: 400
        ask(client(url, K1), 60, n=4)
    assert e.value.code == "request_too_large" and "lower n or max_tokens" in e.value.message
    srv.gate.clear()
    first = background(lambda: ask(client(url, K1), 60, extra_body={"ignore_eos": True}))
    wait_until(lambda: srv.engine.running)
    with pytest.raises(openai.RateLimitError) as e:  # K1's share is held: 429
        ask(client(url, K1), 60)
    assert e.value.code == "rate_limit_exceeded" and e.value.status_code == 429
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert e.value.body["type"] == "tokens"
    other = background(lambda: ask(client(url, K2), 5))  # another key is not refused
    wait_until(lambda: srv.engine.stats()["waiting"] == 1)
    before = srv.share.refused["429"]
    retried = background(lambda: ask(client(url, K1, retries=4), 5))
    wait_until(lambda: srv.share.refused["429"] > before)  # refused, waiting Retry-After
    srv.gate.set()
    for job in (first, other, retried):
        job["thread"].join(30)
        assert "error" not in job, job.get("error")
    assert retried["value"].choices[0].finish_reason in ("stop", "length")
    assert srv.share.held == {} and not srv.share.active  # every reservation released


def test_503_when_the_queue_is_full(srv):
    url = srv.urls["queue"]
    srv.gate.clear()
    running = background(lambda: ask(client(url), 30, extra_body={"ignore_eos": True}))
    wait_until(lambda: srv.engine.running)
    queued = background(lambda: ask(client(url), 3))
    wait_until(lambda: srv.engine.stats()["waiting"] == 1)
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": HI,
                                                      "max_tokens": 3})
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "server_overloaded"
    with pytest.raises(openai.InternalServerError) as e:
        ask(client(url), 3)
    assert e.value.status_code == 503
    retried = background(lambda: ask(client(url, retries=4), 3))  # succeeds once there is room
    time.sleep(0.3)
    srv.gate.set()
    for job in (running, queued, retried):
        job["thread"].join(30)
        assert "error" not in job, job.get("error")


def test_request_timeout_ends_a_stream_with_its_final_event(srv):
    srv.gate.clear()
    try:
        body = {"model": "tiny", "messages": HI, "max_tokens": 100, "stream": True,
                "ignore_eos": True}
        t0 = time.monotonic()
        with httpx.stream("POST", srv.urls["timed"] + "/v1/chat/completions", json=body,
                          timeout=30) as r:
            lines = [x for x in r.iter_lines() if x.startswith("data: ")]
        assert time.monotonic() - t0 < 10 and lines[-1] == "data: [DONE]"
        finish = [json.loads(x[6:])["choices"][0]["finish_reason"] for x in lines[:-1]]
        assert finish[-1] == "length" and all(f is None for f in finish[:-1])
    finally:
        srv.gate.set()


def test_metrics_docs_behind_the_key_and_no_machine_paths(srv):
    url, bearer = srv.urls["keyed"], {"Authorization": f"Bearer {K3}"}
    for path in ("/metrics", "/openapi.json", "/docs"):
        assert httpx.get(url + path).status_code == 401, path
        assert httpx.get(url + path, headers=bearer).status_code == 200, path
    assert httpx.get(url + "/health").status_code == 200
    apart = srv.urls["apart"]
    assert httpx.get(apart + "/metrics").status_code == 404
    assert "jielong_requests_waiting" in httpx.get(srv.urls["side"] + "/metrics").text
    # what a client can see: models, errors of every kind, a reply, the schema, metrics
    seen = [httpx.get(url + p, headers=bearer).text
            for p in ("/v1/models", "/v1/models/nope", "/openapi.json", "/metrics", "/nope")]
    seen += [httpx.post(url + "/v1/chat/completions", headers=bearer, content=b).text
             for b in (b"{", b'{"model": "tiny", "messages": []}', b"[1]")]
    seen.append(httpx.post(url + "/v1/chat/completions", headers=bearer,
                           json={"model": "tiny", "messages": HI, "max_tokens": 4}).text)
    for text in seen:
        for where in {str(srv.root), os.getcwd(), os.path.expanduser("~"), "site-packages"}:
            assert where not in text, (where, text[:200])
    assert served_name(str(srv.root / "qwen2")) == "qwen2"
    assert served_name("runs/demo/assistant") == "runs/demo/assistant"


@contextmanager
def limited_server(app, read_timeout: float):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = Server(uvicorn.Config(app, log_level="warning", http=deadline_protocol(read_timeout),
                                   timeout_keep_alive=read_timeout))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def closed_after(port: int, steps: list[bytes], pause: float) -> tuple[float, bytes]:
    """Send `steps` one by one, `pause` apart, then read until the server closes; (seconds
    from connecting to the close, what came back)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        t0, got = time.monotonic(), b""
        s.settimeout(pause)
        try:
            for step in steps:
                try:
                    chunk = s.recv(65536)
                    got += chunk
                    if not chunk:
                        return time.monotonic() - t0, got
                except TimeoutError:
                    pass
                s.sendall(step)
            s.settimeout(10)
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionError:  # closed with bytes unread: a reset
            pass
        return time.monotonic() - t0, got


def test_slow_and_idle_connections_are_closed(srv):
    app = create_app(srv.engine, None, "tiny", {}, read_timeout=0.8)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" \
           b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    get = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with limited_server(app, 0.8) as port:
        cases = {"idle": ([], 0.1), "slow headers": ([bytes([b]) for b in head], 0.2),
                 "slow body": ([head] + [b" "] * 40, 0.2), "keep-alive idle": ([get], 0.1)}
        out = {k: background(lambda s=s, p=p: closed_after(port, s, p))
               for k, (s, p) in cases.items()}
        for job in out.values():
            job["thread"].join(20)
    assert all("value" in v for v in out.values()), {k: v.get("error") for k, v in out.items()}
    res = {k: v["value"] for k, v in out.items()}
    for name, (seconds, _) in res.items():
        assert seconds < 4, (name, seconds)  # closed by the server, long before the sender ends
    assert res["idle"][1] == b"" and res["slow headers"][1] == b""
    assert b" 408 " in res["slow body"][1] and b"request_timeout" in res["slow body"][1]
    assert res["keep-alive idle"][1].startswith(b"HTTP/1.1 200")
