"""Constrained decoding (jielong.infer.constrain): every reply of a random model parses and
validates; the requests without a grammar decode exactly as alone; tool calls name a tool
and hold its arguments to their schema."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from jielong.checkpoint import load_model
from jielong.errors import UserError
from jielong.hub import stop_ids
from jielong.infer import constrain
from jielong.infer.engine import Engine
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.tokenizer import Tokenizer

pytest.importorskip("llguidance")
pytest.importorskip("transformers")
from constrained import nudged, valid  # noqa: E402
from hf_families import make_hf_dir  # noqa: E402

PROMPTS = ["Give me a city as JSON.", "請用 JSON 回答：你住在哪個城市？", "请用 JSON 回答：你住在哪个城市？"]
PERSON = {"type": "object", "properties": {
    "city": {"enum": ["台北", "上海", "London"]},
    "name": {"type": "string", "maxLength": 6},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
    "home": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {
        "zip": {"type": "string", "maxLength": 4}}, "required": ["zip"], "additionalProperties": False}]},
    "ok": {"type": "boolean"}},
    "required": ["city", "name", "age", "tags", "home", "ok"], "additionalProperties": False}
ADD = {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                                     "b": {"type": "integer", "minimum": -99, "maximum": 99}},
    "required": ["a", "b"], "additionalProperties": False}}}
CITY = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["臺北", "北京", "Paris"]}},
    "required": ["city"], "additionalProperties": False}}}


def test_the_validator_can_fail():
    good = {"city": "台北", "name": "阿明", "age": 9, "tags": ["a"], "home": None, "ok": True}
    assert valid(good, PERSON)
    for bad in [{**good, "city": "Tokyo"}, {**good, "age": 151}, {**good, "age": True},
                {**good, "extra": 1}, {k: v for k, v in good.items() if k != "ok"},
                {**good, "home": {"zip": "12345"}}, {**good, "tags": ["a", "b", "c"]}]:
        assert not valid(bad, PERSON), bad


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    d = make_hf_dir(tmp_path_factory.mktemp("constrain"), "qwen2")
    return load_model(d).eval(), Tokenizer.from_dir(d), d


@pytest.fixture(scope="module")
def engine(qwen):
    model, tok, _ = qwen
    e = Engine(model, tok, stop_ids(tok, {}, model.config.eos_token_id), slots=8).start()
    yield e
    e.close()


def test_bad_schemas_and_formats_are_user_errors():
    for bad, words in [({"type": "strin"}, "Invalid type: strin"),
                       ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum (5)"),
                       ({"type": "string", "pattern": "(("}, "unclosed group"),
                       ({"properties": 3}, "properties must be an object"),
                       ({"type": "object", "properties": {"a": {"$ref": "#/defs/x"}}}, "/defs/x")]:
        with pytest.raises(UserError, match=re.escape(words)):
            constrain.json_schema(bad)
    with pytest.raises(UserError, match="Unknown format"):
        constrain.json_schema({"type": "string", "format": "weird"}, strict=True)
    constrain.json_schema({"type": "string", "format": "weird"}, strict=False)  # ignored
    assert constrain.response_format(None) is None
    assert constrain.response_format({"type": "text"}) is None
    with pytest.raises(UserError, match="'xml'"):
        constrain.response_format({"type": "xml"})
    with pytest.raises(UserError, match="json_schema"):
        constrain.response_format({"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(UserError, match="'nope'"):
        constrain.tool_call_grammar([ADD], "hermes", {"type": "function", "function": {"name": "nope"}})
    assert constrain.tool_call_grammar([ADD], "hermes", "auto") is None
    assert constrain.tool_call_grammar([ADD], "hermes", "none") is None


def test_every_sampled_reply_validates_and_the_others_in_the_batch_are_unchanged(qwen, engine):
    model, tok, _ = qwen
    g = constrain.response_format({"type": "json_schema", "json_schema": {
        "name": "person", "schema": PERSON, "strict": True}})
    prompts = [tok.encode(p) for p in PROMPTS]
    plain = [generate_ids(model, [p], SamplingParams(12, temperature=0), engine.stop_ids)[0]
             for p in prompts]

    def ask(i):
        if i % 4 == 3:  # a greedy request without a grammar, in the same batch
            return engine.complete(prompts[i % 3], SamplingParams(12, temperature=0))
        return engine.complete(prompts[i % 3], SamplingParams(160, temperature=1.0, seed=i, grammar=g))

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, range(24)))
    han = 0
    for i, c in enumerate(got):
        if i % 4 == 3:
            assert c.token_ids == plain[i % 3], i
            continue
        assert c.finish_reason == "stop", (i, c.text)
        assert valid(json.loads(c.text), PERSON), c.text
        assert "\ufffd" not in c.text
        han += bool(re.search(r"[\u4e00-\u9fff]", c.text))
    assert han >= 12  # 台北 / 上海 and Chinese in the free strings, whole characters


def test_any_json_object_greedy_and_sampled(qwen):
    model, tok, _ = qwen
    m = nudged(qwen[2], tok)
    e = Engine(m, tok, stop_ids(tok, {}, m.config.eos_token_id), slots=8).start()
    try:
        g = constrain.response_format({"type": "json_object"})
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: e.complete(tok.encode(PROMPTS[i % 3]), SamplingParams(
                96, temperature=0 if i < 3 else 1.0, seed=i, grammar=g)), range(24)))
        for c in got:
            assert c.finish_reason == "stop", c.text
            assert isinstance(json.loads(c.text), dict)
        # generate_ids holds every row of a batch to the grammar too
        outs = generate_ids(m, [tok.encode(p) for p in PROMPTS], SamplingParams(96, temperature=1.0,
                            seed=3, grammar=g), tok.end_ids, tok=tok)
        for o in outs:
            assert isinstance(json.loads(tok.decode(o)), dict)
    finally:
        e.close()


@pytest.mark.parametrize("style", ["hermes", "llama3", "mistral"])
def test_tool_calls_name_a_tool_and_hold_its_arguments(qwen, engine, style):
    _, tok, _ = qwen
    named = {"type": "function", "function": {"name": "weather"}}
    jobs = [(choice, names, seed) for choice, names in [("required", {"add", "weather"}),
                                                         (named, {"weather"})] for seed in range(5)]

    def ask(job):
        g = constrain.tool_call_grammar([ADD, CITY], style, job[0], parallel=False)
        return engine.complete(tok.encode("天氣？"), SamplingParams(96, temperature=1.0, seed=job[2],
                                                               grammar=g))

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, jobs))
    for (_, names, _), c in zip(jobs, got, strict=True):
        assert c.finish_reason == "stop", c.text
        if style == "hermes":
            bodies = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", c.text)
            assert "\n".join(f"<tool_call>\n{b}\n</tool_call>" for b in bodies) == c.text
            calls = [json.loads(b) for b in bodies]
        elif style == "llama3":
            calls = [json.loads(c.text)]
        else:
            assert c.text.startswith("[TOOL_CALLS]")
            calls = json.loads(c.text[len("[TOOL_CALLS]"):])
        key = "parameters" if style == "llama3" else "arguments"
        assert len(calls) == 1
        for call in calls:
            assert set(call) == {"name", key} and call["name"] in names
            tool = ADD if call["name"] == "add" else CITY
            assert valid(call[key], tool["function"]["parameters"]), call


def accepts(tok, g, text: str) -> bool:
    """Whether `g` lets `text`'s tokens through one by one and may then stop."""
    m = g.matcher(tok)
    for t in tok.encode(text):
        if not m.allowed()[t]:
            return False
        m.advance(t)
    return bool(m.allowed()[sorted(tok.end_ids)].any())


