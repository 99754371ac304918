"""The web chat's /api routes (jielong.serve.chat_routes) over real HTTP, on a tiny Qwen2-shaped
model: conversations, streamed replies that match the engine's greedy output, regenerating
and editing as branches, ratings, Stop (a closed stream stores the partial reply), errors."""

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
from jielong.infer.engine import Engine  # noqa: E402
from jielong.infer.sampling import SamplingParams  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.serve.store import Store  # noqa: E402

NAME = "tiny-qwen"
KEY = "sk-test-chat"
SYSTEM = "You are a helpful assistant."
Q1 = "What is the capital of France?"
GREEDY = {"temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    model, tok, gen = open_model(make_hf_dir(root, "qwen2"))
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=2).start()
    store = Store(root / "f.db")
    app = create_app(engine, tok, NAME, gen, store=store)
    keyed = create_app(engine, tok, NAME, gen, api_keys=[KEY], store=store)
    bare = create_app(engine, tok, NAME, gen)
    with serving(app) as url, serving(keyed) as keyed_url, serving(bare) as bare_url:
        yield SimpleNamespace(engine=engine, tok=tok, gen=gen, store=store, url=url,
                              api=url + "/api", keyed_url=keyed_url, bare_url=bare_url)
    engine.close()
    store.close()


def greedy(srv, messages, max_tokens=12):
    """What the engine says greedily after `messages` (the conversation's system prompt first)."""
    text, _ = srv.tok.render_chat([{"role": "system", "content": SYSTEM}, *messages],
                                  add_generation_prompt=True)
    return srv.engine.complete(srv.tok.encode(text),
                               SamplingParams(max_tokens=max_tokens, temperature=0))


