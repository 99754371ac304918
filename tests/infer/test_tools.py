"""jielong.infer.tools: tools rendered by each family's chat template exactly as transformers
renders them (tests/hf_families.py's Qwen2.5 / Qwen3 / Llama 3.1 / Mistral-style templates),
and calls read back out of replies in the three formats — whole and streamed a character, a
few characters and a token at a time, always agreeing — with Chinese (繁/简) and English
arguments intact, tags never sent as content, and broken calls reported, not passed on."""

from __future__ import annotations

import json

import pytest
from hf_families import FAMILIES, SAMPLE_CHATS, make_tokenizer

from jielong.infer.tools import (
    StreamParser,
    ToolCallError,
    assemble,
    check_tool_choice,
    check_tools,
    mistral_id,
    parse,
    parse_tool_calls,
    prefill,
    template_messages,
    tool_style,
)
from jielong.tokenizer import Tokenizer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "今天的天氣 / the weather today",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                    "b": {"type": "number"}}}}}
TOOLS = [WEATHER, ADD]

# OpenAI's shape, as a client sends it: ids, arguments as JSON text.
HISTORY = [
    {"role": "system", "content": "你是一個有幫助的助手。"},
    {"role": "user", "content": "臺北和北京今天天氣如何？再算 2+3。"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_a1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "臺北"}'}},
        {"id": "call_b2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
    {"role": "tool", "tool_call_id": "call_a1", "content": "晴，28°C"},
    {"role": "tool", "tool_call_id": "call_b2", "content": "多云，20°C"},
    {"role": "assistant", "content": "臺北晴，北京多云。", "tool_calls": [
        {"id": "call_c3", "type": "function", "function": {"name": "add",
                                                           "arguments": '{"a": 2, "b": 3}'}}]},
    {"role": "tool", "tool_call_id": "call_c3", "content": "5"},
    {"role": "assistant", "content": "2+3 = 5."},
    {"role": "user", "content": "Thanks! And Paris?"},
]


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    """Each family's tokenizer, as transformers and as jielong load it."""
    out = {}
    for family in FAMILIES:
        hf = make_tokenizer(family)
        d = tmp_path_factory.mktemp(family)
        hf.save_pretrained(d)
        out[family] = hf, Tokenizer.from_dir(d)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_tools_render_as_transformers_renders_them(toks, family):
    hf, ours = toks[family]
    style = tool_style(ours)
    assert style == {"llama3": "llama3", "mistral": "mistral"}.get(family, "hermes")
    history = template_messages(HISTORY, style)
    if family == "mistral":  # its template wants 9-character ids: the mapping gives them
        assert history[3]["tool_call_id"] == history[2]["tool_calls"][0]["id"] == mistral_id("call_a1")
        assert len(mistral_id("call_a1")) == 9
    chats = [history, SAMPLE_CHATS[0], SAMPLE_CHATS[2]]
    for chat in chats:
        for gen in (False, True):
            want = hf.apply_chat_template(chat, tools=TOOLS, tokenize=False,
                                          add_generation_prompt=gen)
            assert ours.render_chat(chat, gen, tools=TOOLS)[0] == want
    text = ours.render_chat(history, True, tools=TOOLS)[0]
    # the tools, the calls and the results are all there, Chinese intact
    assert "get_weather" in text and "今天的天氣" in text and "多云，20°C" in text
    marker = {"hermes": "<tool_call>", "llama3": '"parameters": {"city": "臺北"}',
              "mistral": "[TOOL_CALLS] ["}[style]
    assert marker in text
    # without tools, the templates render as before (tests/test_hf_families_fixture.py)
    assert ours.render_chat(SAMPLE_CHATS[1])[0] == hf.apply_chat_template(SAMPLE_CHATS[1],
                                                                          tokenize=False)
    assert "AVAILABLE_TOOLS" not in ours.render_chat(SAMPLE_CHATS[0])[0]


def test_a_rendered_call_parses_back_to_itself(toks):
    """What each template writes for an assistant's calls is what the parser reads."""
    for family in FAMILIES:
        _, ours = toks[family]
        style = tool_style(ours)
        chat = template_messages(HISTORY[:3], style)
        full = ours.render_chat(chat)[0]
        reply = full[len(ours.render_chat(chat[:2], True)[0]):]
        reply = reply.rsplit({"hermes": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>"}[style], 1)[0]
        content, calls = parse_tool_calls(reply, style)
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
            [("get_weather", {"city": "臺北"}), ("get_weather", {"city": "北京"})], family
        assert content == ("<think>\n\n</think>" if family == "qwen3" else "")  # its empty thoughts


REPLIES = [  # (style, reply, content, [(name, arguments)], broken)
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "臺北"}}\n'
     '</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
     "Let me check.", [("get_weather", '{"city": "臺北"}'), ("add", '{"a": 1, "b": 2}')], 0),
    ("hermes", "a < b and <tool is not a call", "a < b and <tool is not a call", [], 0),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}\n</tool_call>',
     "", [], 1),  # the dropped closing brace
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京\n</tool_call>', "", [], 1),
    ("hermes", '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>', "",
     [("add", '{"a": 1}')], 0),  # arguments sent as a string: unwrapped
    ("hermes", '<tool_call>\n{"name": "add", "arguments": {}}', "", [("add", "{}")], 0),  # cut tag
    ("hermes", '<tool_call>\n{"name": "add", "arguments": {}}}\n</tool_call>Done.', "Done.", [], 1),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}; '
     '{"name": "add", "parameters": {"a": 1.5, "b": -2}}',
     "", [("get_weather", '{"city": "Paris"}'), ("add", '{"a": 1.5, "b": -2}')], 0),
    ("llama3", '<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}', "",
     [("add", '{"a": 1, "b": 2}')], 0),
    ("llama3", '{"answer": "北京"}', '{"answer": "北京"}', [], 0),  # JSON, but not a call
    ("llama3", '{"name": "add", "parameters": {"a": 1, "b": 2}', "", [], 1),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "台北"}}, '
     '{"name": "add", "arguments": {"a": [1, 2]}}]',
     "", [("get_weather", '{"city": "台北"}'), ("add", '{"a": [1, 2]}')], 0),
    ("mistral", '[{"name": "add", "arguments": {"a": 1}}]', "", [("add", '{"a": 1}')], 0),
    ("mistral", "[1, 2] are numbers.", "[1, 2] are numbers.", [], 0),
    ("mistral", '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1}}', "", [], 1),
]


