"""Tools in the web chat (jielong.serve.chat_tools through jielong.serve.chat_routes) over
real HTTP, on a tiny Qwen2-shaped model whose replies are planted: a reply that calls the
calculator streams its text without the <tool_call> block, a `tool` event with the call and
its exact result, then the answer; the stored reply keeps the call; the second step's prompt
carries the result back. Off by default (a planted call is then plain text); the step limit;
one admission ticket held across the steps and released; the output rail stopping a later
step; Stop during a real second step; the python sandbox never offered."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from conftest import serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine, Event  # noqa: E402
from jielong.safety.policy import load_policy  # noqa: E402
from jielong.safety.rails import Rails  # noqa: E402
from jielong.serve import chat_tools, streaming  # noqa: E402
from jielong.serve.admission import Admission  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.serve.store import Store  # noqa: E402

NAME = "tiny-qwen"
TOOLS = {"temperature": 0, "max_tokens": 12, "tools": True}
ASK = "(3 + 4) × 2¹⁰ 是多少？"
CALL = ('我來算一下。<tool_call>\n{"name": "calculator", "arguments": '
        '{"expression": "(3 + 4) * 2 ** 10"}}\n</tool_call>')


class Term:
    """A detector that calls `term` violence (jielong.safety.moderate's detector shape)."""

    term = None

    def detect(self, text: str) -> dict:
        return {"violence": (1.0, [self.term])} if self.term and self.term in text else {}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    model_dir = make_hf_dir(root, "qwen2")
    config = json.loads((model_dir / "config.json").read_text())  # room for the tools' listing
    (model_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    model, tok, gen = open_model(model_dir)
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=2).start()
    store = Store(root / "f.db")
    admission = Admission(engine, client_tokens=100_000)
    term = Term()
    app = create_app(engine, tok, NAME, gen, store=store, admission=admission)
    railed = create_app(engine, tok, NAME, gen, store=store,
                        rails=Rails(load_policy("default"), [term]))
    with serving(app) as url, serving(railed) as railed_url:
        yield SimpleNamespace(engine=engine, tok=tok, store=store, admission=admission, term=term,
                              api=url + "/api", railed_api=railed_url + "/api")
    engine.close()
    store.close()


@pytest.fixture
def planted(monkeypatch):
    """The engine's replies become the planted texts, one per step (streamed 3 characters
    at a time, through the output rail); once they run out, the real engine writes. Each
    step's prompt (decoded) and the tickets held while it runs are kept."""
    seen = SimpleNamespace(prompts=[], held=[])
    real = streaming.Batch.events

    def plant(*texts: str):
        left = list(texts)

        async def events(self):
            seen.prompts.append(self.reqs[0].prompt)
            seen.held.append(len(self.ticket.admission.active) if self.ticket else None)
            if not left:
                async for x in real(self):
                    yield x
                return
            text = left.pop(0)
            self.cancel()
            for r in self.reqs:
                chunks = [text[i:i + 3] for i in range(0, len(text), 3)]
                for n, chunk in enumerate(chunks):
                    e = Event(r, chunk, [], None, "stop" if n == len(chunks) - 1 else None)
                    if self.rail is not None:
                        e = await self.rail.apply(self.index[r.id], e)
                        if e is None:
                            break
                    yield self.index[r.id], e
                    if e.finish_reason:
                        break
        monkeypatch.setattr(streaming.Batch, "events", events)
        return seen
    return plant


def chat(api: str, settings: dict = TOOLS) -> str:
    r = httpx.post(api + "/conversations", json={"settings": settings})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def events(api: str, cid: str, content: str = ASK) -> list[dict]:
    with httpx.stream("POST", f"{api}/conversations/{cid}/messages",
                      json={"parent_id": None, "content": content}, timeout=30) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def test_a_reply_calls_the_calculator_and_keeps_the_call(srv, planted):
    seen = planted(CALL, "答案是 7168。")
    cid = chat(srv.api)
    evs = events(srv.api, cid)
    kinds = [e["type"] for e in evs]
    assert kinds[:2] == ["user", "assistant"] and kinds[-1] == "done", kinds
    assert kinds.count("tool") == 1 and "tool_call" not in json.dumps(evs[:-1])
    tool = next(e for e in evs if e["type"] == "tool")
    shown = "".join(e["text"] for e in evs if e["type"] == "delta")
    before = "".join(e["text"] for e in evs[:kinds.index("tool")] if e["type"] == "delta")
    assert before == "我來算一下。" and shown == "我來算一下。答案是 7168。"
    want = {"name": "calculator", "arguments": '{"expression": "(3 + 4) * 2 ** 10"}',
            "result": "7168", "error": False, "step": 1}
    assert {k: tool["tool"][k] for k in want} == want and tool["tool"]["id"].startswith("call_")
    assert tool["message_id"] == evs[1]["message"]["id"]
    done = evs[-1]["message"]
    assert (done["content"], done["finish_reason"], done["tools"]) == \
        (shown, "stop", [tool["tool"]])
    q, a = httpx.get(f"{srv.api}/conversations/{cid}").json()["messages"]
    assert a == done and q["tools"] is None
    # the tools were in the first prompt, the result goes back in the second
    first, second = (srv.tok.decode(p) for p in seen.prompts)
    assert '"name": "calculator"' in first and "<tool_response>" not in first
    assert "<tool_response>\n7168\n</tool_response>" in second and ASK in second
    # one ticket for the whole reply, held through both steps, then released
    assert seen.held == [1, 1] and not srv.admission.active and not srv.admission.held


def test_tools_are_off_by_default_and_the_call_is_plain_text(srv, planted):
    seen = planted(CALL)
    evs = events(srv.api, chat(srv.api, {"temperature": 0, "max_tokens": 12}))
    assert "tool" not in [e["type"] for e in evs]
    done = evs[-1]["message"]
    assert done["content"] == CALL and done["tools"] is None
    assert "calculator" not in srv.tok.decode(seen.prompts[0])  # no tools rendered


def test_the_step_limit_ends_a_reply_that_keeps_calling(srv, planted):
    planted(*[CALL] * (chat_tools.MAX_STEPS + 1))
    evs = events(srv.api, chat(srv.api))
    kinds = [e["type"] for e in evs]
    assert kinds.count("tool") == chat_tools.MAX_STEPS and "notice" in kinds
    done = evs[-1]["message"]
    assert done["finish_reason"] == "length" and len(done["tools"]) == chat_tools.MAX_STEPS
    assert [t["step"] for t in done["tools"]] == list(range(1, chat_tools.MAX_STEPS + 1))
    assert done["content"] == "我來算一下。" * chat_tools.MAX_STEPS


def test_a_bad_call_goes_back_to_the_model_and_python_is_never_offered(srv, planted):
    bad = '<tool_call>\n{"name": "python", "arguments": {"code": "import os"}}\n</tool_call>'
    seen = planted(bad, "好的。")
    done = events(srv.api, chat(srv.api))[-1]["message"]
    (call,) = done["tools"]
    assert call["error"] is True and "there is no tool 'python'" in call["result"]
    assert done["content"] == "好的。"
    assert "calculator" in srv.tok.decode(seen.prompts[0])
    assert '"name": "python"' not in srv.tok.decode(seen.prompts[0])
    info = httpx.get(srv.api + "/info").json()
    assert info["tools"] == ["calculator", "date"]  # no --rag here: no search either


def test_the_output_rail_stops_a_later_step(srv, planted):
    srv.term.term = "炸彈"
    try:
        planted(CALL, "答案是 7168，做個炸彈吧。")
        cid = chat(srv.railed_api)
        evs = events(srv.railed_api, cid)
    finally:
        srv.term.term = None
    kinds = [e["type"] for e in evs]
    assert kinds[-2:] == ["safety", "done"] and "tool" in kinds, json.dumps(evs[2:], ensure_ascii=False)
    done = evs[-1]["message"]
    assert done["finish_reason"] == "content_filter" and "炸彈" not in done["content"]
    assert done["content"].startswith("我來算一下。") and len(done["tools"]) == 1
    assert "".join(e["text"] for e in evs if e["type"] == "delta") == done["content"]
    assert [d["rail"] for d in done["safety"]] == ["output"]


def test_stop_during_a_later_step_stores_the_reply_with_its_calls(srv, planted, monkeypatch):
    decode = srv.engine._decode

    def slow():
        time.sleep(0.02)
        decode()
    monkeypatch.setattr(srv.engine, "_decode", slow)
    monkeypatch.setattr(srv.engine, "stop_ids", set())
    planted(CALL)  # then the real engine writes the second step, slowly
    cid = chat(srv.api, {**TOOLS, "temperature": 1.0, "max_tokens": 300})
    got = []
    with httpx.stream("POST", f"{srv.api}/conversations/{cid}/messages",
                      json={"parent_id": None, "content": ASK}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                after = [e["type"] for e in got[[e["type"] for e in got].index("tool"):]] \
                    if any(e["type"] == "tool" for e in got) else []
                if after.count("delta") == 2:
                    break  # the Stop button
    mid = got[1]["message"]["id"]
    deadline = time.time() + 10
    while time.time() < deadline:
        m = srv.store.message(mid)
        if m["finish_reason"]:
            break
        time.sleep(0.05)
    assert m["finish_reason"] == "stopped" and m["tools"][0]["result"] == "7168"
    assert m["content"].startswith("我來算一下。")
    assert srv.engine.stats()["running"] == 0
    deadline = time.time() + 5
    while srv.admission.active and time.time() < deadline:
        time.sleep(0.02)
    assert not srv.admission.active
