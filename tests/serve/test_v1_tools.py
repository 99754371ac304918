"""Tool calling on /v1/chat/completions, spoken to by the official `openai` client: a tiny Qwen2
model (its Hermes tools template, tests/hf_families.py) whose replies are planted token by
token, so each test knows what the model "said". tool_choice auto / none / required / named,
parallel_tool_calls, streamed argument deltas with Chinese (繁/简, characters split across byte
tokens) intact and no tag in the text, a dropped brace reported, and the history's tool calls
and tool messages checked (clear 400s)."""

from __future__ import annotations

import json

import pytest
from conftest import serving
from hf_families import HERMES_FORMAT, HERMES_INTRO, make_hf_dir

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402

NAME = "tiny"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "臺北天氣如何？"}]
CALLS = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "臺北"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "饕餮镇"}}\n</tool_call>')


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    d = make_hf_dir(root, "qwen2")
    template = d / "chat_template.jinja"  # its two long sentences left out: 512 tokens is little
    template.write_text(template.read_text().replace(HERMES_INTRO, "").replace(HERMES_FORMAT, ""))
    model, tok, gen = open_model(d)
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=2).start()
    planted = {"ids": None}
    end = tok.backend.token_to_id("<|im_end|>")
    sample = engine._sample

    def planted_sample(rows, logits):
        """The next token of the planted reply (then the end of the turn), as the argmax."""
        if planted["ids"] is not None:
            for j, i in enumerate(rows):
                n = len(engine.running[i].output)
                ids = planted["ids"]
                logits[j] = -1e9
                logits[j, ids[n] if n < len(ids) else end] = 0
        return sample(rows, logits)

    engine._sample = planted_sample
    app = create_app(engine, tok, NAME, gen)
    with serving(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def plant(text: str | None) -> None:
            planted["ids"] = None if text is None else tok.encode(text)

        yield client, url, plant
    engine.close()


def ask(client, max_tokens: int = 160, **kw):
    return client.chat.completions.create(model=NAME, messages=kw.pop("messages", ASK),
                                          temperature=0, max_tokens=max_tokens, **kw)


def calls_of(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def test_auto_none_required_named(srv):
    client, _, plant = srv
    plant(CALLS)
    r = ask(client, tools=[WEATHER])
    [c] = r.choices
    assert c.finish_reason == "tool_calls" and c.message.content is None
    assert calls_of(c.message) == [("get_weather", {"city": "臺北"}), ("get_weather", {"city": "饕餮镇"})]
    ids = [t.id for t in c.message.tool_calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    with_tools = r.usage.prompt_tokens
    # parallel_tool_calls false: the first call only
    r = ask(client, tools=[WEATHER], parallel_tool_calls=False)
    assert calls_of(r.choices[0].message) == [("get_weather", {"city": "臺北"})]
    # auto, and the model answers in words: plain content
    plant("It is sunny in 臺北 today.")
    r = ask(client, tools=[WEATHER])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("It is sunny in 臺北 today.", "stop")
    assert r.choices[0].message.tool_calls is None
    # none: the tools are not shown, and what the model writes is its text, unread
    plant(CALLS)
    r = ask(client, tools=[WEATHER], tool_choice="none")
    assert r.choices[0].message.content == CALLS and r.choices[0].message.tool_calls is None
    assert r.usage.prompt_tokens < with_tools == ask(client, tools=[WEATHER], tool_choice="auto").usage.prompt_tokens
    # required and named: the reply is held to calls by constrained decoding (the grammar
    # masks every token the call's syntax or its schema does not allow)
    plant('<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>')
    r = ask(client, tools=[WEATHER], tool_choice="required")
    assert calls_of(r.choices[0].message) == [("get_weather", {"city": "北京"})]
    assert r.choices[0].finish_reason == "tool_calls"
    plant('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    r = ask(client, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert calls_of(r.choices[0].message) == [("get_weather", {"city": "Paris"})]
    plant("It is sunny in 臺北 today.")  # prose the grammar does not let through
    r = ask(client, max_tokens=24, tools=[WEATHER], tool_choice="required")
    assert "sunny" not in (r.choices[0].message.content or "")
    with pytest.raises(openai.BadRequestError, match="both constrain"):
        ask(client, tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"})


def test_streamed_arguments_keep_chinese_whole_and_tags_hidden(srv):
    client, _, plant = srv
    plant("好的。" + CALLS)
    content, names, args, finish = [], {}, {}, None
    for chunk in ask(client, tools=[WEATHER], stream=True):
        for ch in chunk.choices:
            d = ch.delta
            finish = ch.finish_reason or finish
            if d.content:
                content.append(d.content)
            for t in d.tool_calls or []:
                if t.function.name:
                    names[t.index] = t.function.name
                if t.function.arguments:
                    assert "\ufffd" not in t.function.arguments
                    args.setdefault(t.index, []).append(t.function.arguments)
    assert "".join(content) == "好的。" and not any("<" in x for x in content)
    assert names == {0: "get_weather", 1: "get_weather"}
    assert json.loads("".join(args[1])) == {"city": "饕餮镇"} and len(args[1]) > 1  # in pieces
    assert json.loads("".join(args[0])) == {"city": "臺北"}
    assert finish == "tool_calls"


def test_a_dropped_brace_is_reported_not_passed_on(srv):
    client, url, plant = srv
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "臺北"}\n</tool_call>'
    plant(broken)
    r = ask(client, tools=[WEATHER])
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "stop" and not m.tool_calls
    [e] = m.model_extra["tool_call_errors"]
    assert "dropped" in e["error"] and e["text"] == broken
    last = None
    for chunk in ask(client, tools=[WEATHER], stream=True):
        last = chunk.choices[0] if chunk.choices else last
    assert last.finish_reason == "stop" and last.delta.model_extra["tool_call_errors"][0]["text"] == broken
    plant(None)


def test_tool_messages_in_the_history(srv):
    client, url, plant = srv
    plant("臺北晴。")
    history = [*ASK,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "臺北"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "晴，28°C"}]
    r = ask(client, 40, tools=[WEATHER], messages=history)
    assert r.choices[0].message.content == "臺北晴。"
    plant(None)

    def refused(body: dict, param: str) -> str:
        got = httpx.post(url + "/v1/chat/completions", json={"model": NAME, "max_tokens": 4, **body})
        assert got.status_code == 400, got.text
        err = got.json()["error"]
        assert err["param"] == param, err
        return err["message"]

    wrong_id = [*history[:2], {**history[2], "tool_call_id": "call_9"}]
    assert "call_9" in refused({"messages": wrong_id}, "messages[2].tool_call_id")
    no_id = [*history[:2], {"role": "tool", "content": "x"}]
    refused({"messages": no_id}, "messages[2].tool_call_id")
    bad_args = [ASK[0], {**history[1], "tool_calls": [{**history[1]["tool_calls"][0],
                                                       "function": {"name": "get_weather",
                                                                    "arguments": '{"city": '}}]}]
    refused({"messages": bad_args}, "messages[1].tool_calls[0].function.arguments")
    assert "get_time" in refused({"messages": ASK, "tools": [WEATHER], "tool_choice": {
        "type": "function", "function": {"name": "get_time"}}}, "tool_choice")
    refused({"messages": ASK, "tools": [{"type": "function"}]}, "tools")
    refused({"messages": ASK, "tool_choice": "required"}, "tool_choice")
    refused({"messages": ASK, "functions": [{"name": "f"}]}, "functions")
    refused({"messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "function", "function": "f"}},
            "tool_choice")
    refused({"messages": [{**ASK[0], "tool_calls": history[1]["tool_calls"]}]}, "messages[0].tool_calls")
    dup = [*history[:2], {**history[1], "content": "again"}]
    refused({"messages": dup}, "messages[2].tool_calls[0].id")