def test_parallel_calls_and_what_the_grammars_refuse(qwen):
    _, tok, _ = qwen
    two = ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": -2}}\n</tool_call>\n'
           '<tool_call>\n{"name": "weather", "arguments": {"city": "臺北"}}\n</tool_call>')
    assert accepts(tok, constrain.tool_call_grammar([ADD, CITY], "hermes", "required"), two)
    one = constrain.tool_call_grammar([ADD, CITY], "hermes", "required", parallel=False)
    assert not accepts(tok, one, two)
    assert accepts(tok, one, two.split("\n<tool_call>")[0])
    assert not accepts(tok, one, '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>')
    assert not accepts(tok, one, '<tool_call>\n{"name": "sub", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    mistral = constrain.tool_call_grammar([ADD], "mistral", "required")
    assert accepts(tok, mistral, '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}, '
                                 '{"name": "add", "arguments": {"a": 3, "b": 4}}]')
    schema = constrain.json_schema(PERSON)
    assert accepts(tok, schema, json.dumps({"city": "上海", "name": "小明", "age": 3, "tags": ["書"],
                                            "home": {"zip": "100"}, "ok": False}, ensure_ascii=False))
    assert not accepts(tok, schema, '{"city": "上海"}')
    assert not accepts(tok, constrain.json_object(), '[1, 2]')
