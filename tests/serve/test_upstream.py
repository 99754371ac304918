"""`jielong serve --upstream URL` (jielong.serve.upstream) on loopback: a front server with no
model of its own in front of a second `jielong serve` on a tiny Qwen2-shaped model, spoken to
by the official `openai` client (streamed and not) — greedy replies equal the upstream's own,
the rails and --rag citations run in front, the web chat's send goes through, the fuzz has no
5xx and a small load has no error; and in front of a scripted stub upstream, every way an
upstream fails is a 4xx/502/503/504 in OpenAI's shape, never a 500."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import socket
import time
from types import SimpleNamespace

import pytest
from conftest import serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from test_serve_fuzz import fuzz_cases, is_openai_error  # noqa: E402
from test_v1_rails import Planted  # noqa: E402

from jielong.errors import UserError  # noqa: E402
from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.rag.index import build_index  # noqa: E402
from jielong.safety.policy import load_policy  # noqa: E402
from jielong.safety.rails import Rails  # noqa: E402
from jielong.serve import upstream as upstream_module  # noqa: E402
from jielong.serve.admission import Admission  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.serve.command import serve  # noqa: E402
from jielong.serve.documents import Library, parse_rag  # noqa: E402
from jielong.serve.store import Store  # noqa: E402
from jielong.serve.upstream import UpstreamEngine  # noqa: E402

NAME = "tiny"  # the fuzz's bodies name this model
GREEDY = {"temperature": 0, "max_tokens": 12}
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
DOCS = {"hant.md": "# 退貨政策\n\n本店商品在收到後七天內可以退貨，請保留發票。\n",
        "en.md": "# Shipping\n\nOrders ship from the Taipei warehouse within two business days.\n"}
PLANTED = "七天內可以退貨 [1]。"  # what the stub says: a reply that cites passage 1


def stub_app() -> FastAPI:
    """An OpenAI-compatible stub: the model a request names says how it answers."""
    app = FastAPI()
    models = ["stub", "e400", "e401", "e429", "e500", "e503", "broken", "notjson", "slow",
              "midway"]

    @app.get("/v1/models")
    async def listed():
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in models]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.asked = body
        model = body["model"]
        if model[0] == "e":
            status = int(model[1:])
            return JSONResponse({"error": {"message": f"planted {status}", "type": "x"}},
                                status_code=status,
                                headers={"Retry-After": "7"} if status in (429, 503) else None)

        def chunk(text=None, finish=None):
            delta = {"content": text} if text is not None else {}
            return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta,
                                                       "finish_reason": finish}]}) + "\n\n"

        async def events():
            if model == "slow":
                await asyncio.sleep(5)
            if model == "notjson":
                yield "data: {oops\n\n"
                return
            yield chunk(PLANTED)
            if model == "midway":
                yield 'data: {"error": {"message": "the GPU fell over"}}\n\n'
                return
            if model != "broken":  # broken: the stream ends with no finish_reason
                yield chunk(None, "stop")
                yield 'data: {"choices": [], "usage": {"prompt_tokens": 7, ' \
                      '"completion_tokens": 3, "total_tokens": 10}}\n\n'
                yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    build_index([root / "docs"], root / "index")
    model, tok, gen = open_model(make_hf_dir(root, "qwen2"))
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=4,
                    context=256).start()
    back = create_app(engine, tok, NAME, gen, rails=Rails(load_policy("off")))
    store = Store(root / "front.db")
    stub = stub_app()
    with serving(back) as back_url, serving(stub) as stub_url:
        front_engine = UpstreamEngine(back_url + "/v1", slots=8).start()
        stub_engine = UpstreamEngine(stub_url, model="stub").start()
        front = create_app(front_engine, None, NAME, store=store)
        stubbed = create_app(stub_engine, None, "stub", library=Library(
            parse_rag([f"docs={root / 'index'}"]), None))
        with serving(front) as url, serving(stubbed) as stub_front:
            def client(u):
                return openai.OpenAI(base_url=u + "/v1", api_key="unused", max_retries=0,
                                     timeout=30)
            yield SimpleNamespace(engine=engine, back=client(back_url), back_url=back_url,
                                  front=client(url), url=url,
                                  stub=client(stub_front), stub_url=stub_front, app=front,
                                  stub_direct=stub_url, stub_app=stub,
                                  store=store, front_engine=front_engine)
    engine.close()
    store.close()


# ------------------------------------------------------------------------------ generation


def test_chat_and_completions_equal_the_upstreams_own_streamed_or_not(up):
    want = up.back.chat.completions.create(model=NAME, messages=HELLO, **GREEDY)
    assert want.choices[0].message.content, "the fixture model should say something"
    got = up.front.chat.completions.create(model=NAME, messages=HELLO, **GREEDY)
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.choices[0].finish_reason == want.choices[0].finish_reason
    assert got.model == NAME and got.usage.model_dump() == want.usage.model_dump()

    chunks = list(up.front.chat.completions.create(
        model=NAME, messages=HELLO, stream=True, stream_options={"include_usage": True},
        **GREEDY))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        want.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == want.usage.completion_tokens

    two = up.front.chat.completions.create(model=NAME, messages=HELLO, n=2, seed=3,
                                           temperature=1.0, max_tokens=6)
    alone = [up.back.chat.completions.create(model=NAME, messages=HELLO, seed=3 + j,
                                             temperature=1.0, max_tokens=6) for j in (0, 1)]
    assert [c.message.content for c in two.choices] == [a.choices[0].message.content
                                                       for a in alone]  # choice j: seed + j

    text = up.back.completions.create(model=NAME, prompt="台北的天氣", **GREEDY)
    mine = up.front.completions.create(model=NAME, prompt="台北的天氣", **GREEDY)
    assert mine.choices[0].text == text.choices[0].text and mine.usage == text.usage

    emb = up.front.embeddings.create(model=NAME, input=["cat", "貓"])
    assert [d.embedding for d in emb.data] == \
        [d.embedding for d in up.back.embeddings.create(model=NAME, input=["cat", "貓"]).data]
    [card] = up.front.models.list().data
    assert card.id == NAME and up.front_engine.context == 256  # learnt from max_model_len


def test_the_upstreams_400_is_a_400_and_what_needs_token_ids_is_refused(up):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            up.front.chat.completions.create(model=NAME, messages=HELLO, max_tokens=1000,
                                             stream=stream)
        assert e.value.code == "context_length_exceeded" and "256" in str(e.value)
    for bad in ({"prompt": [1, 2, 3]}, {"prompt": "x", "logprobs": 2}):
        r = httpx.post(up.url + "/v1/completions", json={"model": NAME, **bad})
        assert r.status_code == 400 and r.json()["error"]["param"] in ("prompt", "logprobs")
    r = httpx.post(up.url + "/v1/chat/completions", json={"model": "nope", "messages": HELLO})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# ------------------------------------------------------------------------------ in front


def test_the_rails_run_in_front_of_the_upstream(up):
    before = up.engine.stats()["requests"]
    r = up.front.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "我想自杀，活着没有意义"}], **GREEDY)
    assert r.choices[0].finish_reason == "content_filter" and "12356" in r.choices[0].message.content
    assert up.engine.stats()["requests"] == before  # the upstream was never asked

    ask = [{"role": "user", "content": "你好，請介紹台灣"}]
    full = up.back.chat.completions.create(model=NAME, messages=ask, temperature=0,
                                           max_tokens=60).choices[0].message.content
    # 3 characters, 10 or more in, that the reply has not said before
    cut = next(p for p in range(10, len(full) - 3)
               if full.index(full[p:p + 3]) == p and "\ufffd" not in full[p:p + 3])
    term = full[cut:cut + 3]
    served = up.app.state.served
    served.rails = Rails(load_policy("default"), detectors=[Planted(term)])
    try:
        chunks = [c for c in up.front.chat.completions.create(
            model=NAME, messages=ask, temperature=0, max_tokens=60, stream=True) if c.choices]
    finally:
        served.rails = Rails(load_policy("default"))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    refusal = load_policy("default").message("violence", "zh-hant")  # the user's script
    shown = text.removesuffix(refusal).removesuffix("\n\n")
    assert text.endswith(refusal) and full.startswith(shown) and term not in shown


def test_rag_sources_and_citations_in_front_of_the_upstream(up):
    for stream in (False, True):  # the stub replies with a citation of passage 1
        q = [{"role": "user", "content": "退貨要幾天？"}]
        if stream:
            parts = list(up.stub.chat.completions.create(model="stub", messages=q, stream=True))
            last = next(c for c in parts if c.choices and c.choices[0].finish_reason)
            text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
            cites = last.model_extra["citations"]
        else:
            m = up.stub.chat.completions.create(model="stub", messages=q).choices[0].message
            text, cites = m.content, m.model_extra["citations"]
        assert text == PLANTED and [c["n"] for c in cites] == [1]
        assert cites[0]["source"].endswith("hant.md") and "七天內" in cites[0]["quote"]
        # the upstream was asked with the passage in the question, as quoted data
        asked = up.stub_app.state.asked
        assert asked["model"] == "stub" and asked["stream"] is True
        assert asked["messages"][-1]["role"] == "user"
        assert cites[0]["quote"] in asked["messages"][-1]["content"] and \
            "退貨要幾天？" in asked["messages"][-1]["content"]
        assert "temperature" not in asked  # left to the upstream's model, as not given


def test_the_web_chat_sends_through_the_upstream(up):
    conv = httpx.post(up.url + "/api/conversations",
                      json={"settings": {"temperature": 0, "max_tokens": 12}}).json()
    with httpx.stream("POST", f"{up.url}/api/conversations/{conv['id']}/messages",
                      json={"content": HELLO[0]["content"]}, timeout=30) as r:
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    assert [e["type"] for e in events][:2] == ["user", "assistant"]
    assert events[-1]["type"] == "done", events[-1]
    want = up.back.chat.completions.create(model=NAME, messages=HELLO, **GREEDY)
    reply = events[-1]["message"]
    assert reply["content"] == want.choices[0].message.content
    assert "".join(e["text"] for e in events if e["type"] == "delta") == reply["content"]
    assert up.store.message(reply["id"])["finish_reason"] == want.choices[0].finish_reason


# ------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("model, status, code", [
    ("e400", 400, None), ("e401", 502, "upstream_auth"), ("e429", 429, "rate_limit_exceeded"),
    ("e500", 502, "upstream_error"), ("e503", 503, "server_overloaded"),
    ("broken", 502, "upstream_error"), ("notjson", 502, "upstream_error"),
    ("midway", 502, "upstream_error")])
def test_every_upstream_failure_is_a_clear_status_never_a_500(up, model, status, code):
    body = {"model": model, "messages": HELLO, "rag": False}
    r = httpx.post(up.stub_url + "/v1/chat/completions", json=body)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    r = httpx.post(up.stub_url + "/v1/chat/completions", json={**body, "stream": True})
    if model in ("e400", "e401", "e429", "e500", "e503"):  # before the stream starts
        assert r.status_code == status and r.json()["error"]["code"] == code
        # a busy upstream's Retry-After reaches the client, which waits that long
        assert r.headers.get("retry-after") == ("7" if status in (429, 503) else None)
    else:  # after: an error event, then [DONE]
        assert r.status_code == 200 and f'"code": "{code}"' in r.text
        assert r.text.rstrip().endswith("data: [DONE]")


def test_an_upstream_that_is_down_or_slow_is_502_or_504(up, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(UserError, match="cannot reach the engine"):
        UpstreamEngine(f"http://127.0.0.1:{port}/v1").start()
    gone = UpstreamEngine(f"http://127.0.0.1:{port}/v1", model="x")  # it went away later
    with serving(create_app(gone, None, "x")) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"messages": HELLO})
    assert r.status_code == 502 and "cannot be reached" in r.json()["error"]["message"]
    monkeypatch.setattr(upstream_module, "READ_SECONDS", 0.3)  # the stub's "slow" waits 5 s
    with serving(create_app(UpstreamEngine(up.stub_direct, model="slow").start(), None,
                            "slow")) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"messages": HELLO}, timeout=10)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"


def test_serve_upstream_mistakes_are_one_line_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--upstream_key NOPE_KEY: no such environment"):
        serve(upstream="http://127.0.0.1:9/v1", upstream_key="NOPE_KEY", port=free_port(),
              db=str(tmp_path / "f.db"), safety="off")
    with pytest.raises(UserError, match="give the engine's base URL"):
        serve(upstream="localhost:8000", port=free_port(), db=str(tmp_path / "f.db"),
              safety="off")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ fuzz and load


def test_fuzz_through_the_upstream_has_no_5xx(up):
    c = httpx.post(up.url + "/api/conversations", json={"settings": {"max_tokens": 4}}).json()
    with httpx.stream("POST", f"{up.url}/api/conversations/{c['id']}/messages",
                      json={"content": "hi"}, timeout=30) as r:
        evs = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    uid, mid = evs[0]["message"]["id"], evs[-1]["message"]["id"]
    before = up.engine.stats()["requests"]
    conn = http.client.HTTPConnection("127.0.0.1", int(up.url.rsplit(":", 1)[1]), timeout=30)
    bad, ok = [], 0
    for method, path, body, headers in fuzz_cases(random.Random(19), c["id"], mid, uid, 120):
        conn.request(method, path, body=body or None, headers=headers)
        r = conn.getresponse()
        raw = r.read()
        ok += r.status == 200
        if r.status >= 500 or (r.status >= 400 and method != "HEAD"
                               and not is_openai_error(r.status, raw)):
            bad.append(f"{method} {path} {body[:100]!r} -> {r.status} {raw[:200]!r}")
    conn.close()
    assert not bad, "\n".join(bad[:10])
    # the valid bodies among them were answered, through the upstream
    assert ok >= 5 and up.engine.stats()["requests"] >= before + 5


def test_a_small_load_through_the_upstream_has_no_errors_and_equal_greedy_replies(up):
    questions = [f"{q} (#{i})" for i, q in enumerate(["台北有什麼好玩的？", "讲一个故事。",
                                                       "Write a haiku.", "How do I boil an egg?"])]

    async def ask(client, q: str) -> str:
        s = await client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": q}], stream=True, **GREEDY)
        return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])

    async def run(url: str, clients: int) -> list[str]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                    timeout=60)
        try:
            return await asyncio.gather(*(ask(client, questions[i % len(questions)])
                                          for i in range(clients)))
        finally:
            await client.close()

    alone = asyncio.run(run(up.back_url, len(questions)))
    loaded = asyncio.run(run(up.url, 16))
    assert loaded == [alone[i % len(questions)] for i in range(16)]


def test_admission_in_front_of_the_upstream(up):
    """The front's own limits hold for an upstream too: a request is admitted as its client
    (the ticket's client reaches UpstreamEngine.submit), one over the client's share is a 429
    with Retry-After before the upstream is asked, and the share is free again afterwards."""
    engine = UpstreamEngine(up.back_url + "/v1", slots=4).start()
    gate = Admission(engine, max_queue=8, max_request_tokens=10_000, client_tokens=400)
    with serving(create_app(engine, None, NAME, rails=Rails(load_policy("off")),
                            admission=gate)) as url:
        front = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        want = up.back.chat.completions.create(model=NAME, messages=HELLO, **GREEDY)
        got = front.chat.completions.create(model=NAME, messages=HELLO, **GREEDY)
        assert got.choices[0].message.content == want.choices[0].message.content
        asked = up.engine.stats()["requests"]
        gate.held["addr:127.0.0.1"] = 300  # as if this client had a request in flight
        with pytest.raises(openai.RateLimitError) as e:  # 300 + 200 + the prompt > 400
            front.chat.completions.create(model=NAME, messages=HELLO, max_tokens=200)
        assert e.value.response.headers.get("retry-after") and up.engine.stats()["requests"] == asked
        gate.held.clear()
        chunks = list(front.chat.completions.create(model=NAME, messages=HELLO, stream=True, **GREEDY))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            want.choices[0].message.content
        for _ in range(100):  # released with the last event
            if not any(gate.held.values()):
                break
            time.sleep(0.02)
        assert not any(gate.held.values())
    engine.close()
