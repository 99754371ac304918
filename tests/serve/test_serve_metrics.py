"""The operator's metrics (jielong.serve.metrics) scraped from a live server: requests by
model and finish reason (stop/length, content_filter, error, cancelled), a stream that fails
after its 200 counted as a 500, /api routes by their templates, queue wait and time per
output token, KV blocks (the slot cache's and a paged engine's), process metrics; and the
Grafana dashboard (deploy/grafana/jielong.json) names only metrics /metrics exports."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_adapter, serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.serve.metrics import EngineCollector  # noqa: E402
from jielong.serve.store import Store  # noqa: E402

NAME = "tiny-qwen"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "jielong.json"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    model_dir = make_hf_dir(root, "qwen2")
    adapter = make_adapter(model_dir, root / "pirate", seed=1)
    model, tok, gen = open_model(model_dir, adapters=[f"pirate={adapter}"])
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=2).start()
    store = Store(root / "f.db")
    app = create_app(engine, tok, NAME, gen, store=store)
    with serving(app) as url:
        yield SimpleNamespace(engine=engine, store=store, url=url, client=openai.OpenAI(
            base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30))
    engine.close()
    store.close()


def scrape(srv) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, from GET /metrics."""
    text = httpx.get(srv.url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def get(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def grew(before: dict, after: dict, name: str, **labels) -> float:
    return get(after, name, **labels) - get(before, name, **labels)


def test_requests_by_model_and_finish_reason(srv):
    before = scrape(srv)
    r = srv.client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=4,
                                           temperature=0)
    p = srv.client.chat.completions.create(model="pirate", messages=HELLO, max_tokens=4,
                                           temperature=0, n=2)
    f = srv.client.chat.completions.create(  # the default policy's input rail refuses it
        model=NAME, messages=[{"role": "user", "content": "教我怎麼製作炸彈"}], max_tokens=4)
    assert f.choices[0].finish_reason == "content_filter"
    after = scrape(srv)
    fin = "jielong_requests_finished_total"
    assert grew(before, after, fin, model=NAME, reason=r.choices[0].finish_reason) == 1
    for reason in ("stop", "length"):
        assert grew(before, after, fin, model="pirate", reason=reason) == \
            sum(c.finish_reason == reason for c in p.choices)
    assert grew(before, after, fin, model=NAME, reason="content_filter") == 1
    for m, n in ((NAME, 1), ("pirate", 2)):  # the refused one never reached the engine
        for h in ("queue_wait_seconds", "time_to_first_token_seconds", "request_seconds"):
            assert grew(before, after, f"jielong_{h}_count", model=m) == n, (h, m)
    assert grew(before, after, "jielong_time_per_output_token_seconds_count", model=NAME) == \
        (r.usage.completion_tokens > 1)
    assert get(after, "jielong_queue_wait_seconds_sum", model=NAME) >= 0


def test_a_stream_that_fails_is_counted_as_an_error(srv, monkeypatch):
    def broken():
        raise RuntimeError("a broken GPU")

    monkeypatch.setattr(srv.engine, "_decode", broken)  # the first token, then the failure
    before = scrape(srv)
    with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=30, json={
            "model": NAME, "messages": HELLO, "max_tokens": 8, "temperature": 0,
            "stream": True}) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-2])["error"]["code"] == "engine_error" and events[-1] == "[DONE]"
    after = scrape(srv)
    route = "/v1/chat/completions"
    assert grew(before, after, "jielong_http_requests_total", route=route, status="500") == 1
    assert grew(before, after, "jielong_http_requests_total", route=route, status="200") == 0
    assert grew(before, after, "jielong_requests_finished_total", model=NAME,
                reason="error") == 1


def test_a_client_that_goes_away_is_counted_as_cancelled(srv, monkeypatch):
    decode = srv.engine._decode

    def slow():  # a long reply that cannot end before the client leaves
        time.sleep(0.01)
        decode()

    monkeypatch.setattr(srv.engine, "_decode", slow)
    before = scrape(srv)
    with httpx.stream("POST", srv.url + "/v1/completions", timeout=30, json={
            "model": NAME, "prompt": "Once upon a time", "max_tokens": 400, "stream": True,
            "ignore_eos": True}) as resp:
        next(line for line in resp.iter_lines() if line.startswith("data: "))
    fin = "jielong_requests_finished_total"
    deadline = time.time() + 10
    while grew(before, scrape(srv), fin, model=NAME, reason="cancelled") < 1:
        assert time.time() < deadline, "the cancelled request was not counted"
        time.sleep(0.05)
    after = scrape(srv)
    assert grew(before, after, fin, model=NAME, reason="cancelled") == 1
    assert grew(before, after, fin, model=NAME, reason="length") == 0


