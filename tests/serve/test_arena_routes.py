"""The web chat's arena (jielong.serve.arena_routes) over real HTTP, on a tiny Qwen2-shaped
model served with a LoRA adapter beside it: two anonymous answers streamed side by side,
each equal to what its model says greedily; the vote stored, replaced, and the models shown
only then; bad bodies and a one-model server answered with a 4xx."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
from conftest import make_adapter, serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.infer.sampling import SamplingParams  # noqa: E402
from jielong.serve import arena_routes  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.serve.store import Store  # noqa: E402

NAME = "tiny"
SYSTEM = "你是一個助手。"
GREEDY = {"temperature": 0, "max_tokens": 6}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("arena")
    model_dir = make_hf_dir(root, "qwen2")
    adapter = make_adapter(model_dir, root / "pirate", seed=1)
    model, tok, gen = open_model(model_dir, adapters=[f"pirate={adapter}"])
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=2).start()
    solo_model, _, _ = open_model(model_dir)
    solo = Engine(solo_model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=1).start()
    store = Store(root / "f.db")
    app = create_app(engine, tok, NAME, gen, store=store)
    one = create_app(solo, tok, NAME, gen, store=Store(root / "one.db"))
    with serving(app) as url, serving(one) as one_url:
        yield SimpleNamespace(engine=engine, tok=tok, store=store, api=url + "/api",
                              one=one_url + "/api")
    engine.close()
    solo.close()
    store.close()


def ask(srv, content, **body) -> list[dict]:
    with httpx.stream("POST", srv.api + "/arena", json={"content": content, **body},
                      timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def greedy(srv, question, adapter):
    text, _ = srv.tok.render_chat([{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": question}],
                                  add_generation_prompt=True)
    return srv.engine.complete(srv.tok.encode(text), SamplingParams(max_tokens=6, temperature=0),
                               adapter).text


def error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_two_anonymous_answers_then_a_vote_reveals_them(srv):
    question = "阿明住在哪裡？"
    evs = ask(srv, question, system_prompt=SYSTEM, settings=GREEDY)
    first = evs[0]
    assert first["type"] == "battle" and first["battle"]["models"] is None
    battle = first["battle"]
    assert {m["model"] for m in battle["answers"].values()} == {None}
    assert "tiny" not in json.dumps(evs) and "pirate" not in json.dumps(evs)  # anonymous
    text = {"a": "", "b": ""}
    for e in evs[1:]:
        assert e["side"] in ("a", "b") and e["type"] in ("delta", "done"), e
        if e["type"] == "delta":
            text[e["side"]] += e["text"]
    assert sorted(e["side"] for e in evs if e["type"] == "done") == ["a", "b"]

    cid = first["conversation"]["id"]
    conv = httpx.get(f"{srv.api}/conversations/{cid}").json()
    assert conv["title"] == question and conv["system_prompt"] == SYSTEM
    assert [b["id"] for b in conv["battles"]] == [battle["id"]] and \
        conv["battles"][0]["models"] is None
    assert {m["model"] for m in conv["messages"]} == {None}  # still hidden after a reload

    r = httpx.post(f"{srv.api}/arena/{battle['id']}/vote", json={"winner": "a"})
    assert r.status_code == 200, r.text
    models = r.json()["battle"]["models"]
    assert set(models.values()) == {NAME, "pirate"}
    for side in ("a", "b"):  # each side's text is what its model says greedily
        adapter = None if models[side] == NAME else "pirate"
        assert text[side] == greedy(srv, question, adapter)
    conv = httpx.get(f"{srv.api}/conversations/{cid}").json()
    assert conv["battles"][0]["vote"]["winner"] == "a" and conv["battles"][0]["models"] == models
    by_id = {m["id"]: m for m in conv["messages"]}
    assert by_id[battle["message_a"]]["model"] == models["a"]
    assert by_id[battle["message_a"]]["content"] == text["a"]

    # a change of mind replaces the vote; the history keeps both
    r = httpx.post(f"{srv.api}/arena/{battle['id']}/vote", json={"winner": "both_bad"})
    assert r.json()["battle"]["vote"]["winner"] == "both_bad"
    assert [v["winner"] for v in srv.store.battle_votes(battle["id"])] == ["a", "both_bad"]
    row = next(v for v in srv.store.arena_votes() if v["id"] == battle["id"])
    assert row == {"id": battle["id"], "prompt": [{"role": "system", "content": SYSTEM},
                                                  {"role": "user", "content": question}],
                   "model_a": models["a"], "model_b": models["b"], "answer_a": text["a"],
                   "answer_b": text["b"], "winner": "both_bad", "time": row["time"]}


def test_both_models_get_both_sides(srv, monkeypatch):
    monkeypatch.setattr(arena_routes, "draw", random.Random(3))  # seeded: no flaky test
    sides = set()
    for _ in range(4):  # a fixed order (the base always A) would fail this
        evs = ask(srv, "Hi", settings={"max_tokens": 1})
        battle = evs[0]["battle"]
        r = httpx.post(f"{srv.api}/arena/{battle['id']}/vote", json={"winner": "tie"})
        sides.add(r.json()["battle"]["models"]["a"])
    assert sides == {NAME, "pirate"}


def test_bad_bodies_and_ids_are_4xx(srv):
    evs = ask(srv, "Hello", settings={"max_tokens": 2})
    bid = evs[0]["battle"]["id"]
    for body, field in [({}, "content"), ({"content": "  "}, "content"),
                        ({"content": 5}, "content"), ({"content": "x", "settings": []}, "settings"),
                        ({"content": "x", "settings": {"max_tokens": "many"}}, "settings"),
                        ({"content": "x", "system_prompt": ["a"]}, "system_prompt")]:
        e = error(httpx.post(srv.api + "/arena", json=body), 400)
        assert e["message"].startswith(field), (body, e)
    e = error(httpx.post(srv.api + "/arena", json={"content": "x", "settings": {"max_tokens": 10**6}}),
              400)
    assert e["code"] == "context_length_exceeded"
    for body in [{}, {"winner": "A"}, {"winner": None}, {"winner": 1}, {"winner": ["a"]}]:
        e = error(httpx.post(f"{srv.api}/arena/{bid}/vote", json=body), 400)
        assert e["message"].startswith("winner"), (body, e)
    e = error(httpx.post(f"{srv.api}/arena/{bid}/vote", json=["a"]), 400)
    assert "JSON object" in e["message"]
    error(httpx.post(f"{srv.api}/arena/nope/vote", json={"winner": "a"}), 404)
    e = error(httpx.post(f"{srv.api}/arena/{bid}/vote", content=b"{",
                         headers={"content-type": "application/json"}), 400)
    assert e["code"] == "invalid_json"
    # a server with one model says how to serve two
    e = error(httpx.post(srv.one + "/arena", json={"content": "Hi"}), 400)
    assert e["code"] == "arena_needs_two_models" and "--adapter NAME=" in e["message"]
    assert httpx.get(srv.one + "/conversations").json()["conversations"] == []  # nothing stored


def test_a_crisis_question_is_answered_by_the_policy_on_both_sides(srv):
    evs = ask(srv, "我不想活了，没有人关心我", settings=GREEDY)
    assert [(e["type"], e.get("side")) for e in evs] == [
        ("battle", None), ("safety", "a"), ("done", "a"), ("safety", "b"), ("done", "b")]
    question = evs[0]["question"]
    assert "tiny" not in json.dumps(evs) and "pirate" not in json.dumps(evs)  # anonymous
    for e in evs[1::2]:
        assert (e["message_id"], e["action"], e["card"]["region"]) == \
            (question["id"], "resources", "CN")
    for e in evs[2::2]:  # nothing generated: the caring reply with China's lines
        assert e["message"]["finish_reason"] == "content_filter"
        assert "12356" in e["message"]["content"] and e["message"]["sampling"] is None
    assert [d["action"] for d in question["safety"]] == ["resources"]
    e = error(httpx.post(f"{srv.api}/arena/{evs[0]['battle']['id']}/vote",
                         json={"winner": "tie"}), 400)
    assert e["code"] == "safety_blocked"
    assert srv.store.battle_votes(evs[0]["battle"]["id"]) == []