def events(srv, path, body=None) -> list[dict]:
    with httpx.stream("POST", srv.api + path, json=body, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def streamed(evs) -> str:
    """The reply's text, after checking the events' order: deltas, then done."""
    kinds = [e["type"] for e in evs]
    start = kinds.index("assistant") + 1
    assert kinds[start:-1] == ["delta"] * (len(kinds) - start - 1) and kinds[-1] == "done", kinds
    return "".join(e["text"] for e in evs[start:-1])


def new_chat(srv, **body) -> dict:
    r = httpx.post(srv.api + "/conversations",
                   json={"system_prompt": SYSTEM, "settings": GREEDY, **body})
    assert r.status_code == 200, r.text
    return r.json()


def error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_info(srv):
    info = httpx.get(srv.api + "/info").json()
    assert info == {"model": NAME, "models": [NAME],
                    "defaults": {"temperature": srv.gen["temperature"], "top_p": srv.gen["top_p"],
                                 "max_tokens": 128},
                    "reasons": {"up": ["correct", "helpful", "well written"],
                                "down": ["wrong", "wrong script (繁/简)", "not helpful", "unsafe",
                                         "too long"]},
                    "hard_delete": False, "tools": ["calculator", "date"]}


def test_a_message_streams_the_greedy_reply_and_is_stored(srv):
    c = new_chat(srv)
    assert (c["title"], c["system_prompt"], c["settings"], c["messages"]) == \
        ("", SYSTEM, {"temperature": 0, "max_tokens": 12}, [])
    evs = events(srv, f"/conversations/{c['id']}/messages", {"parent_id": None, "content": Q1})
    assert [e["type"] for e in evs[:2]] == ["user", "assistant"]
    u, a, done = evs[0]["message"], evs[1]["message"], evs[-1]["message"]
    assert (u["role"], u["content"], u["parent_id"], u["origin"], u["model"]) == \
        ("user", Q1, None, "new", None)
    assert (a["role"], a["content"], a["parent_id"], a["model"], a["finish_reason"]) == \
        ("assistant", "", u["id"], NAME, None)
    want = greedy(srv, [{"role": "user", "content": Q1}])
    assert want.text, "the fixture model should say something"
    assert streamed(evs) == done["content"] == want.text
    assert (done["id"], done["finish_reason"]) == (a["id"], want.finish_reason)
    assert done["sampling"]["temperature"] == 0 and done["sampling"]["max_tokens"] == 12

    got = httpx.get(f"{srv.api}/conversations/{c['id']}").json()
    assert got["title"] == Q1  # named after its first message
    assert [m["id"] for m in got["messages"]] == [u["id"], a["id"]]
    assert got["messages"][1] == done
    assert got["messages"][0]["rating"] is None
    listed = httpx.get(srv.api + "/conversations").json()["conversations"]
    assert listed[0] == {k: got[k] for k in ("id", "title", "updated", "created")}


def test_a_chat_that_outgrows_the_context_keeps_answering_with_a_notice(srv):
    """512 tokens of context: long questions soon fill it, and then each reply reads the
    conversation without its oldest turns (the system prompt kept), and says so."""
    c = new_chat(srv)
    question = "Please tell me about the river and the cat that sat on the mat near it. " * 4
    parent, history, notices = None, [], []
    for turn in range(8):
        q = f"{turn}. {question}"
        evs = events(srv, f"/conversations/{c['id']}/messages",
                     {"parent_id": parent, "content": q})
        kinds = [e["type"] for e in evs]
        assert kinds[-1] == "done", evs[-1]
        history += [{"role": "user", "content": q}]
        notice = [e for e in evs if e["type"] == "notice"]
        dropped = notice[0]["dropped"] if notice else 0
        if notice:
            assert kinds.index("notice") == 1  # after the user message, before the reply
            assert "512-token context" in notice[0]["message"] and \
                f"its {dropped} oldest messages; the system prompt stays" in notice[0]["message"]
            notices.append(turn)
        # the reply is the greedy one to the system prompt and the turns kept
        assert evs[-1]["message"]["content"] == greedy(srv, history[dropped:]).text, turn
        parent = evs[-1]["message"]["id"]
        history += [{"role": "assistant", "content": evs[-1]["message"]["content"]}]
    assert notices and notices[-1] == 7 and notices[0] > 0
    stored = httpx.get(f"{srv.api}/conversations/{c['id']}").json()["messages"]
    assert len(stored) == 16  # the store keeps the whole conversation


def test_regenerate_edit_second_turn_rate_rename_delete(srv):
    c = new_chat(srv)
    cid = c["id"]
    first = events(srv, f"/conversations/{cid}/messages", {"parent_id": None, "content": Q1})
    u1, a1 = first[0]["message"], first[-1]["message"]

    regen = events(srv, f"/messages/{a1['id']}/regenerate", {"settings": {"temperature": 0}})
    assert regen[0]["type"] == "assistant"  # no user event
    r1 = regen[-1]["message"]
    assert (r1["parent_id"], r1["origin"], r1["content"]) == (u1["id"], "regenerate", a1["content"])
    assert r1["edited_from"] == a1["id"]  # the reply it replaces, for the implicit feedback

    q_edit = "What's the capital of France? One word."
    edited = events(srv, f"/messages/{u1['id']}/edit", {"content": q_edit})
    u1e = edited[0]["message"]
    assert (u1e["parent_id"], u1e["origin"], u1e["edited_from"], u1e["content"]) == \
        (None, "edit", u1["id"], q_edit)
    a1e = edited[-1]["message"]
    assert a1e["parent_id"] == u1e["id"] and a1e["origin"] == "new"
    assert streamed(edited) == a1e["content"] == greedy(srv, [{"role": "user",
                                                                "content": q_edit}]).text

    requests = srv.engine.stats()["requests"]
    r = httpx.post(f"{srv.api}/messages/{a1['id']}/edit", json={"content": "Paris."})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    fixed = r.json()["message"]
    assert (fixed["parent_id"], fixed["origin"], fixed["edited_from"], fixed["content"],
            fixed["role"], fixed["model"]) == (u1["id"], "edit", a1["id"], "Paris.", "assistant",
                                                NAME)
    assert srv.engine.stats()["requests"] == requests  # no generation

    second = events(srv, f"/conversations/{cid}/messages",
                    {"parent_id": fixed["id"], "content": "And Germany?", "settings":
                     {"max_tokens": 6}})
    u2, a2 = second[0]["message"], second[-1]["message"]
    assert u2["parent_id"] == fixed["id"] and a2["parent_id"] == u2["id"]
    branch = [{"role": "user", "content": Q1}, {"role": "assistant", "content": "Paris."},
              {"role": "user", "content": "And Germany?"}]
    assert a2["content"] == greedy(srv, branch, 6).text and a2["sampling"]["max_tokens"] == 6

    rating = httpx.post(f"{srv.api}/messages/{fixed['id']}/rating",
                        json={"value": 1, "reasons": ["correct", "well written"],
                              "comment": "就是巴黎"}).json()["rating"]
    assert (rating["value"], rating["reasons"], rating["comment"]) == \
        (1, ["correct", "well written"], "就是巴黎")
    httpx.post(f"{srv.api}/messages/{a1['id']}/rating", json={"value": 1})
    httpx.post(f"{srv.api}/messages/{a1['id']}/rating",
               json={"value": -1, "reasons": ["wrong script (繁/简)"]})

    got = httpx.get(f"{srv.api}/conversations/{cid}").json()
    ids = [m["id"] for m in got["messages"]]
    assert ids == [u1["id"], a1["id"], r1["id"], u1e["id"], a1e["id"], fixed["id"], u2["id"],
                   a2["id"]]
    by_id = {m["id"]: m for m in got["messages"]}
    assert by_id[fixed["id"]]["rating"] == {k: rating[k] for k in
                                            ("value", "reasons", "comment", "created")}
    assert by_id[a1["id"]]["rating"]["value"] == -1  # the latest rating is current
    assert [r["value"] for r in srv.store.ratings(a1["id"])] == [1, -1]
    assert by_id[r1["id"]]["rating"] is None
    assert set(got["messages"][0]) >= {"id", "parent_id", "role", "content", "model", "origin",
                                       "edited_from", "finish_reason", "created", "rating"}

    r = httpx.patch(f"{srv.api}/conversations/{cid}",
                    json={"title": "France", "settings": {"temperature": 0.5}})
    assert (r.json()["title"], r.json()["settings"], r.json()["system_prompt"]) == \
        ("France", {"temperature": 0.5}, SYSTEM)
    assert len(r.json()["messages"]) == 8
    listed = httpx.get(srv.api + "/conversations").json()["conversations"]
    assert listed[0]["id"] == cid and listed[0]["title"] == "France"
    assert httpx.delete(f"{srv.api}/conversations/{cid}").json() == {"deleted": True}
    assert cid not in [c["id"] for c in httpx.get(srv.api + "/conversations").json()
                       ["conversations"]]
    assert error(httpx.get(f"{srv.api}/conversations/{cid}"), 404)["code"] == "not_found"
    error(httpx.post(f"{srv.api}/messages/{a1['id']}/rating", json={"value": 1}), 404)


def _slow(srv, monkeypatch):
    """Each decode step takes ≥ 20 ms and nothing ends a reply but max_tokens, so a reply is
    surely still running when its client leaves."""
    decode = srv.engine._decode

    def slow():
        time.sleep(0.02)
        decode()
    monkeypatch.setattr(srv.engine, "_decode", slow)
    monkeypatch.setattr(srv.engine, "stop_ids", set())


def _reply_when_finished(srv, cid, mid, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = next(m for m in httpx.get(f"{srv.api}/conversations/{cid}").json()["messages"]
                 if m["id"] == mid)
        if m["finish_reason"] is not None:
            return m
        time.sleep(0.05)
    raise AssertionError(f"the reply was not stored: {m}")


def test_stop_stores_the_partial_reply(srv, monkeypatch):
    _slow(srv, monkeypatch)
    c = new_chat(srv, settings={"temperature": 1.0, "max_tokens": 400})
    cancelled = srv.engine.by_reason.get("cancelled", 0)
    got = []
    with httpx.stream("POST", f"{srv.api}/conversations/{c['id']}/messages",
                      json={"parent_id": None, "content": Q1}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                if sum(e["type"] == "delta" for e in got) == 3:
                    break  # the Stop button: the client closes the stream
    mid = got[1]["message"]["id"]
    m = _reply_when_finished(srv, c["id"], mid)
    shown = "".join(e["text"] for e in got if e["type"] == "delta")
    assert m["finish_reason"] == "stopped"
    assert m["content"].startswith(shown) and len(m["content"]) < 400 * 8
    assert srv.engine.by_reason.get("cancelled", 0) == cancelled + 1
    assert srv.engine.stats()["running"] == 0


def test_an_engine_failure_is_an_error_event_and_stored(srv, monkeypatch):
    def broken():
        raise RuntimeError("boom")
    monkeypatch.setattr(srv.engine, "_decode", broken)
    c = new_chat(srv)
    evs = events(srv, f"/conversations/{c['id']}/messages", {"parent_id": None, "content": Q1})
    assert evs[-1]["type"] == "error"
    assert evs[-1]["error"]["code"] == "engine_error" and "boom" in evs[-1]["error"]["message"]
    m = _reply_when_finished(srv, c["id"], evs[1]["message"]["id"])
    assert m["finish_reason"] == "error"


def test_errors_are_openai_json(srv):
    api = srv.api
    for r in (httpx.get(f"{api}/conversations/nope"),
              httpx.patch(f"{api}/conversations/nope", json={"title": "x"}),
              httpx.delete(f"{api}/conversations/nope"),
              httpx.post(f"{api}/conversations/nope/messages", json={"content": "hi"}),
              httpx.post(f"{api}/messages/nope/regenerate", json={}),
              httpx.post(f"{api}/messages/nope/edit", json={"content": "x"}),
              httpx.post(f"{api}/messages/nope/rating", json={"value": 1})):
        e = error(r, 404)
        assert "nope" in e["message"] and e["code"] == "not_found"

    c = new_chat(srv)
    cid = c["id"]
    evs = events(srv, f"/conversations/{cid}/messages", {"content": Q1})  # parent_id: null
    u, a = evs[0]["message"], evs[-1]["message"]
    e = error(httpx.post(f"{api}/conversations/{cid}/messages",
                         json={"parent_id": u["id"], "content": "x"}), 400)
    assert e["param"] == "parent_id" and "user message" in e["message"]
    error(httpx.post(f"{api}/conversations/{cid}/messages",
                     json={"parent_id": "nope", "content": "x"}), 404)
    other = new_chat(srv)["id"]
    e = error(httpx.post(f"{api}/conversations/{other}/messages",
                         json={"parent_id": a["id"], "content": "x"}), 400)
    assert "another conversation" in e["message"]
    e = error(httpx.post(f"{api}/conversations/{cid}/messages", json={"content": "  "}), 400)
    assert e["message"] == "content: must not be empty" and e["param"] == "content"
    e = error(httpx.post(f"{api}/conversations/{cid}/messages", json={"parent_id": None}), 400)
    assert e["message"] == "content: this field is required"
    e = error(httpx.post(f"{api}/messages/{u['id']}/regenerate"), 400)
    assert "user message" in e["message"]
    e = error(httpx.post(f"{api}/messages/{u['id']}/rating", json={"value": 1}), 400)
    assert "only replies are rated" in e["message"]
    e = error(httpx.post(f"{api}/messages/{a['id']}/rating", json={"value": 5}), 400)
    assert "1 (👍), -1 (👎) or 0" in e["message"]
    e = error(httpx.post(f"{api}/messages/{a['id']}/rating", json={"reasons": []}), 400)
    assert e["param"] == "value"
    e = error(httpx.post(f"{api}/conversations/{cid}/messages",
                         json={"parent_id": a["id"], "content": "x", "model": "gpt-9"}), 404)
    assert e["code"] == "model_not_found"

    long = "The cat sat on the mat near the river. " * 200
    e = error(httpx.post(f"{api}/conversations/{cid}/messages",
                         json={"parent_id": a["id"], "content": long}), 400)
    assert e["code"] == "context_length_exceeded" and "context is 512 tokens" in e["message"]
    e = error(httpx.post(f"{api}/messages/{a['id']}/regenerate",
                         json={"settings": {"max_tokens": 5000}}), 400)
    assert e["code"] == "context_length_exceeded" and e["param"] == "max_tokens"
    e = error(httpx.post(f"{api}/messages/{a['id']}/regenerate",
                         json={"settings": {"temperature": 500}}), 400)
    assert e["param"] == "temperature"
    assert len(httpx.get(f"{api}/conversations/{cid}").json()["messages"]) == 2  # none stored

    error(httpx.get(srv.bare_url + "/api/info"), 404)  # no store: no /api
    e = error(httpx.get(srv.keyed_url + "/api/conversations"), 401)
    assert e["code"] == "invalid_api_key"
    r = httpx.get(srv.keyed_url + "/api/conversations", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and "conversations" in r.json()


def test_a_conversation_without_a_body_and_a_bare_regenerate(srv):
    r = httpx.post(srv.api + "/conversations")
    assert r.status_code == 200, r.text
    c = r.json()
    assert (c["title"], c["system_prompt"], c["settings"]) == ("", None, {})
    httpx.patch(f"{srv.api}/conversations/{c['id']}",
                json={"system_prompt": SYSTEM, "settings": GREEDY})
    first = events(srv, f"/conversations/{c['id']}/messages", {"content": Q1})
    again = events(srv, f"/messages/{first[-1]['message']['id']}/regenerate")  # no body
    assert again[-1]["message"]["content"] == first[-1]["message"]["content"]


def test_serve_keeps_its_database_beside_the_model_and_fails_fast_on_a_bad_one(tmp_path,
                                                                                 monkeypatch):
    import socket

    from jielong.cli import run
    from jielong.errors import UserError
    from jielong.serve.command import open_store

    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    with open_store(None, str(model)) as s:
        assert s.file == tmp_path / "run" / "feedback.db"
    monkeypatch.chdir(tmp_path)
    with open_store(None, "Qwen/Qwen2.5-0.5B-Instruct") as s:  # a hub id
        assert s.file.resolve() == tmp_path / "runs" / "serve" / "feedback.db" and s.file.exists()
    with open_store(str(tmp_path / "mine.db"), str(model)) as s:
        assert s.file == tmp_path / "mine.db"

    junk = tmp_path / "junk.db"
    junk.write_text("not a database\n" * 50)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError, match="junk.db: not a readable feedback database"):
        run(["serve", "--model", str(model), "--db", str(junk), "--port", str(port)])
