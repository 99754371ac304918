"""The OpenAI-compatible server (jielong.serve.app, jielong.serve.openai_routes), spoken to by
the official `openai` client over real HTTP: a uvicorn server in a background thread, a tiny
Qwen2-shaped model with a chat template, and a LoRA adapter served beside it."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import make_adapter
from conftest import serving as running
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.infer.generate import generate_ids  # noqa: E402
from jielong.infer.sampling import SamplingParams  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402

NAME = "tiny-qwen"
KEY = "sk-test-0123456789"
PIRATE = "You are a pirate. Answer like one."
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model_dir = make_hf_dir(root, "qwen2")
    adapter_dir = make_adapter(model_dir, root / "pirate", seed=1)
    model, tok, gen = open_model(model_dir, adapters=[f"pirate={adapter_dir}"])
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=4).start()
    app = create_app(engine, tok, NAME, gen)
    keyed = create_app(engine, tok, NAME, gen, system_prompt=PIRATE, api_keys=[KEY],
                       max_body_bytes=4096)
    with running(app) as url, running(keyed) as keyed_url:
        yield SimpleNamespace(
            engine=engine, tok=tok, gen=gen, model_dir=model_dir, adapter_dir=adapter_dir,
            url=url, keyed_url=keyed_url,
            client=openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30),
            keyed=openai.OpenAI(base_url=keyed_url + "/v1", api_key=KEY, max_retries=0,
                                timeout=30))
    engine.close()


def greedy(srv, ids, max_tokens=12, adapter=None):
    return srv.engine.complete(ids, SamplingParams(max_tokens=max_tokens, temperature=0), adapter)


def chat_ids(srv, messages):
    return srv.tok.encode_chat(messages, add_generation_prompt=True)[0]


# ------------------------------------------------------------------------------ generation


def test_chat_greedy_equals_the_engine_streamed_or_not(srv):
    ids = chat_ids(srv, HELLO)
    want = greedy(srv, ids)
    assert want.token_ids, "the fixture model should say something"
    r = srv.client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=12,
                                           temperature=0)
    assert r.object == "chat.completion" and r.model == NAME and len(r.choices) == 1
    c = r.choices[0]
    assert (c.message.role, c.message.content, c.finish_reason) == \
        ("assistant", want.text, want.finish_reason)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == \
        (len(ids), len(want.token_ids), len(ids) + len(want.token_ids))

    chunks = list(srv.client.chat.completions.create(
        model=NAME, messages=HELLO, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == [want.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)
    assert chunks[-1].usage.prompt_tokens == len(ids)


def test_chat_content_parts_n_choices_and_seeds(srv):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital "},
                                          {"type": "text", "text": "of France?"}]}]
    want = greedy(srv, chat_ids(srv, [{"role": "user",
                                       "content": "What is the capital \nof France?"}]))
    r = srv.client.chat.completions.create(model=NAME, messages=parts, max_tokens=12,
                                           temperature=0, n=2)
    assert [c.message.content for c in r.choices] == [want.text] * 2
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens == 2 * len(want.token_ids)

    def sampled():
        return srv.client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=8,
                                                  temperature=1.0, seed=7).choices[0].message.content
    assert sampled() == sampled()  # a seed makes a sampled reply repeatable


def test_completions_text_list_and_token_prompts(srv):
    tok = srv.tok
    prompts = ["The cat sat on", "今天天氣很好，"]
    want = [greedy(srv, tok.encode(p), 8) for p in prompts]
    r = srv.client.completions.create(model=NAME, prompt=prompts[0], max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == want[0].text
    assert r.usage.prompt_tokens == len(tok.encode(prompts[0]))

    r = srv.client.completions.create(model=NAME, prompt=prompts, max_tokens=8, temperature=0)
    assert [c.text for c in r.choices] == [w.text for w in want]
    assert r.usage.completion_tokens == sum(len(w.token_ids) for w in want)

    ids = tok.encode(prompts[1])
    r = srv.client.completions.create(model=NAME, prompt=ids, max_tokens=8, temperature=0,
                                      echo=True)
    assert r.choices[0].text == tok.decode(ids) + want[1].text

    stream = srv.client.completions.create(model=NAME, prompt=prompts[0], max_tokens=8,
                                           temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == want[0].text
    assert chunks[-1].choices[0].finish_reason == want[0].finish_reason


def test_concurrent_requests_each_get_their_own_reply(srv):
    """More requests than slots, at once: each reply is its own (its prompt, its length)."""
    prompts = [f"{i} + {i} =" * (i + 1) for i in range(7)]
    out: dict[int, object] = {}

    def ask(i):
        out[i] = srv.client.completions.create(
            model=NAME, prompt=prompts[i], max_tokens=i + 1, temperature=0.8, stream=i % 2 == 0,
            extra_body={"ignore_eos": True}, **({"stream_options": {"include_usage": True}}
                                                if i % 2 == 0 else {}))
        if i % 2 == 0:
            out[i] = list(out[i])[-1]  # the usage chunk

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i in range(7):
        assert out[i].usage.prompt_tokens == len(srv.tok.encode(prompts[i]))
        assert out[i].usage.completion_tokens == i + 1


def test_logprobs(srv):
    r = srv.client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=6,
                                           temperature=0, logprobs=True, top_logprobs=3)
    lps = r.choices[0].logprobs.content
    assert len(lps) == r.usage.completion_tokens > 0
    for lp in lps:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
        values = [t.logprob for t in lp.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert lp.top_logprobs[0].token == lp.token  # greedy picks the likeliest
        assert lp.logprob == pytest.approx(values[0])
    assert "".join(lp.token for lp in lps) == r.choices[0].message.content

    r = srv.client.completions.create(model=NAME, prompt="The cat", max_tokens=5, temperature=0,
                                      logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == \
        r.usage.completion_tokens
    assert all(len(t) <= 2 for t in lp.top_logprobs)  # two tokens may decode to one string


def test_models_and_per_request_adapter(srv):
    assert [m.id for m in srv.client.models.list().data] == [NAME, "pirate"]
    assert srv.client.models.retrieve("pirate").id == "pirate"
    with pytest.raises(openai.NotFoundError):
        srv.client.models.retrieve("nope")

    ids = chat_ids(srv, HELLO)

    def ask(model):
        return srv.client.chat.completions.create(model=model, messages=HELLO, max_tokens=10,
                                                  temperature=0).choices[0].message.content

    # the adapter set directly on a model of its own, decoding with plain generate_ids
    net, tok, gen = open_model(srv.model_dir, adapters=[f"pirate={srv.adapter_dir}"])
    stops = stop_ids(tok, gen, net.config.eos_token_id)
    direct = tok.decode(generate_ids(net, [ids], SamplingParams(10, temperature=0), stops)[0],
                        skip_special_tokens=True)
    base, pirate = ask(NAME), ask("pirate")
    assert pirate != base
    assert pirate == direct == greedy(srv, ids, 10, "pirate").text
    assert base == greedy(srv, ids, 10).text


def test_embeddings(srv):
    r = srv.client.embeddings.create(model=NAME, input=["The cat sat", "今天天氣很好", "The cat sat"])
    vecs = [torch.tensor(d.embedding) for d in r.data]  # the client asks for base64
    assert [d.index for d in r.data] == [0, 1, 2]
    assert all(v.shape == (64,) for v in vecs)
    assert all(v.norm().item() == pytest.approx(1, abs=1e-5) for v in vecs)
    assert torch.allclose(vecs[0], vecs[2]) and not torch.allclose(vecs[0], vecs[1])
    assert r.usage.prompt_tokens == sum(len(srv.tok.encode(s)) for s in
                                        ["The cat sat", "今天天氣很好", "The cat sat"])
    floats = srv.client.embeddings.create(model=NAME, input="The cat sat", encoding_format="float")
    assert torch.allclose(torch.tensor(floats.data[0].embedding), vecs[0], atol=1e-6)
    other = srv.client.embeddings.create(model="pirate", input="The cat sat").data[0].embedding
    assert not torch.allclose(torch.tensor(other), vecs[0])


def test_server_system_prompt_and_api_key(srv):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.keyed_url + "/v1", api_key="wrong", max_retries=0) \
            .models.list()
    missing = httpx.get(srv.keyed_url + "/v1/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert KEY not in missing.text

    ids = chat_ids(srv, [{"role": "system", "content": PIRATE}, *HELLO])
    r = srv.keyed.chat.completions.create(model=NAME, messages=HELLO, max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == greedy(srv, ids, 8).text
    own = [{"role": "system", "content": "Be brief."}, *HELLO]  # the request's own wins
    r = srv.keyed.chat.completions.create(model=NAME, messages=own, max_tokens=1, temperature=0)
    assert r.usage.prompt_tokens == len(chat_ids(srv, own))


def test_metrics_and_health(srv):
    assert httpx.get(srv.url + "/health").json() == {"status": "ok"}
    srv.client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=2)
    text = httpx.get(srv.url + "/metrics").text
    assert 'jielong_http_requests_total{route="/v1/chat/completions",status="200"}' in text
    for name in ("jielong_requests_waiting", "jielong_requests_running",
                 "jielong_prompt_tokens_total", "jielong_generation_tokens_total",
                 "jielong_time_to_first_token_seconds_count",
                 "jielong_decode_tokens_per_second_bucket"):
        assert name in text, name


# ------------------------------------------------------------------------------ mistakes


def error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    return e


def test_malformed_and_invalid_bodies_are_400_naming_the_field(srv):
    url = srv.url + "/v1/chat/completions"
    e = error(httpx.post(url, content=b'{"model": "x", "messages": [', headers={
        "content-type": "application/json"}), 400)
    assert "JSON" in e["message"]
    e = error(httpx.post(url, json={"model": NAME}), 400)
    assert e["param"] == "messages" and "required" in e["message"]
    e = error(httpx.post(url, json={"model": NAME, "messages": [{"role": "wizard",
                                                                 "content": "hi"}]}), 400)
    assert e["param"] == "messages[0].role"
    e = error(httpx.post(url, json={"model": NAME, "messages": HELLO, "temperature": "hot"}), 400)
    assert e["param"] == "temperature" and "temperature" in e["message"]
    e = error(httpx.post(url, json={"model": NAME, "messages": HELLO, "stop": list("abcde")}), 400)
    assert e["param"] == "stop"
    e = error(httpx.post(url, json={"model": NAME, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}), 400)
    assert "text" in e["message"]
    e = error(httpx.post(srv.url + "/v1/completions", json={"model": NAME, "prompt": [10**9]}), 400)
    assert "vocabulary" in e["message"]
    e = error(httpx.post(srv.url + "/v1/embeddings", json={"model": NAME, "input": ""}), 400)
    assert e["param"] == "input"


def test_bad_values_unknown_model_and_context_length(srv):
    with pytest.raises(openai.NotFoundError) as e:
        srv.client.chat.completions.create(model="gpt-4", messages=HELLO)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.chat.completions.create(model=NAME, messages=HELLO, temperature=-1)
    assert "temperature" in e.value.message and e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=100_000)
    assert e.value.code == "context_length_exceeded" and "max_tokens" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.chat.completions.create(model=NAME, messages=HELLO, max_completion_tokens=0)
    assert e.value.param == "max_completion_tokens"
    long = [{"role": "user", "content": "The cat sat on the mat. " * 200}]
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.chat.completions.create(model=NAME, messages=long)
    assert e.value.code == "context_length_exceeded" and "context" in e.value.message
    with pytest.raises(openai.BadRequestError):
        srv.client.completions.create(model=NAME, prompt="hi", n=2, stream=False, logprobs=99)


def test_size_limit_routes_and_methods(srv):
    headers = {"authorization": f"Bearer {KEY}"}
    big = {"model": NAME, "messages": [{"role": "user", "content": "x" * 10_000}]}
    e = error(httpx.post(srv.keyed_url + "/v1/chat/completions", json=big, headers=headers), 413)
    assert "4096" in e["message"]
    e = error(httpx.get(srv.url + "/v1/nothing"), 404)
    assert "/v1/nothing" in e["message"]
    error(httpx.get(srv.url + "/v1/chat/completions"), 405)
    many = {"model": NAME, "messages": HELLO * 300}
    e = error(httpx.post(srv.url + "/v1/chat/completions", json=many), 400)
    assert e["param"] == "messages"


# ------------------------------------------------------------------------------ cancellation


def _slow_engine(srv, monkeypatch):
    """Each decode step takes ≥ 20 ms, so a long request is surely still running when its
    client leaves."""
    decode = srv.engine._decode

    def slow():
        time.sleep(0.02)
        decode()
    monkeypatch.setattr(srv.engine, "_decode", slow)


def _drained(srv, cancelled_before: int) -> None:
    deadline = time.time() + 5
    while time.time() < deadline:
        if srv.engine.stats()["running"] == 0 and \
                srv.engine.by_reason.get("cancelled", 0) > cancelled_before:
            return
        time.sleep(0.02)
    raise AssertionError(f"still running: {srv.engine.stats()}, {srv.engine.by_reason}")


def test_a_closed_stream_frees_its_slot(srv, monkeypatch):
    _slow_engine(srv, monkeypatch)
    before = srv.engine.by_reason.get("cancelled", 0)
    stream = srv.client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=400,
                                                stream=True, extra_body={"ignore_eos": True})
    it = iter(stream)
    next(it), next(it)
    assert srv.engine.stats()["running"] == 1
    stream.close()
    _drained(srv, before)


def test_a_client_that_times_out_cancels_its_request(srv, monkeypatch):
    _slow_engine(srv, monkeypatch)
    before = srv.engine.by_reason.get("cancelled", 0)
    body = {"model": NAME, "prompt": "The cat", "max_tokens": 400, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + "/v1/completions", json=body, timeout=0.5)
    _drained(srv, before)
    assert json.loads(httpx.get(srv.url + "/health").text) == {"status": "ok"}
