"""The engine's paged KV cache, prefix caching and chunked prefill (issue 19, item 4), each
against the engine without it, on a random tiny model with a long context (demo preset:
4 layers, width 128, context 4096), token ids only (no tokenizer, no HTTP).

Run as:  .venv/bin/python bench/bench_kv.py [--requests 48] [--old_engine FILE]

1. Requests that fit in the same memory: a KV budget of 8 slots × 4096 tokens (the old slot
   cache's for `--slots 8`) serves --requests chat-sized requests (prompts of 100–500 tokens,
   64 tokens each reply, all sent at once): paged, up to --requests run at once in that
   memory; the slot cache runs 8. Measured: most requests running at once, peak blocks held,
   generated tokens/s, wall time. With --old_engine (the engine before this change, e.g.
   `git show 35b5351:src/jielong/infer/engine.py > /tmp/old_engine.py`) the slot cache runs
   the same requests with 8 slots and with --requests slots (then in that many times the
   memory), which also measures what gathering the blocks costs a decode step. Medians of
   --rounds runs, the engines taking turns.
2. A multi-turn chat: a 1,000-token system prompt, then turns of a 40-token user message and a
   32-token reply; each turn's prompt is the whole conversation so far. Time to first token
   of turns 2–6 with and without the prefix cache; and a second user's first turn with the
   same system prompt. Medians of --rounds runs, each on a fresh engine.
3. Decode stall: 4 streams decoding when a 2,000-token prompt arrives; the longest gap between
   two tokens of a running stream from its arrival until its first token, with the whole
   prompt prefilled in one step and in chunks of --chunk tokens (and that prompt's TTFT);
   medians of --rounds runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import threading
import time

import torch
from common import machine

from jielong.config import preset
from jielong.infer.engine import Engine
from jielong.infer.kv import bytes_per_token
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer


class Ids:
    """A tokenizer stand-in: the engine decodes text; token i is one character."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(0x4E00 + i % 20000) for i in ids)


def tokens(seed: int, n: int, vocab: int) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def fit(make, prompts: list[list[int]], new: int) -> dict:
    """All prompts at once; peak running, peak blocks, tok/s."""
    e = make().start()
    e.complete(prompts[0][:8], greedy(2))  # warm-up
    left = threading.Semaphore(0)
    t0 = time.perf_counter()
    for p in prompts:
        e.submit(p, greedy(new), on_event=lambda ev: left.release() if ev.finish_reason else None)
    peak_running = peak_blocks = 0
    done = 0
    while done < len(prompts):
        if left.acquire(timeout=0.05):
            done += 1
        s = e.stats()
        peak_running = max(peak_running, s["running"])
        peak_blocks = max(peak_blocks, s.get("kv_blocks_used", 0))
    wall = time.perf_counter() - t0
    e.close()
    return {"running": peak_running, "blocks": peak_blocks, "tok_s": len(prompts) * new / wall,
            "wall": wall}


def chat(engine: Engine, system: list[int], user: int, turns: int, vocab: int) -> list[float]:
    """TTFT of each turn of one conversation."""
    history, out = list(system), []
    for t in range(turns):
        history += tokens(1000 * user + t, 40, vocab)
        req = engine.submit(history, greedy(32))
        while req.finished_at is None:
            time.sleep(0.001)
        out.append(req.ttft)
        history += req.output
    return out


