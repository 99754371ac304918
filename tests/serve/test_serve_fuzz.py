"""The server's edges over real HTTP (jielong.serve.guard and jielong.serve.body): a seeded
fuzz of malformed and random bodies on every route with no 5xx and every error in OpenAI's
shape, all on one keep-alive connection that must survive it; the Host allowlist; cross-site
requests; JSON-only bodies; and API keys refused at start-up when empty or short."""

from __future__ import annotations

import copy
import http.client
import json
import random
import socket
import time
from types import SimpleNamespace

import pytest
from conftest import run_cli, serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from jielong.errors import UserError  # noqa: E402
from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.serve.command import api_keys  # noqa: E402
from jielong.serve.store import Store  # noqa: E402

NAME = "tiny"
SEED = 14
N_FUZZ = 400
FUZZ_SECONDS = 120  # a bound, not a target: on 2 cores the run takes a fraction of it


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    model, tok, gen = open_model(make_hf_dir(root, "qwen2"))
    # a short context keeps every reply the fuzz asks for short
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=4,
                    context=96).start()
    store = Store(root / "f.db")
    app = create_app(engine, tok, NAME, gen, store=store)
    extra = create_app(engine, tok, NAME, gen, store=store,
                       allowed_hosts=["127.0.0.1", "chat.example.com", "*.lan"])
    anyhost = create_app(engine, tok, NAME, gen, allowed_hosts=["*"])
    with serving(app) as url, serving(extra) as extra_url, serving(anyhost) as any_url:
        yield SimpleNamespace(engine=engine, store=store, url=url, extra_url=extra_url,
                              any_url=any_url)
    engine.close()
    store.close()


def is_openai_error(status: int, raw: bytes) -> bool:
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    return (isinstance(body, dict) and set(body) == {"error"}
            and set(body["error"]) == {"message", "type", "param", "code"}
            and isinstance(body["error"]["message"], str) and body["error"]["message"]
            and body["error"]["type"] == "invalid_request_error")


def error(r, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert is_openai_error(r.status_code, r.content), r.text
    return r.json()["error"]


# ------------------------------------------------------------------------------ the fuzz

ODD = [None, True, False, 0, 1, 2, -1, 10**30, -10**30, 1e308, -1e308, 0.5, "", "x", "tiny",
       "\ud800", "a\udfffb", "\x00", "龍" * 300, [], [[]], {}, {"a": {"b": {}}}, [1, "a", None],
       [10**20], [-5], [[1, 2], [3]], ["x"] * 10, {"role": "user"}, "https://x/" + "%" * 30]


def base_bodies(cid: str, mid: str, uid: str, bid: str = "none") -> list[tuple[str, str, dict]]:
    """(method, path, a valid body) for every route that takes a body."""
    sampling = {"max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.01,
                "presence_penalty": 0.1, "frequency_penalty": 0.1, "repetition_penalty": 1.1,
                "stop": ["\n"], "seed": 1, "ignore_eos": False, "logit_bias": None}
    return [
        ("POST", "/v1/chat/completions",
         {"model": NAME, "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hi 你好"}], **sampling,
          "n": 1, "stream": False, "logprobs": True, "top_logprobs": 2,
          "max_completion_tokens": 4, "stream_options": {"include_usage": True},
          "response_format": {"type": "text"}, "tools": None, "user": "me"}),
        ("POST", "/v1/completions",
         {"model": NAME, "prompt": "The cat", "echo": False, "logprobs": 1, "suffix": None,
          "n": 2, "stream": True, **sampling}),
        ("POST", "/v1/embeddings", {"model": NAME, "input": ["hello", "世界"],
                                    "encoding_format": "float", "dimensions": 64}),
        ("POST", "/api/conversations", {"title": "t", "system_prompt": "s",
                                        "settings": {"temperature": 0, "max_tokens": 4}}),
        ("PATCH", f"/api/conversations/{cid}", {"title": "renamed",
                                                 "settings": {"max_tokens": 4}}),
        ("POST", f"/api/conversations/{cid}/messages",
         {"parent_id": mid, "content": "more?", "settings": {"max_tokens": 4, "tools": False}}),
        ("POST", f"/api/messages/{mid}/regenerate", {"settings": {"max_tokens": 4}}),
        ("POST", f"/api/messages/{uid}/edit", {"content": "again", "settings": {"max_tokens": 4}}),
        ("POST", f"/api/messages/{mid}/rating", {"value": 1, "reasons": ["helpful"],
                                                 "comment": "ok"}),
        ("POST", f"/api/messages/{mid}/continue", {"prefix": "好", "settings": {"max_tokens": 4}}),
        ("POST", "/api/inspect/next", {"message_id": mid, "prefix": "", "k": 3}),
        ("POST", "/api/inspect/attention", {"text": "她很開心", "layer": 0, "token": "她"}),
        ("POST", "/api/arena", {"content": "Hi 你好", "system_prompt": "s",
                                "settings": {"temperature": 0, "max_tokens": 4}}),
        ("POST", f"/api/arena/{bid}/vote", {"winner": "a"}),
    ]


