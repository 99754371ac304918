"""Generation throughput: our KV-cache decoding vs transformers' `generate`, greedy.

Run as:  .venv/bin/python bench/bench_generate.py [--device cuda] [--batch 1]

The same weights, the same prompt ids, greedy decoding of a fixed number of new tokens
(no early stop). Checks that both produce the same tokens, then reports median tokens/s
over alternating rounds.
"""

from __future__ import annotations

import argparse

import torch
from common import machine, median, model_pair, timed

from jielong.config import preset
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    cfg = preset(args.preset, vocab_size=args.vocab)
    ours, theirs = model_pair(cfg)
    dev = torch.device(args.device)
    ours.to(dev).eval()
    theirs.to(dev).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, args.vocab, (args.batch, args.prompt), generator=g)
    s = SamplingParams(max_tokens=args.new, temperature=0)

    def run_ours():
        return generate_ids(ours, prompts.tolist(), s)

    @torch.no_grad()
    def run_theirs():
        out = theirs.generate(prompts.to(dev), attention_mask=torch.ones_like(prompts).to(dev),
                              do_sample=False, max_new_tokens=args.new, min_new_tokens=args.new,
                              eos_token_id=None, pad_token_id=0)
        return out[:, args.prompt:].tolist()

    same = run_ours() == run_theirs()
    times = {"jielong": [], "transformers": []}
    for _ in range(args.rounds):
        times["jielong"] += timed(run_ours, 1)
        times["transformers"] += timed(run_theirs, 1)
    tps = {k: args.batch * args.new / median(v) for k, v in times.items()}
    print(f"greedy generation, {args.preset} preset ({cfg.num_params / 1e6:.1f}M params), batch "
          f"{args.batch}, prompt {args.prompt} + {args.new} new tokens, {machine()}")
    print(f"  identical tokens: {same}")
    for k, v in tps.items():
        print(f"  {k:13s} {v:10,.0f} tokens/s")
    print(f"  ratio (jielong / transformers): {tps['jielong'] / tps['transformers']:.2f}")


if __name__ == "__main__":
    main()
