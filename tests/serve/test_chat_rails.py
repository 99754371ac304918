"""The safety rails in the web chat (jielong.serve.chat_routes) over real HTTP, on a tiny
Qwen2-shaped model: a self-harm message in 繁體, 简体 and English is answered with the region's
crisis lines (no generation, finish_reason content_filter, a `safety` event with the card,
the decision kept with the user message), also on regenerate and edit; a continuation the
output rail stops (a detector planted on a term of the model's own greedy reply) is stored
without it, ending in the policy's message; a hard negative generates as usual; a phone
number is stored and read redacted; a failing rail answers rather than 500."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from conftest import serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.infer.sampling import SamplingParams  # noqa: E402
from jielong.safety.moderate import default_detectors  # noqa: E402
from jielong.safety.policy import load_policy  # noqa: E402
from jielong.safety.rails import Rails  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.serve.store import Store  # noqa: E402

NAME = "tiny-qwen"
SYSTEM = "You are a helpful assistant."
GREEDY = {"temperature": 0, "max_tokens": 16}
ASK = "請問台北有什麼好玩的地方？"  # the question whose greedy reply the planted term is from


class Planted:
    """A detector that calls `term` violence (jielong.safety.moderate's detector shape)."""

    term = None

    def detect(self, text: str) -> dict:
        return {"violence": (1.0, [self.term])} if self.term and self.term in text else {}


class Broken:
    def detect(self, text: str) -> dict:
        raise RuntimeError("the guard is out of memory")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("rails")
    model, tok, gen = open_model(make_hf_dir(root, "qwen2"))
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=2).start()
    store = Store(root / "f.db")
    planted = Planted()
    policy = load_policy("default")
    apps = {"default": create_app(engine, tok, NAME, gen, store=store),
            "planted": create_app(engine, tok, NAME, gen, store=store,
                                  rails=Rails(policy, [*default_detectors(), planted])),
            "broken": create_app(engine, tok, NAME, gen, store=store,
                                 rails=Rails(policy, [Broken()]))}
    with serving(apps["default"]) as url, serving(apps["planted"]) as planted_url, \
            serving(apps["broken"]) as broken_url:
        yield SimpleNamespace(engine=engine, tok=tok, store=store, policy=policy, apps=apps,
                              planted=planted, api=url + "/api",
                              planted_api=planted_url + "/api", broken_api=broken_url + "/api")
    engine.close()
    store.close()


