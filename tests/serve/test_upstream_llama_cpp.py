"""`jielong serve --upstream` in front of llama.cpp's server (llama-cpp-python's `[server]`
extra, `python -m llama_cpp.server`) loading our GGUF export (`jielong export gguf`) of a
tiny model, on loopback: greedy chat through the front equals llama.cpp's own (streamed and
not), the rails answer in front without asking it, the web chat's send goes through, and a
small concurrent load has no error.

llama-cpp-python is not a dependency (only a source build is available, which would slow
every CI run): this test runs where JIELONG_LLAMA_PYTHON names a Python that has it, e.g.

    python3 -m venv ~/llama-venv && CMAKE_ARGS="-DGGML_OPENMP=OFF -DGGML_NATIVE=OFF" \\
        ~/llama-venv/bin/pip install 'llama-cpp-python[server]'
    JIELONG_LLAMA_PYTHON=~/llama-venv/bin/python pytest tests/serve/test_upstream_llama_cpp.py

and is skipped elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import one_thread_tiny_model, serving

pytest.importorskip("fastapi")
pytest.importorskip("gguf")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from jielong.export.gguf import export_gguf  # noqa: E402
from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine  # noqa: E402
from jielong.infer.sampling import SamplingParams  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.serve.store import Store  # noqa: E402
from jielong.serve.upstream import UpstreamEngine  # noqa: E402

LLAMA_PYTHON = os.environ.get("JIELONG_LLAMA_PYTHON")
HELLO = [{"role": "user", "content": "從前有一隻貓"}]
GREEDY = {"temperature": 0, "max_tokens": 16}


def has_llama_server(python: str | None) -> bool:
    if not python or not Path(python).is_file():
        return False
    r = subprocess.run([python, "-c", "import llama_cpp.server.app"], capture_output=True)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not has_llama_server(LLAMA_PYTHON),
                                reason="JIELONG_LLAMA_PYTHON does not name a Python with "
                                       "llama-cpp-python[server]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    with one_thread_tiny_model(root) as model_dir:
        gguf = export_gguf(model_dir, root / "tiny.gguf", "f32")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([LLAMA_PYTHON, "-m", "llama_cpp.server", "--model", str(gguf),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "256",
                             "--n_threads", "1", "--n_batch", "64",
                             # by default a new request cuts the one streaming (its stream
                             # ends with no finish_reason: a 502 here); queue them instead
                             "--interrupt_requests", "False"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    try:
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.time() < deadline, "llama.cpp's server did not start in 90 s"
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        engine = UpstreamEngine(url + "/v1", context=256).start()
        store = Store(root / "front.db")
        with serving(create_app(engine, None, "tiny-gguf", store=store)) as front:
            def client(u):
                return openai.OpenAI(base_url=u + "/v1", api_key="unused", max_retries=0,
                                     timeout=60)
            yield {"direct": client(url), "front": client(front), "url": front,
                   "store": store, "engine": engine, "model_dir": model_dir}
        store.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_greedy_chat_through_the_front_equals_llama_cpps_own(llama):
    want = llama["direct"].chat.completions.create(model=llama["engine"].model,
                                                   messages=HELLO, **GREEDY)
    text = want.choices[0].message.content
    assert text, "the tiny model should say something"
    got = llama["front"].chat.completions.create(model="tiny-gguf", messages=HELLO, **GREEDY)
    assert got.choices[0].message.content == text
    assert got.choices[0].finish_reason == want.choices[0].finish_reason
    # and both are jielong's own greedy reply on the model exported, from the same prompt
    # (llama.cpp rendered the chat template the GGUF carries as jielong renders it)
    net, tok, gen = open_model(llama["model_dir"])
    local = Engine(net, tok, stop_ids(tok, gen, net.config.eos_token_id), slots=1).start()
    ids = tok.encode_chat(HELLO, add_generation_prompt=True)[0]
    mine = local.complete(ids, SamplingParams(max_tokens=GREEDY["max_tokens"], temperature=0))
    local.close()
    assert text == mine.text and want.usage.prompt_tokens == len(ids)
    # its streams carry no usage: the front counts a token per chunk
    assert got.usage.completion_tokens == want.usage.completion_tokens
    chunks = list(llama["front"].chat.completions.create(model="tiny-gguf", messages=HELLO,
                                                         stream=True, **GREEDY))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.id for c in llama["front"].models.list().data] == ["tiny-gguf"]


def test_rails_web_chat_and_a_small_load_in_front_of_llama_cpp(llama):
    r = llama["front"].chat.completions.create(
        model="tiny-gguf", messages=[{"role": "user", "content": "I want to kill myself tonight"}],
        **GREEDY)
    assert r.choices[0].finish_reason == "content_filter"
    assert "findahelpline.com" in r.choices[0].message.content

    conv = httpx.post(llama["url"] + "/api/conversations",
                      json={"settings": {"temperature": 0, "max_tokens": 16}}).json()
    with httpx.stream("POST", f"{llama['url']}/api/conversations/{conv['id']}/messages",
                      json={"content": HELLO[0]["content"]}, timeout=60) as resp:
        events = [json.loads(x[6:]) for x in resp.iter_lines() if x.startswith("data: ")]
    assert events[-1]["type"] == "done", events[-1]
    solo = llama["front"].chat.completions.create(model="tiny-gguf", messages=HELLO, **GREEDY)
    assert events[-1]["message"]["content"] == solo.choices[0].message.content

    async def load() -> list[str]:
        client = openai.AsyncOpenAI(base_url=llama["url"] + "/v1", api_key="unused",
                                    max_retries=0, timeout=120)

        async def one() -> str:
            s = await client.chat.completions.create(model="tiny-gguf", messages=HELLO,
                                                     stream=True, **GREEDY)
            return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
        try:
            return await asyncio.gather(*(one() for _ in range(8)))
        finally:
            await client.close()

    assert asyncio.run(load()) == [solo.choices[0].message.content] * 8