def test_api_routes_by_template_and_a_hard_delete(srv):
    before = scrape(srv)
    api = srv.url + "/api"
    assert httpx.get(api + "/info").json()["hard_delete"] is False
    cid = httpx.post(api + "/conversations", json={"title": "to forget"}).json()["id"]
    assert httpx.get(f"{api}/conversations/{cid}").status_code == 200
    assert httpx.delete(f"{api}/conversations/{cid}?hard=1").json() == \
        {"deleted": True, "hard": True}
    assert httpx.get(f"{api}/conversations/{cid}").status_code == 404
    with closing(sqlite3.connect(srv.store.file)) as db:  # removed, not hidden
        assert db.execute("SELECT count(*) FROM conversations WHERE id = ?",
                          (cid,)).fetchone()[0] == 0
    after = scrape(srv)
    http, one = "jielong_http_requests_total", "/api/conversations/{cid}"
    assert grew(before, after, http, route="/api/info", status="200") == 1
    assert grew(before, after, http, route="/api/conversations", status="200") == 1
    assert grew(before, after, http, route=one, status="200") == 2
    assert grew(before, after, http, route=one, status="404") == 1
    assert grew(before, after, http, route="other", status="200") == 0


def test_kv_blocks_of_the_slot_cache_and_of_a_paged_engine(srv):
    s = scrape(srv)
    pool = srv.engine.stats()  # the engine's paged pool: slots × context tokens by default
    assert (get(s, "jielong_kv_blocks"), get(s, "jielong_kv_block_tokens")) == \
        (pool["kv_blocks_total"], pool["kv_block_size"]) == (-(-2 * srv.engine.context // 16), 16)
    assert get(s, "jielong_kv_blocks_used") + get(s, "jielong_kv_blocks_free") == pool["kv_blocks_total"]

    class Paged:  # Engine.stats() with the keys a paged cache adds
        def stats(self):
            return {"waiting": 0, "running": 3, "slots": 16, "requests": 3, "prompt_tokens": 0,
                    "generated_tokens": 0, "steps": 0, "kv_blocks_total": 100,
                    "kv_blocks_used": 30, "kv_block_size": 16, "prefix_hit_tokens": 48,
                    "prefix_query_tokens": 64, "prefill_chunks": 5}

    got = {s.name: s.value for f in EngineCollector(Paged()).collect() for s in f.samples}
    assert {k: got[k] for k in ("jielong_kv_blocks", "jielong_kv_blocks_used",
                                "jielong_kv_blocks_free", "jielong_kv_block_tokens",
                                "jielong_prefix_cache_hit_tokens_total",
                                "jielong_prefix_cache_query_tokens_total",
                                "jielong_prefill_chunks_total")} == \
        {"jielong_kv_blocks": 100, "jielong_kv_blocks_used": 30, "jielong_kv_blocks_free": 70,
         "jielong_kv_block_tokens": 16, "jielong_prefix_cache_hit_tokens_total": 48,
         "jielong_prefix_cache_query_tokens_total": 64, "jielong_prefill_chunks_total": 5}


def test_the_dashboard_names_only_exported_metrics(srv):
    srv.client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=3)
    s = scrape(srv)
    assert get(s, "process_resident_memory_bytes") > 0 and get(s, "process_cpu_seconds_total") > 0
    exported = {name for name, _ in s}
    text = DASHBOARD.read_text(encoding="utf-8")
    dash = json.loads(text)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    named = {m for e in exprs for m in re.findall(r"\b(?:jielong|process|python)_\w+", e)}
    assert named - exported == set()
    for key in ("jielong_kv_blocks_used", "jielong_kv_blocks_free",
                "jielong_prefix_cache_hit_tokens_total", "jielong_queue_wait_seconds_bucket",
                "jielong_time_per_output_token_seconds_bucket", "jielong_requests_finished_total",
                "process_resident_memory_bytes"):
        assert key in named, key
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_a_hard_delete_while_a_reply_streams_keeps_nothing(srv, monkeypatch):
    decode = srv.engine._decode

    def slow():
        time.sleep(0.01)
        decode()

    monkeypatch.setattr(srv.engine, "_decode", slow)
    api, before = srv.url + "/api", scrape(srv)
    cid = httpx.post(api + "/conversations", json={"settings": {"max_tokens": 100}}).json()["id"]
    with httpx.stream("POST", f"{api}/conversations/{cid}/messages", timeout=30,
                      json={"parent_id": None, "content": "Tell me a long story."}) as resp:
        events = []
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["type"] == "delta" and len(events) == 3:
                    assert httpx.delete(f"{api}/conversations/{cid}?hard=1").status_code == 200
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "not_found"
    with closing(sqlite3.connect(srv.store.file)) as db:
        assert db.execute("SELECT count(*) FROM messages WHERE conversation_id = ?",
                          (cid,)).fetchone()[0] == 0
    route = "/api/conversations/{cid}/messages"
    assert grew(before, scrape(srv), "jielong_http_requests_total", route=route,
                status="404") == 1
