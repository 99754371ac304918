"""Shared test helpers: tiny models, the shared real-text folder, running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Deterministic, quiet, and small on a 2-core CI machine. Under pytest-xdist (`make test` runs
# one worker a core) each worker, and each CLI it starts, gets its share of the cores: tiny
# models gain nothing from a second thread, and threads of two workers on one core wait on
# each other.
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run `jielong ARGS…` in a subprocess, as a user would (`input` goes to its stdin)."""
    env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "jielong.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, input=input)


def tiny_corpus(n: int = 300) -> list[str]:
    """Mixed English / Traditional / Simplified Chinese / digits documents."""
    en = ["The cat sat on the mat near the river.", "Numbers like 12 and 345 add up to 357.",
          "Mei lives in Maple town and keeps a goose."]
    hant = ["今天天氣很好，我們去河邊散步。", "阿明住在龍鄉，他養了一隻貓。", "書店裡有很多書。"]
    hans = ["今天天气很好，我们去河边散步。", "阿明住在龙乡，他养了一只猫。", "书店里有很多书。"]
    docs = []
    for i in range(n):
        docs.append(" ".join([en[i % 3], hant[(i + 1) % 3], hans[(i + 2) % 3], f"{i} + {i % 7} = {i + i % 7}"]))
    return docs


def write_jsonl(path, rows):
    """Rows (objects, or raw strings for malformed lines) as a JSONL file; returns the path."""
    import json

    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def kill_fit_during(module, monkeypatch, call: int):
    """Make `module.fit` raise RuntimeError("killed") in the `call`-th loss computation, as a
    killed run would; undo with `monkeypatch.setattr(module, "fit", real)` (returned)."""
    real = module.fit

    def killed_fit(model, stage, cfg, run, **k):
        loss, calls = stage.loss, [0]

        def dies(m, batch):
            calls[0] += 1
            if calls[0] == call:
                raise RuntimeError("killed")
            return loss(m, batch)
        stage.loss = dies
        return real(model, stage, cfg, run, **k)

    monkeypatch.setattr(module, "fit", killed_fit)
    return real


@contextmanager
def serving(app):
    """`app` served by uvicorn on a free port of 127.0.0.1, in a thread; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def make_adapter(model_dir, out, seed: int, **model_kw):
    """A LoRA adapter saved to `out`, on a copy of the model in `model_dir` (or on a "test"
    preset model of another shape), whose B factors are random so that it changes what the
    model says."""
    from jielong.adapter_files import save_adapter
    from jielong.checkpoint import load_model
    from jielong.config import preset
    from jielong.lora import LoraConfig, add_adapter
    from jielong.model import Transformer

    torch.manual_seed(seed)
    net = load_model(model_dir) if not model_kw else Transformer(preset("test", **model_kw))
    add_adapter(net, LoraConfig(r=4, alpha=8), name="x")
    with torch.no_grad():
        for n, p in net.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.3)
    return save_adapter(net, out, name="x")


# A news-like article, the same with three characters changed, and a different article on
# the same topic (artificial intelligence) written independently.
ZH_AI = ("人工智慧正在改變我們的生活方式。從手機上的語音助理到自動駕駛汽車，機器學習的應用已經無處不在。"
         "研究人員指出，未來十年內，大型語言模型將會成為各行各業的基礎工具，協助醫師判讀影像、幫助律師整理案例，"
         "也讓學生能夠隨時提出問題並得到解答。然而，這項技術同時帶來隱私與安全的挑戰，個人資料可能在不知不覺中被蒐集與分析。"
         "政府和企業需要共同制定清楚的規範，確保技術發展符合社會利益，並讓一般民眾了解這些系統的能力與限制。"
         "專家也提醒，教育體系應該及早培養學生的數位素養，使下一代能夠善用工具，而不是被工具所左右。")
ZH_AI_EDITED = ZH_AI.replace("改變", "改造", 1).replace("十年", "五年", 1).replace("律師", "法官", 1)
ZH_AI_OTHER = ("近年來，人工智慧的發展速度令人驚訝。許多科技公司投入大量資源研發聊天機器人，希望提升客戶服務的效率，"
               "並且降低人力成本。不過，使用者在體驗這些新產品時，也發現系統偶爾會給出錯誤甚至虛構的答案。"
               "一位大學教授表示，判斷資訊真偽的能力比以往更加重要，讀者應該查證來源，而不是全盤接受機器的說法。"
               "另一方面，藝術家與作家擔心自己的作品被拿去訓練模型卻沒有得到授權或報酬，相關的著作權爭議仍在法院審理中。")


@contextmanager
def one_thread_tiny_model(tmp_path: Path):
    """A freshly saved test-preset model (its tokenizer trained on 60 tiny documents) in
    tmp_path/base, with torch on one thread inside the block: for a training command run on
    it in-process."""
    from jielong.checkpoint import save_model
    from jielong.config import preset
    from jielong.model import Transformer
    from jielong.tokenizer import train_tokenizer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = train_tokenizer(tiny_corpus(60), vocab_size=300)
        torch.manual_seed(0)
        yield save_model(tmp_path / "base", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
    finally:
        torch.set_num_threads(before)
