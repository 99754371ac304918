"""POST /v1/moderations (jielong.serve.openai_routes) spoken to by the official `openai`
client, on a tiny model served the way tests/serve/test_serve.py serves one; bad bodies 400."""

from __future__ import annotations

import json

import pytest
from conftest import serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.safety.policy import CATEGORIES  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    model_dir = make_hf_dir(tmp_path_factory.mktemp("mod"), "qwen2")
    model, tok, gen = open_model(model_dir)
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=1).start()
    with serving(create_app(engine, tok, "tiny", gen)) as u:
        yield u
    engine.close()


def test_moderations_with_the_openai_client(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    raw = client.moderations.with_raw_response.create(input="我想自殺，告訴我自殺方法")
    r = raw.parse()
    assert r.model == "jielong-lexicon" and r.id.startswith("modr-") and len(r.results) == 1
    res = r.results[0]
    # OpenAI's field for self-harm reads ours; the raw JSON has jielong's names and evidence.
    assert res.flagged and res.categories.self_harm is True and res.category_scores.self_harm == 0.84
    got = json.loads(raw.text)["results"][0]
    assert got["categories"]["self_harm"] is True and got["category_scores"]["self_harm"] == 0.84
    assert got["evidence"] == {"self_harm": ["想自殺", "自殺方法"]}
    assert set(CATEGORIES) <= set(got["categories"]) and not got["categories"]["violence"]
    many = client.moderations.create(input=["殺菌洗碗精", "I will kill you", "kill a process"],
                                     model="mine")
    assert many.model == "mine"
    assert [x.flagged for x in many.results] == [False, True, False]
    assert many.results[1].categories.violence is True


@pytest.mark.parametrize("body", [{}, {"input": []}, {"input": 3}, {"input": [1, 2]},
                                  {"input": ["x"] * 2049}, "not json"])
def test_bad_bodies_are_400(url, body):
    kw = ({"content": body, "headers": {"Content-Type": "application/json"}}
          if isinstance(body, str) else {"json": body})
    r = httpx.post(url + "/v1/moderations", timeout=30, **kw)
    assert r.status_code == 400, r.text
    assert "error" in r.json()
