"""Training throughput: our pretraining step vs transformers' LlamaForCausalLM.

Run as:  .venv/bin/python bench/bench_train.py [--device cuda] [--preset demo]

Same config, same initial weights, same batches and optimizer (AdamW). Each side computes
the loss the way its training code does: transformers upcasts the logits and applies
cross-entropy (what its ForCausalLMLoss does); jielong uses its fused output-projection +
cross-entropy (train/losses.py), as `jielong pretrain` does. Rounds alternate between the two so that
machine noise hits both alike; tokens/s is the median over rounds.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import machine, median, model_pair, timed

from jielong.config import preset
from jielong.train.losses import linear_cross_entropy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    cfg = preset(args.preset, vocab_size=args.vocab, tie_word_embeddings=False)
    ours, theirs = model_pair(cfg)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, args.vocab, (args.steps, args.batch, args.seq + 1), generator=g).to(dev)
    amp = torch.autocast("cuda", torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    def ours_loss(m, x, y):
        return linear_cross_entropy(m(x, hidden_only=True), m.lm_head.weight, y)

    def theirs_loss(m, x, y):
        logits = m(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def trainer(model, loss_of):
        model.to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run():
            for batch in data:
                with amp:
                    loss = loss_of(model, batch[:, :-1], batch[:, 1:])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
        return run

    runs = {"jielong": trainer(ours, ours_loss), "transformers": trainer(theirs, theirs_loss)}
    for r in runs.values():
        r()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, r in runs.items():
            times[k] += timed(r, 1)
    tokens = args.steps * args.batch * args.seq
    tps = {k: tokens / median(v) for k, v in times.items()}
    print(f"training step, {args.preset} preset ({cfg.num_params / 1e6:.1f}M params), batch "
          f"{args.batch}×{args.seq}, {machine()}")
    for k, v in tps.items():
        print(f"  {k:13s} {v:10,.0f} tokens/s")
    print(f"  ratio (jielong / transformers): {tps['jielong'] / tps['transformers']:.2f}")


if __name__ == "__main__":
    main()
