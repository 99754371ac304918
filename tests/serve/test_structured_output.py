"""response_format json_object and json_schema through the official `openai` client: every
reply parses and validates, streamed or not; a bad schema is a 400 naming response_format."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
pytest.importorskip("llguidance")
openai = pytest.importorskip("openai")

from constrained import nudged, valid  # noqa: E402

from jielong.hub import stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.tokenizer import Tokenizer  # noqa: E402

NAME = "tiny-json"
CITY = {"type": "object", "properties": {
    "city": {"enum": ["臺北", "上海", "Paris"]}, "note": {"type": "string", "maxLength": 5},
    "days": {"type": "integer", "minimum": 1, "maximum": 30}},
    "required": ["city", "note", "days"], "additionalProperties": False}
ASK = [{"role": "user", "content": "你想去哪個城市？用 JSON 回答。"}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = make_hf_dir(tmp_path_factory.mktemp("json"), "qwen2")
    tok = Tokenizer.from_dir(d)
    model = nudged(d, tok)
    engine = Engine(model, tok, stop_ids(tok, {}, model.config.eos_token_id), slots=8).start()
    with serving(create_app(engine, tok, NAME)) as url:
        yield SimpleNamespace(client=openai.OpenAI(base_url=url + "/v1", api_key="unused",
                                                   max_retries=0, timeout=60))
    engine.close()


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "trip", "schema": schema, "strict": True}}


def test_json_schema_and_json_object_replies_parse_and_validate(srv):
    for seed in range(6):
        r = srv.client.chat.completions.create(model=NAME, messages=ASK, seed=seed, n=2,
                                               max_tokens=120, response_format=schema_format(CITY))
        for c in r.choices:
            assert c.finish_reason == "stop" and valid(json.loads(c.message.content), CITY), c
        r = srv.client.chat.completions.create(model=NAME, messages=ASK, seed=seed, max_tokens=120,
                                               response_format={"type": "json_object"})
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    stream = srv.client.chat.completions.create(model=NAME, messages=ASK, seed=7, max_tokens=120,
                                                stream=True, response_format=schema_format(CITY))
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert valid(json.loads(text), CITY) and json.loads(text)["city"] in CITY["properties"]["city"]["enum"]
    plain = srv.client.chat.completions.create(model=NAME, messages=ASK, max_tokens=5,
                                               response_format={"type": "text"})
    assert plain.choices[0].finish_reason in ("stop", "length")


def test_a_bad_schema_or_format_is_a_400_naming_it(srv):
    for rf, words in [(schema_format({"type": "strin"}), "Invalid type: strin"),
                      (schema_format({"type": "integer", "minimum": 3, "maximum": 1}), "minimum"),
                      ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema"),
                      ({"type": "yaml"}, "'yaml'")]:
        with pytest.raises(openai.BadRequestError) as e:
            srv.client.chat.completions.create(model=NAME, messages=ASK, response_format=rf)
        assert words in e.value.message and e.value.param == "response_format", e.value.message
