"""`jielong eval judge --judge_url`: the judge is `jielong serve`'s app (a tiny model, an API
key) on 127.0.0.1, spoken to over real HTTP. The tiny model's verdicts are noise; what is
checked is the mechanics: two requests per pair, the exact prompts sent, a 503 retried, the
counts adding up, and an unreachable endpoint as one line and exit 2."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from conftest import serving, tiny_corpus, write_jsonl

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from jielong import cli  # noqa: E402
from jielong.checkpoint import save_model  # noqa: E402
from jielong.config import preset  # noqa: E402
from jielong.eval import judges  # noqa: E402
from jielong.eval.verdicts import judge_prompt  # noqa: E402
from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.model import Transformer  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.tokenizer import train_tokenizer  # noqa: E402

NAME = "tiny-judge"
KEY = "sk-judge-0123456789"
ROWS = [  # question, answer a, answer b: English, Traditional and Simplified Chinese
    ("What is the capital of France?", "Paris.", "It is Paris, on the Seine."),
    ("台灣最高的山是哪一座？", "玉山。", "是玉山，海拔三千九百多公尺。"),
    ("中国最长的河是哪条？", "长江。", "黄河。"),
]


class Recorder:
    """An ASGI wrapper that keeps every chat request's JSON body and answers the first
    `fail` of them with 503, as a busy server would."""

    def __init__(self, app, fail: int = 0):
        self.app, self.fail, self.bodies = app, fail, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        self.bodies.append(json.loads(body))
        if self.fail:
            self.fail -= 1
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body",
                        "body": b'{"error": {"message": "busy, try again"}}'})
            return
        given = False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


@pytest.fixture
def server(tmp_path):
    tok = train_tokenizer(tiny_corpus(60), vocab_size=300)
    torch.manual_seed(0)
    net = Transformer(preset("test", vocab_size=tok.vocab_size, max_position_embeddings=2048))
    model, tok, gen = open_model(save_model(tmp_path / "judge", net, tok))
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=4).start()
    app = Recorder(create_app(engine, tok, NAME, gen, api_keys=[KEY]), fail=1)
    try:
        with serving(app) as url:
            yield url, app
    finally:
        engine.close()


def test_judge_against_jielong_serve_on_loopback(server, tmp_path, monkeypatch, capsys):
    url, app = server
    monkeypatch.setattr(judges, "BACKOFF", 0.01)
    monkeypatch.setenv("JUDGE_KEY", KEY)
    a = write_jsonl(tmp_path / "a.jsonl", [{"question": q, "answer": x, "model": "alpha"}
                                           for q, x, _ in ROWS])
    b = write_jsonl(tmp_path / "b.jsonl", [{"question": q, "answer": y, "model": "beta"}
                                           for q, _, y in ROWS])
    out = tmp_path / "out"
    r = cli.run(["eval", "judge", "--a", str(a), "--b", str(b), "--judge_url", url + "/v1",
                 "--api_key_env", "JUDGE_KEY", "--max_tokens", "4", "--out", str(out),
                 "--samples", "200", "--workers", "3"])
    # the first request got 503 and was sent again: 2 judgments per pair, plus that retry
    assert len(app.bodies) == 2 * len(ROWS) + 1
    want = [judge_prompt([{"role": "user", "content": q}], x, y).messages for q, x, y in ROWS] + \
        [judge_prompt([{"role": "user", "content": q}], y, x).messages for q, x, y in ROWS]
    sent = [body["messages"] for body in app.bodies]
    key = lambda m: json.dumps(m, ensure_ascii=False)  # noqa: E731
    assert sorted(map(key, sent[1:])) == sorted(map(key, want))  # the requests came in any order
    assert {(b["model"], b["max_tokens"], b["temperature"]) for b in app.bodies} == {(NAME, 4, 0)}
    systems = {m[0]["content"][:12] for m in sent}
    assert systems == {"You are an i", "你是一位公正的評審。請比", "你是一位公正的评审。请比"}

    t = r["pairs"]
    assert (r["judge"], r["verdict"], r["model_a"], r["model_b"]) == \
        (f"{NAME} at {url}/v1", "generate", "alpha", "beta")
    assert t["a"] + t["tie"] + t["b"] + t["no_verdict"] == t["pairs"] == len(ROWS)
    assert t["verdicts_missing"] <= 2 * len(ROWS)
    saved = json.loads((out / "results.json").read_text())
    assert saved["pairs"]["pairs"] == len(ROWS)
    judgments = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 2 * len(ROWS)
    assert [j["order"] for j in judgments] == ["ab", "ba"] * len(ROWS)
    assert all(isinstance(j["reply"], str) and j["error"] is None for j in judgments)
    assert [j["messages"] for j in judgments[::2]] == want[:len(ROWS)]
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert [p["orders"] for p in pairs] == [[j["outcome"] for j in judgments[i:i + 2]]
                                            for i in range(0, len(judgments), 2)]
    assert "alpha (A) vs beta (B)" in (out / "report.md").read_text()

    # a prompt longer than the judge's context: the endpoint's 400 is that pair's no verdict
    long = write_jsonl(tmp_path / "long.jsonl", [{"question": "Hi", "answer": "word " * 3000}])
    short = write_jsonl(tmp_path / "short.jsonl", [{"question": "Hi", "answer": "Hello"}])
    r = cli.run(["eval", "judge", "--a", str(long), "--b", str(short), "--judge_url", url + "/v1",
                 "--api_key_env", "JUDGE_KEY", "--max_tokens", "2", "--out", str(tmp_path / "o2"),
                 "--samples", "200"])
    assert (r["pairs"]["pairs"], r["pairs"]["no_verdict"], r["pairs"]["verdicts_missing"]) == (1, 1, 2)
    errors = [json.loads(x)["error"] for x in (tmp_path / "o2" / "judgments.jsonl").read_text()
              .splitlines()]
    assert all(e.startswith("HTTP 400: ") and "context" in e for e in errors)
    # a model the endpoint does not serve: one line, exit 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "judge", "--a", str(a), "--b", str(b), "--judge_url", url + "/v1",
                  "--api_key_env", "JUDGE_KEY", "--judge_model", "gpt-nope", "--out",
                  str(tmp_path / "o3"), "--workers", "1"])
    err = capsys.readouterr().err.splitlines()[-1]  # the progress bar stops on a line above
    assert e.value.code == 2 and err.startswith("error: ")
    assert "HTTP 404" in err and "--judge_model" in err


def test_an_unreachable_endpoint_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(judges, "BACKOFF", 0.01)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    votes = write_jsonl(tmp_path / "votes.jsonl", [{
        "id": "v1", "prompt": [{"role": "user", "content": "Hi"}], "model_a": "x", "model_b": "y",
        "answer_a": "Hello", "answer_b": "Hey", "winner": "a", "time": 1.0}])
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "judge", "--votes", str(votes), "--judge_url",
                  f"http://127.0.0.1:{port}/v1", "--retries", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot reach http://127.0.0.1:{port}/v1/models after 3 tries")
