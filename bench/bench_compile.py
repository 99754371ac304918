"""Decode speed: eager vs the compiled step (jielong.infer.compiled), in generate_ids and the engine.

Run as:  .venv/bin/python bench/bench_compile.py [--preset 124m] [--dtype bfloat16] [--engine 1 8]

Random weights of a preset, batch 1, a 32-token prompt and 128 new tokens, greedy (no early
stop), `--threads` torch threads. Decode tokens/s = (new - 1) / (time of the whole call - the
time of a call that makes one token): prefill left out, as llama.cpp's eval rate does; also
by CPU time (this process's, ÷ threads), which a busy machine distorts less than the clock. The
first compiled call's time (compiling, or loading the compiled graph from inductor's cache on
disk) is reported apart. With --engine N…: N concurrent greedy requests through the serving
engine (64 new tokens each), generated tokens/s over the wall time, eager vs compiled.
The load average is printed with every figure: on a shared machine, compare only figures
taken under the same load.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from common import median

from jielong.config import preset
from jielong.infer.engine import Engine
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


class Digits:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def decode_rate(model, prompts, new: int, compile: bool, rounds: int) -> tuple[float, float, list]:
    """(tokens/s by the clock, tokens/s by this process's CPU time ÷ threads, tokens)."""
    one, full = SamplingParams(max_tokens=1, temperature=0), SamplingParams(max_tokens=new, temperature=0)
    out, times, cpu = None, [], []
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        out = generate_ids(model, prompts, full, compile=compile)
        t_full, c_full = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        generate_ids(model, prompts, one, compile=compile)
        times.append(t_full - (time.perf_counter() - t))
        cpu.append((c_full - (time.process_time() - c)) / torch.get_num_threads())
    n = len(prompts) * (new - 1)
    return n / median(times), n / median(cpu), out


def engine_rate(model, n: int, new: int, compile: bool, vocab: int) -> float:
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, vocab, (n, 32), generator=g).tolist()
    s = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    engine = Engine(model, Digits(), slots=max(n, 1), compile=compile).start()
    try:
        # warm up (compile: batch 1, then a batch of n — inductor's 0/1 specialisation)
        engine.complete(prompts[0], SamplingParams(max_tokens=8, temperature=0))
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda p: engine.complete(p, SamplingParams(max_tokens=8, temperature=0)), prompts))
        t = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            done = list(pool.map(lambda p: engine.complete(p, s), prompts))
        wall = time.perf_counter() - t
    finally:
        engine.close()
    return sum(len(d.token_ids) for d in done) / wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="124m")
    ap.add_argument("--vocab", type=int, default=None, help="default: the preset's")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine", type=int, nargs="*", default=[], help="concurrent requests")
    ap.add_argument("--skip_generate", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = preset(args.preset, **({"vocab_size": args.vocab} if args.vocab else {}))
    model = Transformer(cfg).eval().to(getattr(torch, args.dtype))
    prompts = torch.randint(1, cfg.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0)).tolist()
    print(f"{args.preset} preset ({cfg.num_params / 1e6:.1f}M params, vocab {cfg.vocab_size}), {args.dtype}, "
          f"{args.threads} threads, torch {torch.__version__}")
    if not args.skip_generate:
        with torch.inference_mode():  # as generate_ids is called: a change of mode recompiles
            t = time.perf_counter()
            generate_ids(model, prompts, SamplingParams(max_tokens=args.new, temperature=0), compile=True)
            print(f"  first compiled call (compile or cache load): {time.perf_counter() - t:.1f} s ({load()})")
            eager, eager_cpu, out_e = decode_rate(model, prompts, args.new, False, args.rounds)
            print(f"  eager     decode {eager:7.1f} tok/s, by CPU time {eager_cpu:7.1f} ({load()})")
            comp, comp_cpu, out_c = decode_rate(model, prompts, args.new, True, args.rounds)
            print(f"  compiled  decode {comp:7.1f} tok/s, by CPU time {comp_cpu:7.1f} ({load()})  "
                  f"× eager {comp / eager:.2f} (by CPU time {comp_cpu / eager_cpu:.2f})")
        same = sum(a == b for a, b in zip(out_e[0], out_c[0], strict=True))
        print(f"  greedy tokens equal: {same}/{len(out_e[0])}")
    for n in args.engine:
        rates = {c: engine_rate(model, n, 64, c, cfg.vocab_size) for c in (False, True)}
        print(f"  engine, {n} concurrent: eager {rates[False]:.1f} tok/s, compiled {rates[True]:.1f} "
              f"tok/s, × {rates[True] / rates[False]:.2f} ({load()})")


if __name__ == "__main__":
    main()