def paths_of(obj, prefix=()):
    """Every (path) into a JSON value's containers, for mutating one field."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) \
        else []
    for k, v in items:
        out.append((*prefix, k))
        out += paths_of(v, (*prefix, k))
    return out


def mutate(rng: random.Random, body: dict) -> dict:
    body = json.loads(json.dumps(body))
    for _ in range(rng.choice((1, 1, 2, 3))):
        paths = paths_of(body)
        if not paths:
            break
        path = rng.choice(paths)
        parent = body
        for k in path[:-1]:
            parent = parent[k]
        how = rng.random()
        # a copy of the odd value: mutating the shared one could make ODD contain itself
        if how < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        elif how < 0.25 and isinstance(parent, dict):
            parent["unknown_" + str(rng.randint(0, 9))] = copy.deepcopy(rng.choice(ODD))
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD))
    return body


def sweep_of(cid: str, mid: str, uid: str, bid: str = "none") -> list:
    return [(r, path) for r in base_bodies(cid, mid, uid, bid) for path in paths_of(r[2])]


def nested(rng: random.Random) -> bytes:
    depth = rng.choice((65, 200, 979, 980, 1500, 5000))
    open_, close = rng.choice((("[", "]"), ('{"a":', "}")))
    return (open_ * depth + "1" + close * depth).encode()


def fuzz_cases(rng: random.Random, cid: str, mid: str, uid: str, n: int, bid: str = "none"):
    """(method, path, body bytes, headers), `n` of them, every kind of malformed input."""
    routes = base_bodies(cid, mid, uid, bid)
    gets = ["/v1/models", f"/v1/models/{NAME}", "/v1/models/%ff%00", "/api/info",
            "/api/conversations", f"/api/conversations/{cid}", "/api/conversations/%00",
            "/health", "/metrics", "/", "/static/app.js", "/v1/nothing"]
    json_ct = {"Content-Type": "application/json"}
    # every field of every body gets a wrong value at least once (kinds 2-4 walk this list)
    sweep = sweep_of(cid, mid, uid, bid)
    swept = 0
    for i in range(n):
        method, path, base = rng.choice(routes)
        headers = dict(json_ct)
        kind = i % 12
        if kind == 0:  # random bytes
            body = rng.randbytes(rng.randint(0, 300))
        elif kind == 1:  # truncated JSON
            raw = json.dumps(mutate(rng, base)).encode()
            body = raw[:rng.randint(0, len(raw) - 1)]
        elif kind in (2, 3, 4):  # the next field in the sweep, set to an odd value
            (method, path, base), field = sweep[swept % len(sweep)]
            swept += 1
            obj = json.loads(json.dumps(base))
            parent = obj
            for k in field[:-1]:
                parent = parent[k]
            parent[field[-1]] = rng.choice(ODD)
            body = json.dumps(obj).encode()
        elif kind == 5:  # wrong types, huge numbers, surrogates in a few random fields
            body = json.dumps(mutate(rng, base)).encode()
        elif kind == 6:  # nested arrays and objects
            if rng.random() < 0.5:
                body = nested(rng)
            else:
                obj = mutate(rng, base)
                obj[rng.choice(list(obj) or ["x"])] = "NESTED"  # a field nested deep
                body = json.dumps(obj).encode().replace(b'"NESTED"', nested(rng), 1)
        elif kind == 7:  # surrogates, raw and escaped; NaN; huge integers; not an object
            body = rng.choice([b'{"content": "\\ud800"}', b'{"messages": [{"role": "user", '
                               b'"content": "\\udfff"}], "model": "tiny"}',
                               b'{"input": "\xed\xa0\x80"}', b'{"prompt": "a\\ud83d"}',
                               b'{"temperature": NaN}', b'{"max_tokens": Infinity}',
                               b'{"value": -Infinity}', b'{"seed": ' + b"9" * 5000 + b"}",
                               b'{"\\ud800": 1}', b"[1, 2]", b'"text"', b"null", b"12",
                               b"\xef\xbb\xbf{}", b'{"a": 1}{"b": 2}', b"{" * 3])
        elif kind == 8:  # wrong content types
            body = json.dumps(base).encode()
            headers = rng.choice([{"Content-Type": "text/plain"},
                                  {"Content-Type": "application/x-www-form-urlencoded"},
                                  {"Content-Type": "multipart/form-data; boundary=x"},
                                  {"Content-Type": "application/json; charset=latin-1"},
                                  {"Content-Type": "json"}, {"Content-Type": ""},
                                  {"Content-Type": "application/xml"}, {}])
        elif kind == 9:  # random headers (printable values, so the HTTP itself is valid)
            body = json.dumps(mutate(rng, base) if rng.random() < 0.5 else base).encode()
            for _ in range(rng.randint(1, 4)):
                name = rng.choice(["Authorization", "Origin", "Sec-Fetch-Site", "Accept",
                                   "X-Fuzz", "Cookie", "Host", "Content-Type", "User-Agent"])
                headers[name] = "".join(chr(rng.randint(32, 126))
                                        for _ in range(rng.randint(0, 40)))
        elif kind == 10:  # safe methods on every route, with junk
            method = rng.choice(["GET", "HEAD", "OPTIONS", "DELETE", "PUT"])
            path = rng.choice(gets + [p for _, p, _ in routes])
            body = b"" if method in ("GET", "HEAD") else rng.randbytes(rng.randint(0, 20))
        else:  # a valid body now and then: the server must still answer those
            body = json.dumps(base).encode()
        yield method, path, body, headers


def test_fuzz_no_5xx_errors_in_openai_shape_and_the_connection_survives(srv):
    # a conversation with a reply, so that the /api routes have real ids to hit
    c = httpx.post(srv.url + "/api/conversations", json={"settings": {"max_tokens": 4}}).json()
    with httpx.stream("POST", f"{srv.url}/api/conversations/{c['id']}/messages",
                      json={"content": "hi"}, timeout=30) as r:
        evs = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    uid, mid = evs[0]["message"]["id"], evs[-1]["message"]["id"]
    # and an arena battle (this server serves one model, so POST /api/arena is always a 400)
    other = srv.store.add_message(c["id"], uid, "assistant", "hello", model="x",
                                  finish_reason="stop")
    bid = srv.store.add_battle(c["id"], uid, mid, other["id"])["id"]

    rng = random.Random(SEED)
    port = int(srv.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK waits
    sock = conn.sock
    statuses: dict[int, int] = {}
    bad: list[str] = []
    start = time.time()
    for i, (method, path, body, headers) in enumerate(fuzz_cases(rng, c["id"], mid, uid,
                                                                 N_FUZZ, bid)):
        assert time.time() - start < FUZZ_SECONDS, f"the fuzz ran past its bound at case {i}"
        conn.request(method, path, body=body or None, headers=headers)
        r = conn.getresponse()
        raw = r.read()
        statuses[r.status] = statuses.get(r.status, 0) + 1
        case = f"#{i} {method} {path} {headers} {body[:120]!r} -> {r.status} {raw[:200]!r}"
        if r.status >= 500 or (r.status >= 400 and method != "HEAD"
                               and not is_openai_error(r.status, raw)):
            bad.append(case)
        assert conn.sock is sock, f"the server closed the connection after {case}"
    assert not bad, f"{len(bad)} bad answers of {N_FUZZ}:\n" + "\n".join(bad[:20])
    assert len(sweep_of(c["id"], mid, uid, bid)) <= N_FUZZ // 4  # the sweep covered every field
    assert sum(statuses.values()) == N_FUZZ and not any(s >= 500 for s in statuses)
    assert statuses.get(200, 0) >= 20 and statuses.get(400, 0) >= 100 and statuses.get(415)
    conn.request("GET", "/health")  # the same connection, still good
    assert json.loads(conn.getresponse().read()) == {"status": "ok"} and conn.sock is sock
    conn.close()
    assert srv.engine.thread.is_alive()
    r = httpx.post(srv.url + "/v1/completions", json={"model": NAME, "prompt": "The cat",
                                                       "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


# ------------------------------------------------------------------------------ one by one


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                  "/api/conversations"])
def test_a_lone_surrogate_and_deep_nesting_are_400_on_every_route(srv, path):
    bodies = {"/v1/chat/completions": '{"model": "tiny", "messages": [{"role": "user", '
                                      '"content": "\\ud800"}]}',
              "/v1/completions": '{"model": "tiny", "prompt": "\\ud800"}',
              "/v1/embeddings": '{"model": "tiny", "input": "\\ud800"}',
              "/api/conversations": '{"title": "\\ud800"}'}
    with httpx.Client() as client:  # one keep-alive connection
        e = error(client.post(srv.url + path, content=bodies[path],
                              headers={"content-type": "application/json"}), 400)
        assert "surrogate" in e["message"] and e["code"] == "invalid_json"
        e = error(client.post(srv.url + path, content="[" * 980 + "]" * 980,
                              headers={"content-type": "application/json"}), 400)
        assert "nested" in e["message"]
        assert client.get(srv.url + "/health").status_code == 200


def test_only_json_bodies_are_read(srv):
    chat = srv.url + "/v1/chat/completions"
    body = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 2})
    for ct in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
               "multipart/form-data; boundary=x", "application/json; charset=iso-8859-1"):
        e = error(httpx.post(chat, content=body, headers={"content-type": ct}), 415)
        assert e["code"] == "unsupported_media_type" and "application/json" in e["message"]
    error(httpx.post(chat, content=body.encode(), headers={"content-type": ""}), 415)
    r = httpx.post(srv.url + "/api/conversations", content=body)  # no Content-Type at all
    assert error(r, 415)["code"] == "unsupported_media_type"
    for ct in ("application/json", "application/json; charset=utf-8",
               "Application/JSON;charset=\"UTF-8\"", "application/vnd.api+json"):
        r = httpx.post(chat, content=body, headers={"content-type": ct})
        assert r.status_code == 200, (ct, r.text)
    assert httpx.post(srv.url + "/api/conversations").status_code == 200  # no body: fine


def test_the_host_must_be_an_allowed_name(srv):
    port = srv.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}",
                 "localhost."):
        r = httpx.get(srv.url + "/api/conversations", headers={"host": host})
        assert r.status_code == 200, (host, r.text)
    for host in (f"evil.example:{port}", "attacker.localhost", "127.0.0.2", "", "[::1", "a:b:c"):
        e = error(httpx.get(srv.url + "/api/conversations", headers={"host": host}), 400)
        assert e["code"] == "invalid_host" and "--allowed_hosts" in e["message"]
    # /health answers whatever the name, for load balancers; nothing there to read
    assert httpx.get(srv.url + "/health", headers={"host": "10.0.0.7:8000"}).status_code == 200
    for host, status in (("chat.example.com", 200), ("box.lan:8000", 200), ("lan", 200),
                         ("localhost", 400),  # create_app's list is the whole list
                         ("example.com", 400), ("chat.example.com.evil", 400)):
        r = httpx.get(srv.extra_url + "/v1/models", headers={"host": host})
        assert r.status_code == status, (host, r.text)
    r = httpx.get(srv.any_url + "/v1/models", headers={"host": "anything.example:1"})
    assert r.status_code == 200


def test_cross_site_requests_are_refused(srv):
    api = srv.url + "/api/conversations"
    own = srv.url  # what a browser sends as Origin for the page this server served
    for headers in ({"origin": "https://evil.example"}, {"origin": "null"},
                    {"sec-fetch-site": "cross-site"},
                    {"origin": own, "sec-fetch-site": "cross-site"}):
        e = error(httpx.post(api, json={}, headers=headers), 403)
        assert e["code"] == "cross_site_request"
    c = httpx.post(api, json={}, headers={"origin": own, "sec-fetch-site": "same-origin"}).json()
    e = error(httpx.delete(f"{api}/{c['id']}", headers={"origin": "http://evil.example"}), 403)
    assert httpx.get(f"{api}/{c['id']}").status_code == 200  # still there
    assert httpx.delete(f"{api}/{c['id']}", headers={"origin": own}).status_code == 200
    # reading is not state-changing: a cross-site GET is answered (the browser keeps the answer
    # from the other site's page, as there is no CORS header)
    assert httpx.get(srv.url + "/api/info", headers={"origin": "https://evil.example"}) \
        .status_code == 200
    e = error(httpx.post(srv.url + "/v1/completions", json={"model": NAME, "prompt": "x"},
                         headers={"origin": "https://evil.example"}), 403)


# ------------------------------------------------------------------------------ API keys


def test_empty_and_short_api_keys_are_refused_at_start_up(tmp_path, monkeypatch):
    for given, env in (([""], None), (["short"], None), (["   "], None), (None, ""),
                       (None, "1234567"), (["good-key-123"], "")):
        with pytest.raises(UserError, match="API key"):
            api_keys(given, env)
    assert api_keys(["good-key-123"], " env-key-4567 ") == ["good-key-123", "env-key-4567"]
    assert api_keys(None, None) == []
    model = make_hf_dir(tmp_path, "qwen2")
    r = run_cli("serve", "--model", str(model), "--api_key", "", "--port", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "at least 8 characters" in r.stderr
    assert "not required" not in r.stderr and "serving" not in r.stderr
    monkeypatch.setenv("JIELONG_API_KEY", "abc")
    r = run_cli("serve", "--model", str(model), "--port", "1")
    assert r.returncode == 2 and "JIELONG_API_KEY" in r.stderr, r.stderr
    with pytest.raises(UserError, match="empty"):
        create_app(None, None, NAME, api_keys=[""])


def test_serve_and_chat_without_the_demo_say_to_run_it(tmp_path):
    for command in ("serve", "chat"):
        r = run_cli(command, cwd=tmp_path, input="")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "run `jielong demo` first, or pass --model" in r.stderr
        assert r.stderr.strip().count("\n") == 0
