"""The Look inside panel's routes (jielong.serve.inspect_routes) and the continue-from-a-prefix
reply (jielong.serve.chat_routes) over real HTTP, on a tiny Qwen2-shaped model: the next-token
probabilities are the softmax of the model's own logits, in a text and inside a chat reply;
the attention maps are attention_weights merged onto whole characters, rows summing to 1; a
continued reply begins with the prefix and goes on as the engine does; bad bodies are 4xx,
never 5xx; a server in front of an upstream says inspection needs a local model."""

from __future__ import annotations

import json
import random
import threading
from types import SimpleNamespace

import pytest
from conftest import serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
torch = pytest.importorskip("torch")

from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.infer.sampling import SamplingParams  # noqa: E402
from jielong.inspect.attention import attention_weights, rollout  # noqa: E402
from jielong.inspect.pieces import merge_matrix, merged_pieces  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.serve.store import Store  # noqa: E402
from jielong.serve.upstream import UpstreamEngine  # noqa: E402

SYSTEM = "You are a helpful assistant."
SHE = "小美把禮物送給小芳，她很開心。"
TEXTS = ["小美把禮物送給", "小美把礼物送给", "The cat sat on the"]  # Traditional, Simplified, English


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    model, tok, gen = open_model(make_hf_dir(root, "qwen2"))
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=2).start()
    store = Store(root / "f.db")
    app = create_app(engine, tok, "tiny", gen, store=store)
    proxied = create_app(UpstreamEngine("http://127.0.0.1:9/v1", model="x"), None, "x",
                         store=Store(root / "up.db"))  # never started: nothing is asked of it
    with serving(app) as url, serving(proxied) as up_url:
        yield SimpleNamespace(engine=engine, model=model, tok=tok, store=store,
                              api=url + "/api", up=up_url + "/api")
    engine.close()
    store.close()


def post(srv, path, body, status=200):
    r = httpx.post(srv.api + path, json=body, timeout=30)
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()


def stream(srv, path, body) -> list[dict]:
    r = httpx.post(srv.api + path, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]


