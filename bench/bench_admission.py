"""Admission and fairness (issue 19): one greedy client against a small request, before and
after; then 32 / 128 / 256 concurrent streaming clients through the official `openai` client.

Run as:  .venv/bin/python bench/bench_admission.py [--clients 32 128 256] [--cap 20]

A random model of the demo preset with a 4,096-token context (vocabulary: a byte-level BPE
trained on the demo's synthetic chats), 16 slots, served in-process by `create_app` on
uvicorn (127.0.0.1). Each client has its own loopback address (127.0.x.y), which is who it
is to admission when there are no API keys.

Starvation: the small request is a streamed chat, max_tokens 8; its time to first token
(TTFT) alone, then while a greedy client's `n: 128, max_tokens: 4000` (ignore_eos) runs:
- "before": no admission, one FIFO queue (main's code path: no client is given);
- "fair queue only": the engine's queue takes turns between clients, no limits;
- "after": `jielong serve`'s defaults (a client may hold half of slots × context = 32,768
  tokens; 128 queued at most): the n=128 request is refused (400), and the greedy client
  holds what its share allows instead (n=8 × 4000).
A small request that has no token after --cap seconds counts as "> cap".

Load: each of C clients sends --per requests (streamed chats, greedy, max_tokens 16..31) one
after another with the `openai` client (max_retries 10, which waits Retry-After on a 429 or
503); tok/s = completion tokens / wall time; TTFT from the first try; "first try" = answered
200 at once, "retried" = answered after a 429 or 503; errors are what the client raised;
every reply is compared with the same request sent alone.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time

import httpx
import openai
import torch
import uvicorn
from common import machine

from jielong.config import preset
from jielong.demo.tasks import qa_conversations, world_for
from jielong.infer.engine import Engine
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer
from jielong.serve.admission import Admission
from jielong.serve.app import create_app
from jielong.tokenizer import train_tokenizer

SLOTS, CONTEXT = 16, 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, engine, tok, admission):
        app = create_app(engine, tok, "bench", {}, admission=admission)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def close(self):
        self.server.should_exit = True
        self.thread.join()


def client_for(url: str, i: int, statuses: list | None = None, retries: int = 10):
    async def hook(r):
        if statuses is not None:
            statuses.append(r.status_code)

    transport = httpx.AsyncHTTPTransport(local_address=f"127.0.{1 + i // 250}.{1 + i % 250}")
    http = httpx.AsyncClient(transport=transport, timeout=600, event_hooks={"response": [hook]})
    return openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=retries,
                              http_client=http)


async def first_token(c, messages, max_tokens: int, **kw) -> tuple[float, str]:
    t0 = time.perf_counter()
    ttft, parts = None, []
    stream = await c.chat.completions.create(model="bench", messages=messages,
                                             max_tokens=max_tokens, temperature=0,
                                             stream=True, **kw)
    async for ch in stream:
        for choice in ch.choices:
            if choice.delta.content:
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                parts.append(choice.delta.content)
    return (ttft if ttft is not None else time.perf_counter() - t0), "".join(parts)


SMALL = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = [{"role": "user", "content": "Tell me a very long story."}]


async def starvation(url: str, mode: str, cap: float) -> float | None:
    greedy = client_for(url, 0, retries=0)
    small = client_for(url, 1, retries=0)
    hog = []

    async def hold(n: int):
        stream = await greedy.chat.completions.create(
            model="bench", messages=GREEDY, max_tokens=4000, n=n, temperature=0, stream=True,
            extra_body={"ignore_eos": True})
        async for _ in stream:
            pass

    try:
        task = asyncio.create_task(hold(128))
        await asyncio.sleep(1.0)
        if task.done() and isinstance(task.exception(), openai.BadRequestError):
            hog.append("n=128 refused (400)")
            task = asyncio.create_task(hold(8))  # what its share allows
            await asyncio.sleep(1.0)
        try:
            ttft, _ = await asyncio.wait_for(first_token(small, SMALL, 8), cap)
        except TimeoutError:
            ttft = None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await greedy.close()
        await small.close()
    print(f"  {mode}: small TTFT {'> cap' if ttft is None else f'{ttft * 1000:.0f} ms'} "
          f"{' '.join(hog)}", flush=True)
    return ttft


def prompt(i: int, questions: list[str]) -> list[dict]:
    return [{"role": "user", "content": questions[i % len(questions)]}]


async def load(url: str, clients: int, per: int, questions, alone: dict) -> dict:
    statuses: list[int] = []
    ttfts, tokens, errors, same, total = [], 0, [], 0, 0
    answered = {"first": 0, "retried": 0}

    async def one(c: int):
        nonlocal tokens, same, total
        mine: list[int] = []
        cl = client_for(url, c, mine)
        for k in range(per):
            i = (c * per + k) % len(alone)
            before = len(mine)
            try:
                ttft, text = await first_token(cl, prompt(i, questions), 16 + i % 16,
                                               stream_options={"include_usage": False})
            except Exception as e:  # counted
                errors.append(f"{type(e).__name__}: {e}")
                continue
            ttfts.append(ttft)
            tokens += len(text)  # characters; tokens counted below from the tokenizer
            total += 1
            same += text == alone[i]
            answered["retried" if any(s != 200 for s in mine[before:]) else "first"] += 1
        statuses.extend(mine)
        await cl.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(ttfts, n=20) if len(ttfts) > 1 else ttfts * 19
    return {"wall": wall, "ttft_p50": statistics.median(ttfts), "ttft_p95": q[18],
            "errors": errors, "same": same, "total": total, "answered": answered,
            "429": statuses.count(429), "503": statuses.count(503)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[32, 128, 256])
    ap.add_argument("--per", type=int, default=2, help="requests per client")
    ap.add_argument("--cap", type=float, default=20.0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    chats = qa_conversations(world_for(0), seed=0, n_train=3000).train
    text = [m["content"] for r in chats for m in r["messages"]]
    questions = list(dict.fromkeys(r["messages"][0]["content"] for r in chats))[:64]
    tok = train_tokenizer(text, vocab_size=2048)
    cfg = preset("demo", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=0,
                 max_position_embeddings=CONTEXT)
    torch.manual_seed(0)
    net = Transformer(cfg).eval()
    engine = Engine(net, tok, stop_ids={tok.eos_id}, slots=SLOTS, context=CONTEXT).start()
    print(f"demo preset ({cfg.num_params / 1e6:.2f}M parameters, fp32), {SLOTS} slots × "
          f"{CONTEXT} tokens; {machine()}", flush=True)

    share = SLOTS * CONTEXT // 2
    setups = {"before (no admission, one FIFO)": None,
              "fair queue only": Admission(engine),
              "after (jielong serve's defaults)": Admission(engine, 128, 0, share, 600)}
    print("starvation: a small request's TTFT while one client asks n=128 × 4000", flush=True)
    server = Server(engine, tok, setups["after (jielong serve's defaults)"])
    unloaded = asyncio.run(first_token_alone(server.url))
    server.close()
    print(f"  unloaded: {unloaded * 1000:.0f} ms", flush=True)
    rows = {}
    for mode, adm in setups.items():
        server = Server(engine, tok, adm)
        rows[mode] = asyncio.run(starvation(server.url, mode, args.cap))
        server.close()
        while engine.stats()["running"] or engine.stats()["waiting"]:
            time.sleep(0.1)
    print("\n| setup | small request's TTFT | × unloaded |\n|---|---|---|")
    print(f"| unloaded | {unloaded * 1000:.0f} ms | 1.0 |")
    for mode, t in rows.items():
        print(f"| {mode} | " + (f"> {args.cap:.0f} s (no token) | > {args.cap / unloaded:.0f} |"
                                if t is None else f"{t * 1000:.0f} ms | {t / unloaded:.1f} |"))

    alone = {}
    for i in range(len(questions)):
        ids = tok.encode_chat(prompt(i, questions), add_generation_prompt=True)[0]
        alone[i] = engine.complete(ids, SamplingParams(max_tokens=16 + i % 16,
                                                       temperature=0)).text
    print("\n| clients | generated tok/s | TTFT p50 / p95 (ms) | answered first try / after "
          "429-503 retries | 429s / 503s seen | errors | greedy equal to alone |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    for c in args.clients:
        server = Server(engine, tok, Admission(engine, 128, 0, share, 600))
        gen0 = engine.stats()["generated_tokens"]
        r = asyncio.run(load(server.url, c, args.per, questions, alone))
        server.close()
        gen = engine.stats()["generated_tokens"] - gen0
        print(f"| {c} | {gen / r['wall']:,.0f} | {r['ttft_p50'] * 1000:.0f} / "
              f"{r['ttft_p95'] * 1000:.0f} | {r['answered']['first']} / "
              f"{r['answered']['retried']} | {r['429']} / {r['503']} | {len(r['errors'])} | "
              f"{r['same']} of {r['total']} |", flush=True)
        for e in r["errors"][:3]:
            print("   ", e)
    engine.close()


async def first_token_alone(url: str) -> float:
    c = client_for(url, 1, retries=0)
    await first_token(c, SMALL, 8)  # warm-up
    times = [(await first_token(c, SMALL, 8))[0] for _ in range(5)]
    await c.close()
    return statistics.median(times)


if __name__ == "__main__":
    main()
