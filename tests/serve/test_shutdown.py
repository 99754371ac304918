"""Graceful shutdown of a real `jielong serve` process (jielong.serve.server): SIGTERM in the
middle of streams drains them (each choice gets its finish_reason, the stream its [DONE]), the
web chat's reply in flight is stored "interrupted", the summary is printed and the exit code
is 0; a reply a crash left unfinished is marked "interrupted" when the server starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from jielong.serve.store import Store  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_mid_stream_drains_and_exits_0(tmp_path):
    model = make_hf_dir(tmp_path, "qwen2")
    db = tmp_path / "chat.db"
    with Store(db) as store:  # a reply a crash left empty
        c = store.create_conversation()
        q = store.add_message(c["id"], None, "user", "你好")
        crashed = store.add_message(c["id"], q["id"], "assistant", "", model="x")
        cid, qid = c["id"], q["id"]
    port = free_port()
    env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jielong.cli", "serve", "--model", str(model), "--db", str(db),
         "--port", str(port), "--slots", "1", "--drain_seconds", "0", "--client_tokens", "99999", "--safety", "off",
         "--log_level", "warning"], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        lines: list[str] = []
        chat: list[dict] = []
        started, asked = threading.Event(), threading.Event()

        def v1():  # 6 choices, one slot: most are still waiting at the signal
            body = {"model": str(model.name), "messages": [{"role": "user", "content": "Hi"}],
                    "n": 6, "max_tokens": 200, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
                if r.status_code != 200:
                    lines.append(r.read().decode())
                    started.set()
                for x in r.iter_lines():
                    if x.startswith("data: "):
                        lines.append(x)
                        started.set()

        def web():
            body = {"parent_id": None, "content": "講個故事", "settings": {"max_tokens": 200}}
            conv = httpx.post(url + "/api/conversations", json={}).json()
            with httpx.stream("POST", url + f"/api/conversations/{conv['id']}/messages",
                              json=body, timeout=60) as r:
                for x in r.iter_lines():
                    if x.startswith("data: "):
                        chat.append(json.loads(x[6:]))
                        asked.set()

        threads = [threading.Thread(target=f, daemon=True) for f in (v1, web)]
        threads[0].start()
        assert started.wait(30) and lines[0].startswith("data: "), lines[:1]
        threads[1].start()  # the web chat's reply is queued behind the six
        assert asked.wait(30), chat
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        _, err = proc.communicate(timeout=30)
        stopped = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert stopped < 10, stopped
    assert "served " in err and "were cut" in err  # the summary, and the drain's line
    assert lines[-1] == "data: [DONE]"
    finish = {}
    for x in lines[:-1]:
        for ch in json.loads(x[6:])["choices"]:
            finish[ch["index"]] = finish.get(ch["index"]) or ch["finish_reason"]
    assert sorted(finish) == list(range(6)) and set(finish.values()) == {"length"}
    with Store(db) as store:
        assert store.message(crashed["id"])["finish_reason"] == "interrupted"
        assert [m["finish_reason"] for m in store.path(crashed["id"])] == [None, "interrupted"]
        replies = [m for conv in store.list_conversations() if conv["id"] != cid
                   for m in store.conversation(conv["id"])["messages"]
                   if m["role"] == "assistant"]
    assert qid and replies and all(m["finish_reason"] == "interrupted" for m in replies)
    assert chat and chat[-1]["type"] == "done"
    assert chat[-1]["message"]["finish_reason"] == "interrupted"
