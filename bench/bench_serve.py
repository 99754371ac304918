"""Serving throughput: `jielong serve` with 1, 8 and 32 concurrent streaming clients, against
the same engine taking one request at a time and transformers' `generate` one request at a
time, on the same model and prompts.

Run as:  .venv/bin/python bench/bench_serve.py [--preset demo] [--device cuda] [--requests 64]
         [--dtype bfloat16] [--quantize int8] [--no_pack]
         .venv/bin/python bench/bench_serve.py --clients 1 --profile loop.pstats   # where it goes

A random model of the preset (vocabulary: a byte-level BPE trained on the demo's synthetic
chats) is served in-process: `create_app` on uvicorn, 127.0.0.1.
Every request is a streamed `POST /v1/completions`: greedy, `max_tokens` --new, `ignore_eos`,
so every reply is the same length everywhere. Clients are asyncio tasks (httpx), each sending
its next request as soon as its last one ends, until --requests are done.

- generated tokens/s: completion tokens (from the usage chunk) / wall time of the run;
- time to first token: from sending a request to its first content chunk (p50, p95);
- "engine, one at a time": the same server and engine with one slot (so one request runs at a
  time; the HTTP path is the same) and one client;
- "engine alone (no HTTP)": the same requests handed to a fresh engine of --clients-max slots
  directly, all at once: the engine's own throughput, so the HTTP layer's share shows;
- "transformers generate": `model.generate` on the same weights, one prompt at a time,
  greedy, exactly --new tokens, in this process (no HTTP);
- with --batched (meant for a GPU): also transformers' `generate` on --clients-max prompts at
  once (left-padded), the whole batch's tokens / its time;
- everything loads as `jielong serve` loads (jielong.runtime.decoding_memory: torch's large
  allocations in 2 MB pages, freed memory kept by malloc), the peers too;
- CPU per generated token (Linux), split by thread: the server's event loop (the HTTP layer:
  routes, rails, SSE, sockets), the clients (this process's asyncio loop: httpx and JSON),
  and the rest of the process (the engine's thread and torch's worker threads). CPU time,
  unlike wall time, hardly moves when other jobs share the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import queue
import socket
import statistics
import threading
import time

import httpx
import torch
import uvicorn
from common import machine, model_pair

from jielong.config import preset
from jielong.demo.tasks import qa_conversations, world_for
from jielong.infer.engine import Engine
from jielong.infer.sampling import SamplingParams
from jielong.quant import pack_linears, quantize
from jielong.runtime import decoding_memory
from jielong.serve.app import create_app
from jielong.tokenizer import train_tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn serving `create_app(engine, …)` in a thread, on 127.0.0.1."""

    def __init__(self, model, tok, slots: int, context: int, threads: int, profile=None):
        self.engine = Engine(model, tok, stop_ids=set(), slots=slots, context=context,
                             threads=threads).start()
        app = create_app(self.engine, tok, "bench", {})
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        run = self.server.run if profile is None else lambda: profile.runcall(self.server.run)
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}/v1/completions"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.engine.close()


def thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds `thread` has used (Linux's /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_split(server: Server) -> dict[str, float]:
    """CPU seconds so far: the server's loop, the clients (this thread), the whole process."""
    t = os.times()
    return {"loop": thread_cpu(server.thread), "clients": thread_cpu(threading.current_thread()),
            "process": t.user + t.system}


def measured(server: Server, url: str, prompts: list[str], clients: int, requests: int,
             new: int) -> dict:
    """`load`, with the CPU each part used per generated token (µs)."""
    before = cpu_split(server)
    r = asyncio.run(load(url, prompts, clients, requests, new))
    used = {k: v - before[k] for k, v in cpu_split(server).items()}
    per = 1e6 / max(1, r["tokens"])
    r["cpu_us"] = {"loop": used["loop"] * per, "clients": used["clients"] * per,
                   "engine": (used["process"] - used["loop"] - used["clients"]) * per}
    return r


async def one_request(client, url: str, prompt: str, new: int) -> tuple[float, int, str]:
    """(seconds to the first content chunk, completion tokens, text) of one streamed request."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": new, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    t0 = time.perf_counter()
    ttft, tokens, text = None, 0, []
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                text.append(chunk["choices"][0]["text"])
                ttft = ttft if ttft is not None else time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (ttft if ttft is not None else time.perf_counter() - t0), tokens, "".join(text)


async def load(url: str, prompts: list[str], clients: int, requests: int, new: int) -> dict:
    todo = iter(range(requests))
    ttfts: list[float] = []
    texts: dict[int, str] = {}
    tokens = 0

    async def client_loop(client):
        nonlocal tokens
        for i in todo:
            t, n, texts[i] = await one_request(client, url, prompts[i % len(prompts)], new)
            ttfts.append(t)
            tokens += n

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_request(client, url, prompts[0], 2)  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(ttfts, n=20) if len(ttfts) > 1 else ttfts * 19
    return {"tok_s": tokens / wall, "ttft_p50": statistics.median(ttfts), "ttft_p95": q[18],
            "tokens": tokens, "seconds": wall, "texts": texts}


def engine_alone(model, tok, prompts: list[str], slots: int, context: int, threads: int,
                 requests: int, new: int) -> dict:
    """The same requests handed to a fresh engine of `slots` rows directly, all at once (no
    HTTP, no clients): what the engine itself sustains, next to the served rows."""
    engine = Engine(model, tok, stop_ids=set(), slots=slots, context=context, threads=threads).start()
    done: queue.SimpleQueue = queue.SimpleQueue()
    params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    t0 = time.perf_counter()
    reqs = [engine.submit(tok.encode(prompts[i % len(prompts)]), params, None,
                          lambda e: e.finish_reason and done.put(e)) for i in range(requests)]
    for _ in reqs:
        done.get()
    wall = time.perf_counter() - t0
    engine.close()
    return {"tok_s": sum(len(r.output) for r in reqs) / wall, "seconds": wall,
            "texts": {i: tok.decode(r.output) for i, r in enumerate(reqs)}}


@torch.no_grad()
def in_thread(threads: int, fn, *args):
    """fn(*args) in a thread of its own with `threads` torch threads: where the engine runs,
    so that the peer gets the same footing (this process's main thread keeps one)."""
    out = {}

    def run():
        torch.get_num_threads()  # a new thread's first use sets its count: before ours
        torch.set_num_threads(threads)
        out["r"] = fn(*args)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["r"]


def hf_one_at_a_time(theirs, tok, prompts: list[str], requests: int, new: int, dev) -> dict:
    ids = [torch.tensor([tok.encode(p)], device=dev) for p in prompts]
    theirs.generate(ids[0], max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
    t0, tokens = time.perf_counter(), 0
    for i in range(requests):
        x = ids[i % len(ids)]
        out = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
        tokens += out.shape[1] - x.shape[1]
    return {"tok_s": tokens / (time.perf_counter() - t0)}


@torch.no_grad()
def hf_batched(theirs, tok, prompts: list[str], batch: int, new: int, dev) -> dict:
    enc = [tok.encode(prompts[i % len(prompts)]) for i in range(batch)]
    L = max(len(e) for e in enc)
    ids = torch.zeros(batch, L, dtype=torch.long)
    mask = torch.zeros(batch, L, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, L - len(e):], mask[i, L - len(e):] = torch.tensor(e), 1
    ids, mask = ids.to(dev), mask.to(dev)
    run = lambda: theirs.generate(ids, attention_mask=mask, max_new_tokens=new,  # noqa: E731
                                  min_new_tokens=new, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)
    run()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"tok_s": batch * new / (time.perf_counter() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=64, help="requests per measurement")
    ap.add_argument("--new", type=int, default=64, help="tokens per reply")
    ap.add_argument("--quantize", choices=["int8", "int4"], help="weight-only, as `jielong serve --quantize`")
    ap.add_argument("--no_pack", action="store_true", help="plain F.linear weights on a CPU "
                    "(`jielong serve` packs them for oneDNN: jielong.quant.pack_linears)")
    ap.add_argument("--batched", action="store_true", help="also transformers' batched generate")
    ap.add_argument("--profile", metavar="FILE", help="profile the server's event loop (its "
                    "thread's CPU time) under the --clients runs; pstats to FILE, top printed")
    args = ap.parse_args()
    with decoding_memory():  # what `jielong serve` loads under (its peer runs under it too)
        run(args)


def run(args) -> None:
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    threads = torch.get_num_threads()  # the engine's (Engine's `threads`); this thread: one,
    torch.set_num_threads(1)           # as `jielong serve` does (jielong.infer.engine.one_thread)

    chats = qa_conversations(world_for(0), seed=0, n_train=3000).train
    text = [m["content"] for r in chats for m in r["messages"]]
    prompts = [r["messages"][0]["content"] for r in chats[:256]]
    tok = train_tokenizer(text, vocab_size=2048)
    cfg = preset(args.preset, vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=0)
    ours, theirs = model_pair(cfg)
    ours, theirs = ours.to(dev, dtype).eval(), theirs.to(dev, dtype).eval()
    if args.quantize:
        quantize(ours, args.quantize)
    if dev.type == "cpu" and not args.no_pack:  # what `jielong serve` does
        pack_linears(ours)
    context = min(cfg.max_position_embeddings, 512)
    how = f"{args.dtype}{', ' + args.quantize if args.quantize else ''}" \
          f"{', packed' if dev.type == 'cpu' and not args.no_pack else ''}"
    print(f"serving {args.preset} ({cfg.num_params / 1e6:.1f}M parameters, {how}), "
          f"{args.requests} streamed requests × {args.new} tokens; {machine()}", flush=True)

    rows = {}
    server = Server(ours, tok, slots=1, context=context, threads=threads)
    rows["engine, one at a time"] = measured(server, server.url, prompts, 1, args.requests, args.new)
    server.close()
    print(f"  engine one at a time: {rows['engine, one at a time']['tok_s']:.0f} tok/s", flush=True)
    rows["transformers generate, one at a time"] = in_thread(threads, hf_one_at_a_time,
        theirs, tok, prompts, max(8, args.requests // 4), args.new, dev)
    profile = cProfile.Profile(time.thread_time) if args.profile else None
    server = Server(ours, tok, slots=max(args.clients), context=context, threads=threads,
                    profile=profile)
    for c in args.clients:
        rows[f"jielong serve, {c} clients"] = measured(server, server.url, prompts, c,
                                                       max(args.requests, c), args.new)
        print(f"  {c} clients: {rows[f'jielong serve, {c} clients']['tok_s']:.0f} tok/s", flush=True)
    server.close()
    c = max(args.clients)
    rows[f"engine alone (no HTTP), {c} at once"] = engine_alone(
        ours, tok, prompts, c, context, threads, max(args.requests, c), args.new)
    if profile is not None:
        profile.dump_stats(args.profile)
        pstats.Stats(args.profile).sort_stats("cumulative").print_stats(40)
    if args.batched:
        rows[f"transformers generate, batch of {max(args.clients)}"] = in_thread(threads, hf_batched,
            theirs, tok, prompts, max(args.clients), args.new, dev)

    alone = rows["engine, one at a time"]["texts"]
    for name, r in rows.items():
        if "texts" in r:
            same = sum(alone.get(i) == t for i, t in r["texts"].items() if i in alone)
            print(f"  {name}: {same} of {sum(i in alone for i in r['texts'])} greedy replies "
                  "equal to the same request alone")
    seq = rows["engine, one at a time"]["tok_s"]
    hf = rows["transformers generate, one at a time"]["tok_s"]
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    print("\n| | generated tok/s | × engine one at a time | × transformers one at a time "
          "| TTFT p50 / p95 (ms) | CPU µs per token: server loop / clients / engine |"
          "\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        ttft = (f"{1000 * r['ttft_p50']:.0f} / {1000 * r['ttft_p95']:.0f}" if "ttft_p50" in r else "")
        cpu = " / ".join(f"{r['cpu_us'][k]:,.0f}" for k in ("loop", "clients", "engine")) \
            if "cpu_us" in r else ""
        print(f"| {name} | {r['tok_s']:,.0f} | {r['tok_s'] / seq:.2f} | {r['tok_s'] / hf:.2f} | "
              f"{ttft} | {cpu} |")


if __name__ == "__main__":
    main()