def greedy(srv, question: str) -> str:
    """What the model says greedily to `question` after the system prompt, no rails."""
    text, _ = srv.tok.render_chat([{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": question}],
                                  add_generation_prompt=True)
    params = SamplingParams(max_tokens=GREEDY["max_tokens"], temperature=0)
    return srv.engine.complete(srv.tok.encode(text), params).text


def chat(api: str) -> str:
    r = httpx.post(api + "/conversations", json={"system_prompt": SYSTEM, "settings": GREEDY})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def events(api: str, path: str, body: dict | None = None) -> list[dict]:
    with httpx.stream("POST", api + path, json=body, timeout=30) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def send(api: str, content: str) -> tuple[str, list[dict]]:
    cid = chat(api)
    return cid, events(api, f"/conversations/{cid}/messages",
                       {"parent_id": None, "content": content})


def stored(api: str, cid: str) -> list[dict]:
    r = httpx.get(f"{api}/conversations/{cid}")
    assert r.status_code == 200, r.text
    return r.json()["messages"]


def numbers(card: dict) -> list[str]:
    return [line["number"] for line in card["lines"]]


@pytest.mark.parametrize("message, region, line", [
    ("我不想活了，每天都好累", "TW", "1925"),
    ("我不想活了，没有人关心我", "CN", "12356"),
    ("I want to kill myself", "INTL", "https://findahelpline.com"),
])
def test_self_harm_is_answered_with_the_regions_crisis_lines(srv, message, region, line):
    cid, evs = send(srv.api, message)
    assert [e["type"] for e in evs] == ["user", "assistant", "safety", "done"]
    user, safety, done = evs[0]["message"], evs[2], evs[3]["message"]
    assert (safety["message_id"], safety["rail"], safety["category"], safety["action"]) == \
        (user["id"], "input", "self_harm", "resources")
    card = safety["card"]
    assert card["region"] == region and card["title"] and card["emergency"]
    assert line in numbers(card) + [x["url"] for x in card["lines"]]
    assert done["finish_reason"] == "content_filter" and done["model"] == NAME
    assert line in done["content"] and done["content"] == safety["reply"]
    assert done["sampling"] is None  # nothing was generated
    q, a = stored(srv.api, cid)
    assert (q["content"], a["content"], a["finish_reason"]) == \
        (message, done["content"], "content_filter")
    assert [(d["rail"], d["action"], d["card"]) for d in q["safety"]] == \
        [("input", "resources", card)]
    assert user["safety"] == q["safety"] and a["safety"] == []


def test_regenerate_and_edit_of_a_crisis_message_are_answered_the_same_way(srv):
    cid, evs = send(srv.api, "我不想活了")
    user, first = evs[0]["message"], evs[-1]["message"]
    again = events(srv.api, f"/messages/{first['id']}/regenerate")
    assert [e["type"] for e in again] == ["assistant", "safety", "done"]
    assert again[-1]["message"]["finish_reason"] == "content_filter"
    assert "1925" in again[-1]["message"]["content"]
    edited = events(srv.api, f"/messages/{user['id']}/edit", {"content": "我想自殺"})
    assert [e["type"] for e in edited] == ["user", "assistant", "safety", "done"]
    assert edited[2]["card"]["region"] == "TW" and edited[2]["message_id"] == edited[0]["message"]["id"]
    msgs = {m["id"]: m for m in stored(srv.api, cid)}
    assert len(msgs[user["id"]]["safety"]) == 1  # a regeneration does not count it twice
    assert msgs[again[-1]["message"]["id"]]["parent_id"] == user["id"]


def test_the_output_rail_stops_a_planted_continuation(srv):
    reply = greedy(srv, ASK)
    mid = len(reply) // 2
    term = next(reply[i:i + 2] for i in [*range(mid, len(reply) - 1), *range(mid)]
                if "\ufffd" not in reply[i:i + 2] and reply[i:i + 2].strip() == reply[i:i + 2]
                and reply[i:i + 2] not in ASK + SYSTEM)
    srv.planted.term = term
    try:
        cid, evs = send(srv.planted_api, ASK)
    finally:
        srv.planted.term = None
    refusal = srv.policy.message("violence", "zh-hant")  # the language of the question
    kinds = [e["type"] for e in evs]
    assert kinds[-2:] == ["safety", "done"] and kinds[:2] == ["user", "assistant"], kinds
    safety, done = evs[-2], evs[-1]["message"]
    assert (safety["rail"], safety["category"], safety["action"], safety["evidence"]) == \
        ("output", "violence", "refuse", [term])
    assert safety["message_id"] == done["id"]
    assert done["finish_reason"] == "content_filter"
    assert term not in done["content"] and done["content"].endswith(refusal)
    shown = done["content"][:-len(refusal)].rstrip("\n")
    assert reply.startswith(shown) and len(shown) < reply.index(term)
    assert "".join(e["text"] for e in evs if e["type"] == "delta") == done["content"]
    q, a = stored(srv.api, cid)
    assert q["safety"] == [] and a["content"] == done["content"]
    assert [(d["rail"], d["category"], d["action"]) for d in a["safety"]] == \
        [("output", "violence", "refuse")]
    assert term in srv.store.safety_events(source="chat", limit=1)[0]["text"]  # for review


def test_a_hard_negative_is_answered_by_the_model(srv):
    question = "乳癌的早期症狀有哪些？"
    cid, evs = send(srv.api, question)
    assert "safety" not in [e["type"] for e in evs]
    done = evs[-1]["message"]
    assert done["finish_reason"] in ("stop", "length") and done["content"] == greedy(srv, question)
    q, a = stored(srv.api, cid)
    assert q["safety"] == a["safety"] == [] and q["content"] == question


@pytest.mark.parametrize("said, kept", [
    ("我的電話是 0912-345-678，請回電", "我的電話是 <PHONE>，請回電"),
    ("我的电话是 0912345678", "我的电话是 <PHONE>"),
    ("Call me at 0912 345 678 please", "Call me at <PHONE> please"),
])
def test_a_phone_number_is_stored_and_read_redacted(srv, said, kept, monkeypatch):
    served = srv.apps["default"].state.served
    read, render = [], served.chat_prompt
    monkeypatch.setattr(served, "chat_prompt", lambda m, p, **kw: (read.append(m), render(m, p, **kw))[1])
    cid, evs = send(srv.api, said)
    assert evs[0]["message"]["content"] == kept
    done = evs[-1]["message"]
    assert done["finish_reason"] in ("stop", "length")
    assert read[-1][-1] == {"role": "user", "content": kept}  # the model read it redacted
    q, _ = stored(srv.api, cid)
    phone = re.search(r"0912[\d -]*\d", said).group()  # (not a bare "345": timestamps have digits)
    assert q["content"] == kept and phone not in json.dumps(q, ensure_ascii=False)
    assert [(d["category"], d["action"]) for d in q["safety"]] == [("private_data", "redact")]


def test_a_failing_rail_lets_the_chat_answer(srv):
    cid, evs = send(srv.broken_api, ASK)  # both rails raise: logged, the chat goes on
    done = evs[-1]
    assert done["type"] == "done" and done["message"]["finish_reason"] in ("stop", "length")
    assert done["message"]["content"] == greedy(srv, ASK)
    metrics = httpx.get(srv.broken_api.removesuffix("/api") + "/metrics").text
    assert 'jielong_safety_errors_total{rail="input"} 1.0' in metrics
    assert 'jielong_safety_errors_total{rail="output"} 1.0' in metrics