def softmax_next(srv, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = srv.model(torch.tensor([ids]))  # every position's logits, no cache
    return logits[0, -1].double().softmax(-1)


def planted_reply(srv, answer: str) -> dict:
    """A conversation whose (edited) reply is `answer`: the reply message."""
    c = post(srv, "/conversations", {"system_prompt": SYSTEM,
                                     "settings": {"temperature": 0, "max_tokens": 3}})
    evs = stream(srv, f"/conversations/{c['id']}/messages", {"parent_id": None, "content": "你好嗎？"})
    first = evs[-1]["message"]
    return post(srv, f"/messages/{first['id']}/edit", {"content": answer})["message"]


def chat_ids(srv, prefix: str) -> list[int]:
    text, _ = srv.tok.render_chat([{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": "你好嗎？"}],
                                  add_generation_prompt=True)
    return srv.tok.encode(text + prefix)


@pytest.mark.parametrize("text", TEXTS)
def test_next_tokens_are_the_softmax_of_the_models_logits(srv, text):
    out = post(srv, "/inspect/next", {"text": text, "k": 7})
    ids = srv.tok.encode(text)
    probs = softmax_next(srv, ids)
    want_p, want_i = probs.topk(7)
    assert [t["id"] for t in out["top"]] == want_i.tolist()
    assert [t["prob"] for t in out["top"]] == pytest.approx(want_p.tolist(), abs=1e-6)
    assert "".join(out["pieces"]) == text and "\ufffd" not in "".join(out["pieces"])
    for t in out["top"]:  # shown as whole characters: a token's own text when it is whole
        raw = srv.tok.token_bytes(t["id"])
        if t["whole"]:
            assert t["text"].encode().startswith(raw) and "\ufffd" not in t["text"]


def test_next_inside_a_reply_reads_the_chat_and_the_prefix(srv):
    bot = planted_reply(srv, "她很開心。")
    out = post(srv, "/inspect/next", {"message_id": bot["id"], "k": 5})
    assert "".join(out["reply"]) == "她很開心。" and "她" in out["reply"]
    probs = softmax_next(srv, chat_ids(srv, ""))
    assert [t["id"] for t in out["top"]] == probs.topk(5).indices.tolist()
    # the engine's own greedy first token is the view's likeliest
    first = srv.engine.complete(chat_ids(srv, ""), SamplingParams(max_tokens=1, temperature=0))
    assert first.token_ids[0] == out["top"][0]["id"]
    at = post(srv, "/inspect/next", {"message_id": bot["id"], "prefix": "她很", "k": 3})
    assert [t["prob"] for t in at["top"]] == pytest.approx(
        softmax_next(srv, chat_ids(srv, "她很")).topk(3).values.tolist(), abs=1e-6)
    assert "".join(at["pieces"]).endswith("她很")


def test_continue_from_a_chosen_token_is_a_new_version_that_goes_on(srv):
    bot = planted_reply(srv, "她很開心。")
    evs = stream(srv, f"/messages/{bot['id']}/continue",
                 {"prefix": "她不", "settings": {"temperature": 0, "max_tokens": 4}})
    kinds = [e["type"] for e in evs]
    assert kinds[0] == "assistant" and kinds[-1] == "done", kinds
    assert evs[0]["message"]["content"] == "她不"  # shown at once, before the model writes
    new = evs[-1]["message"]
    greedy = srv.engine.complete(chat_ids(srv, "她不"), SamplingParams(max_tokens=4, temperature=0))
    assert new["content"] == "她不" + greedy.text
    assert (new["origin"], new["edited_from"], new["parent_id"]) == \
        ("regenerate", bot["id"], bot["parent_id"])
    assert post(srv, f"/messages/{new['id']}/rating", {"value": 1})["rating"]["value"] == 1
    user = bot["parent_id"]
    e = post(srv, f"/messages/{user}/continue", {"prefix": "x"}, 400)["error"]
    assert "user message" in e["message"]


def test_attention_is_attention_weights_merged_and_rows_sum_to_one(srv):
    out = post(srv, "/inspect/attention", {"text": SHE, "token": "她"})
    ids = srv.tok.encode(SHE)
    pieces = merged_pieces(srv.tok, ids)
    spans = [s for _, s in pieces]
    assert out["pieces"] == [t for t, _ in pieces] and "".join(out["pieces"]) == SHE
    assert "她" in out["pieces"] and "\ufffd" not in "".join(out["pieces"])
    w = attention_weights(srv.model, ids)
    want = merge_matrix(w, spans)
    got = torch.tensor(out["weights"], dtype=torch.float64)
    assert (out["layers"], out["heads"]) == tuple(w.shape[:2])
    torch.testing.assert_close(got, want.double(), atol=2e-5, rtol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:-1], dtype=torch.float64),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(out["rollout"], dtype=torch.float64),
                               merge_matrix(rollout(w), spans).double(), atol=2e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(out["mean"], dtype=torch.float64),
                               want.mean(1).double(), atol=2e-5, rtol=0)
    assert out["summary"]["token"] == "她" and out["summary"]["position"] == out["pieces"].index("她")


def test_looking_inside_while_a_reply_is_written_changes_nothing(srv):
    ids = srv.tok.encode("從前有一個")
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    want = srv.engine.complete(ids, params).token_ids
    got = []
    writer = threading.Thread(target=lambda: got.append(srv.engine.complete(ids, params)))
    writer.start()
    looks = 0
    while writer.is_alive() or not looks:
        post(srv, "/inspect/attention", {"text": SHE})
        post(srv, "/inspect/next", {"text": SHE, "k": 50})
        looks += 1
    writer.join()
    assert got[0].token_ids == want


def test_attention_limits_are_clear_400s(srv):
    e = post(srv, "/inspect/attention", {"text": "龍" * 300}, 400)["error"]
    assert e["code"] == "too_many_tokens" and "128" in e["message"]
    assert post(srv, "/inspect/attention", {"text": SHE, "layer": 9}, 400)["error"]["param"] == "layer"
    assert "not in the sentence" in post(srv, "/inspect/attention",
                                         {"text": SHE, "token": "貓"}, 400)["error"]["message"]
    assert post(srv, "/inspect/next", {"text": SHE, "message_id": "m"}, 400)["error"]["param"] == "text"
    assert post(srv, "/inspect/next", {"message_id": "nope"}, 404)["error"]["code"] == "not_found"
    assert post(srv, "/inspect/next", {"text": SHE, "k": 51}, 400)["error"]["param"] == "k"


ODD = [None, True, 0, -1, 51, 10**30, 0.5, "", "x", "\x00", "龍" * 200, [], {}, [1, "a"],
       {"a": 1}, "她"]


def test_random_bodies_are_4xx_never_5xx(srv):
    bot = planted_reply(srv, "好")
    bases = [("/inspect/next", {"text": "你好", "k": 3}),
             ("/inspect/next", {"message_id": bot["id"], "prefix": "好", "k": 2}),
             ("/inspect/attention", {"text": "她很開心", "layer": 0, "token": "她"}),
             ("/inspect/attention", {"message_id": bot["id"]}),
             (f"/messages/{bot['id']}/continue", {"prefix": "好", "settings": {"max_tokens": 2}})]
    rng = random.Random(0)
    statuses = set()
    with httpx.Client(timeout=30) as client:
        for i in range(60):
            path, base = rng.choice(bases)
            body = dict(base)
            for _ in range(rng.choice((1, 2))):
                body[rng.choice([*base, "k", "layer", "text", "message_id", "prefix"])] = \
                    rng.choice(ODD)
            raw = json.dumps(body).encode() if i % 10 else rng.randbytes(rng.randint(0, 40))
            r = client.post(srv.api + path, content=raw,
                            headers={"Content-Type": "application/json"})
            statuses.add(r.status_code)
            assert r.status_code < 500, (path, body, r.text)
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert 400 in statuses and 200 in statuses


def test_a_proxied_server_says_inspection_needs_a_local_model(srv):
    for path, body in [("/inspect/next", {"text": "你好"}), ("/inspect/attention", {"text": "你好"}),
                       ("/messages/m1/continue", {"prefix": "好"})]:
        r = httpx.post(srv.up + path, json=body, timeout=10)
        assert r.status_code == 400, r.text
        e = r.json()["error"]
        assert e["code"] == "needs_local_model" and "local model" in e["message"]