def stall(model, chunk: int | None, long: list[int], vocab: int) -> dict:
    e = Engine(model, Ids(), slots=8, context=4096, prefill_chunk=chunk).start()
    times: dict[int, list[float]] = {i: [] for i in range(4)}
    streams = [e.submit(tokens(50 + i, 100, vocab), greedy(4000 - 100),
                        on_event=lambda ev, i=i: times[i].append(time.perf_counter()))
               for i in range(4)]
    while min(len(t) for t in times.values()) < 20:  # all decoding
        time.sleep(0.01)
    arrive = time.perf_counter()
    big = e.submit(long, greedy(4))
    while big.first_token_at is None:
        time.sleep(0.001)
    first = big.first_token_at
    for s in streams:
        s.cancel()
    e.close()
    gaps = [b - a for t in times.values() for a, b in zip(t, t[1:], strict=False)
            if b >= arrive and a <= first]
    before = [b - a for t in times.values() for a, b in zip(t, t[1:], strict=False) if b < arrive]
    return {"stall": max(gaps), "ttft": first - arrive, "gap_before": statistics.median(before)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="medians of this many runs")
    ap.add_argument("--old_engine", help="engine.py of the slot-cache engine, for the 8-slot row")
    args = ap.parse_args()
    vocab, context, slots = 512, 4096, 8
    torch.manual_seed(0)
    model = Transformer(preset("demo", vocab_size=vocab, max_position_embeddings=context)).eval()
    per_token = bytes_per_token(model)
    print(f"demo preset, context {context}, {per_token} KV bytes a token; {machine()}", flush=True)

    # 1. requests that fit
    prompts = [tokens(i, int(torch.randint(100, 501, (1,), generator=torch.Generator().manual_seed(i))),
                      vocab) for i in range(args.requests)]
    blocks = slots * context // 16
    print(f"\n1. {args.requests} requests (prompts of {min(map(len, prompts))}–{max(map(len, prompts))} "
          f"tokens, 64 new), KV memory {slots} × {context} tokens = {blocks * 16 * per_token / 1e6:.0f} MB")
    makers = {}
    if args.old_engine:
        spec = importlib.util.spec_from_file_location("old_engine", args.old_engine)
        old = sys.modules["old_engine"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        makers["slot cache (before), 8 slots"] = lambda: old.Engine(
            model, Ids(), slots=slots, context=context)
        makers[f"slot cache (before), {args.requests} slots: {args.requests // slots}× the memory"] = (
            lambda: old.Engine(model, Ids(), slots=args.requests, context=context))
    makers["paged, 8 slots"] = lambda: Engine(model, Ids(), slots=slots, context=context)
    makers[f"paged, {args.requests} slots, same memory"] = lambda: Engine(
        model, Ids(), slots=args.requests, context=context, kv_blocks=blocks)
    runs = {name: [] for name in makers}
    for _ in range(args.rounds):  # alternating, so a busy spell of the machine hits them all
        for name, make in makers.items():
            runs[name].append(fit(make, prompts, 64))
    rows = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    print(f"| engine | most running at once | peak KV blocks held (of {blocks}) | generated tok/s | wall s |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['running']:.0f} | {r['blocks'] or '—'} | {r['tok_s']:.0f} | {r['wall']:.1f} |")

    # 2. multi-turn chat
    system = tokens(999, 1000, vocab)
    print("\n2. chat: 1,000-token system prompt, 40-token messages, 32-token replies; TTFT ms")
    print("| prefix cache | turn 1 | turn 2 | turn 3 | turn 4 | turn 5 | turn 6 | 2nd user, turn 1 | hit rate |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    turns: dict[bool, list[list[float]]] = {False: [], True: []}
    rate = {}
    for _ in range(args.rounds):
        for on in (False, True):
            e = Engine(model, Ids(), slots=4, context=context, prefix_cache=on).start()
            e.complete(system[:8], greedy(2))
            turns[on].append(chat(e, system, 1, 6, vocab) + chat(e, system, 2, 1, vocab))
            s = e.stats()
            e.close()
            rate[on] = s["prefix_hit_tokens"] / max(1, s["prefix_query_tokens"])
    for on, runs in turns.items():
        print(f"| {'on' if on else 'off'} | " + " | ".join(f"{statistics.median(t) * 1e3:.0f}"
                                                          for t in zip(*runs, strict=True))
              + f" | {rate[on]:.0%} |", flush=True)

    # 3. decode stall
    long = tokens(4242, 2000, vocab)
    print("\n3. a 2,000-token prompt arrives while 4 streams decode")
    print("| prefill | longest gap between a stream's tokens, ms | median gap before, ms | the long prompt's TTFT, ms |")
    print("| --- | --- | --- | --- |")
    stalls: dict[int | None, list[dict]] = {None: [], args.chunk: []}
    for _ in range(args.rounds):
        for chunk in stalls:
            stalls[chunk].append(stall(model, chunk, long, vocab))
    for chunk, runs in stalls.items():
        r = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        name = "whole prompt in one step" if chunk is None else f"chunks of {chunk} tokens"
        print(f"| {name} | {r['stall'] * 1e3:.0f} | {r['gap_before'] * 1e3:.0f} | {r['ttft'] * 1e3:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