def streamed(text: str, style: str, step: int):
    p = StreamParser(style)
    deltas = []
    for i in range(0, len(text), step):
        deltas += p.feed(text[i:i + step])
    deltas += p.finish()
    return deltas, assemble(deltas, p.errors)


@pytest.mark.parametrize("style, reply, content, calls, broken", REPLIES)
def test_replies_parse_the_same_whole_and_streamed(style, reply, content, calls, broken):
    whole = parse(reply, style)
    assert whole.content == content
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in whole.calls] == calls
    assert len(whole.errors) == broken
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in whole.calls)
    if broken:
        assert whole.errors[0]["text"]  # the raw text, for the client to see
        with pytest.raises(ToolCallError):
            parse_tool_calls(reply, style)
    for step in (1, 2, 5):
        deltas, got = streamed(reply, style, step)
        assert (got.content, [c["function"] for c in got.calls]) == \
            (whole.content, [c["function"] for c in whole.calls])
        assert [e["error"] for e in got.errors] == [e["error"] for e in whole.errors]
        for d in deltas:  # never a tag in the content
            assert not any(t in d.get("content", "") for t in ("<tool_call", "[TOOL_CALLS", "</tool"))


def test_a_token_stream_keeps_chinese_whole(toks):
    """Fed token by token through a real tokenizer (characters split across byte tokens held
    back as the engine holds them), every argument delta is whole characters."""
    from jielong.infer.engine import visible

    _, ours = toks["qwen2"]
    reply = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "饕餮鎮", "note": "简体 '
             'and English 🐉"}}\n</tool_call>')
    ids = ours.encode(reply)
    p, deltas, sent = StreamParser("hermes"), [], 0
    for n in range(1, len(ids) + 1):
        text, end, _ = visible(ours.decode(ids[:n]), sent, [])
        deltas += p.feed(text[sent:end])
        sent = end
    deltas += p.finish()
    pieces = [c["function"]["arguments"] for d in deltas for c in d.get("tool_calls", [])]
    assert len(pieces) > 3 and not any("\ufffd" in x for x in pieces)
    assert json.loads("".join(pieces)) == {"city": "饕餮鎮", "note": "简体 and English 🐉"}
    assert not p.errors and all("content" not in d for d in deltas)


def test_parallel_calls_off_keeps_the_first():
    got = parse(REPLIES[0][1], "hermes", parallel=False)
    assert [c["function"]["name"] for c in got.calls] == ["get_weather"]


def test_checks_and_prefill():
    assert check_tools(TOOLS) is TOOLS
    for bad in ([{"type": "function"}], [{"type": "function", "function": {"name": "a b"}}],
                [WEATHER, WEATHER]):
        with pytest.raises(ValueError, match="tools"):
            check_tools(bad)
    assert check_tool_choice(None, TOOLS) == "auto" and check_tool_choice(None, None) is None
    assert check_tool_choice({"type": "function", "function": {"name": "add"}}, TOOLS) == "add"
    with pytest.raises(ValueError, match="not one of"):
        check_tool_choice({"type": "function", "function": {"name": "nope"}}, TOOLS)
    with pytest.raises(ValueError, match="needs tools"):
        check_tool_choice("required", None)
    # a named choice begins the call for the model: what it adds completes it
    for style, rest in [("hermes", '{"a": 1}}\n</tool_call>'), ("llama3", '{"a": 1}}'),
                        ("mistral", '{"a": 1}}]')]:
        _, calls = parse_tool_calls(prefill(style, "add") + rest, style)
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [("add", '{"a": 1}')]
    assert prefill("hermes", "auto") == "" and prefill("hermes", "required").endswith('"name": "')


def test_junk_never_raises_and_never_passes_a_bad_call():
    """Random replies around the formats' openings (bad escapes, stray brackets, tags in odd
    places): the parser never raises, every call it passes has a JSON object for arguments,
    and streamed three characters at a time it agrees with the whole."""
    import random

    rng = random.Random(0)
    alphabet = list('{}[]",:;\\ \n<>/_u1') + ["<tool_call>", "</tool_call>", "[TOOL_CALLS]",
                                              '"name"', '"arguments"', "臺北", "true"]
    heads = ["", '<tool_call>{"name": "f", "arguments": ', '[TOOL_CALLS] [{"name": "f", "arguments": ',
             '{"name": "f", "parameters": ', '<tool_call>\n{"name": "f", "arguments": {"a": "']
    for _ in range(800):
        text = rng.choice(heads) + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for style in ("hermes", "llama3", "mistral"):
            whole = parse(text, style)
            assert all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in whole.calls)
            _, got = streamed(text, style, 3)
            assert (got.content, [c["function"] for c in got.calls], [e["error"] for e in got.errors]) \
                == (whole.content, [c["function"] for c in whole.calls], [e["error"] for e in whole.errors])
