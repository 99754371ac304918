"""A bounded load check on loopback: 32 streaming clients for 30 seconds against one server,
with no errors, and every greedy reply under load equal to the same request sent alone."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402

CLIENTS, SECONDS = 32, 30
QUESTIONS = ["What is the capital of France?", "台北有什麼好玩的？", "讲一个关于龙的故事。",
             "Write a haiku about rain.", "今天天氣如何？", "How do I boil an egg?",
             "你叫什么名字？", "List three colours."]


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"}]


async def ask(client, i: int) -> str:
    stream = await client.chat.completions.create(
        model="tiny", messages=prompt(i), temperature=0, max_tokens=8 + i % 17, stream=True)
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    return "".join(parts)


async def load(url: str, alone: dict[int, str]) -> dict:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    stats = {"requests": 0, "errors": [], "mismatches": []}
    end = time.monotonic() + SECONDS

    async def one_client(c: int):
        k = c
        while time.monotonic() < end:
            i = k % len(alone)
            try:
                got = await ask(client, i)
            except Exception as e:  # counted: the check is that there are none
                stats["errors"].append(f"{type(e).__name__}: {e}")
                continue
            stats["requests"] += 1
            if got != alone[i]:
                stats["mismatches"].append((i, got, alone[i]))
            k += CLIENTS

    await asyncio.gather(*(one_client(c) for c in range(CLIENTS)))
    await client.close()
    return stats


def test_32_streaming_clients_for_30_seconds(tmp_path):
    model_dir = make_hf_dir(tmp_path, "qwen2")
    model, tok, gen = open_model(model_dir)
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=CLIENTS).start()
    try:
        with serving(create_app(engine, tok, "tiny", gen)) as url:
            async def each_alone():
                client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
                out = {i: await ask(client, i) for i in range(64)}
                await client.close()
                return out

            alone = asyncio.run(each_alone())
            stats = asyncio.run(load(url, alone))
            assert engine.stats()["running"] == 0
    finally:
        engine.close()
    assert stats["errors"] == []
    assert stats["mismatches"] == []
    assert stats["requests"] >= CLIENTS  # every client got through at least once
    assert len(set(alone.values())) > 8  # the replies differ: the comparison means something
