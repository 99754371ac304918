"""RLHF throughput: replies sampled, scored and trained on per second, and the sampling
part against transformers' `generate`.

Run as:  .venv/bin/python bench/bench_rlhf.py [--device cuda] [--presets test demo]

For each model size: a random model of that preset (with a byte-level BPE tokenizer trained
on the demo's synthetic chats) runs GRPO steps on arithmetic prompts with the built-in
`arithmetic` reward, through the same stage and loop as `jielong train rlhf` (full
finetuning, a frozen reference copy, β = 0.04), after one warm-up step. A random model
rarely samples an end token (~3% of replies stop early), so nearly every reply runs to --new
tokens: about the worst case, and the same work on every run (sampling is seeded). replies/s = replies / loop seconds; the split says where the time goes
(sampling, reward, reference log-probs, the training forward; "rest" is backward and
optimizer).

Sampling alone, side by side: the same weights in transformers' LlamaForCausalLM / Qwen2
(`generate`, do_sample, temperature 1, top-k off, KV cache, the same left-padded prompts,
no early stop) and `generate_ids`; median new tokens/s over alternating rounds.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
from common import machine, median, model_pair, timed

from jielong.config import preset
from jielong.demo.tasks import qa_conversations, world_for
from jielong.hub import stop_ids
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.rewards import arithmetic, checked
from jielong.tokenizer import train_tokenizer
from jielong.train.loop import TrainConfig, fit
from jielong.train.rlhf import Prompt, RLConfig, RLStage


def arithmetic_prompts(tok) -> list[Prompt]:
    data = qa_conversations(world_for(0), seed=0, n_train=3000)
    out = []
    for rec in data.train:
        m = rec["messages"]
        if len(m) == 2 and "=" in m[1]["content"]:  # one-turn sums: "7 + 5 = 12."
            p = Prompt("", m[:1], {"reference": m[1]["content"]})
            p.ids = tok.encode_chat(p.messages, add_generation_prompt=True)[0]
            out.append(p)
    return out


def sampling_ratio(ours, theirs, prompts: list[list[int]], new: int, rounds: int, dev) -> dict:
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):], mask[i, L - len(p):] = torch.tensor(p), 1
    ids, mask = ids.to(dev), mask.to(dev)
    s = SamplingParams(max_tokens=new, temperature=1.0, seed=0)

    def run_ours():
        out = generate_ids(ours, prompts, s, set())
        assert all(len(o) == new for o in out)

    @torch.no_grad()
    def run_theirs():
        out = theirs.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                              top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                              eos_token_id=None, pad_token_id=0)
        assert out.shape[1] == L + new

    times = {"jielong": [], "transformers": []}
    for _ in range(rounds):
        times["jielong"] += timed(run_ours, 1)
        times["transformers"] += timed(run_theirs, 1)
    return {k: B * new / median(v) for k, v in times.items()}


def rl_throughput(model, tok, prompts: list[Prompt], args, dev) -> dict:
    rl = RLConfig(group=args.group, max_new_tokens=args.new, beta=0.04, eval_prompts=0)
    reward = checked(arithmetic, "arithmetic")

    def run(steps: int) -> tuple[RLStage, dict]:
        cfg = TrainConfig(steps=steps, batch_size=args.prompts, lr=1e-5, warmup_steps=0,
                          schedule="constant", weight_decay=0.0, eval_every=10**6,
                          save_every=steps, device=str(dev))
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        stage = RLStage(model, tok, prompts, [], reward, rl, cfg,
                        stop_ids(tok, {}, model.config.eos_token_id), reference)
        with tempfile.TemporaryDirectory() as d:
            summary = fit(model, stage, cfg, d, tokenizer=tok, desc="rlhf")
        return stage, summary

    run(1)  # warm-up: lazy imports, allocator, first-call costs
    stage, summary = run(args.steps)
    seconds = summary["seconds"]
    split = {k: v / seconds for k, v in stage.timings.items()}
    split["rest"] = 1 - sum(split.values())
    return {"replies_s": stage.replies / seconds, "step_s": seconds / args.steps, "split": split}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["test", "demo"])
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--group", type=int, default=8, help="replies per prompt")
    ap.add_argument("--new", type=int, default=48, help="tokens per reply (no early stop)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)

    chats = qa_conversations(world_for(0), seed=0, n_train=3000).train
    text = [m["content"] for r in chats for m in r["messages"]]
    tok = train_tokenizer(text, vocab_size=2048)
    prompts = arithmetic_prompts(tok)
    print(f"RLHF (GRPO, full finetuning + reference copy), {args.prompts} prompts × {args.group} "
          f"replies × {args.new} new tokens a step, vocabulary {tok.vocab_size}; {machine()}")
    header = (f"{'preset':7s} {'params':>7s} {'replies/s':>10s} {'s/step':>7s}   "
              f"{'sample':>6s} {'reward':>6s} {'ref':>5s} {'fwd':>5s} {'rest':>5s}   "
              f"{'sampling tok/s: jielong':>24s} {'transformers':>12s} {'ratio':>6s}")
    rows = []
    for name in args.presets:
        cfg = preset(name, vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=0)
        ours, theirs = model_pair(cfg)
        ours.to(dev).eval()
        theirs.to(dev).eval()
        batch = [p.ids for p in prompts[:args.prompts] for _ in range(args.group)]
        gen = sampling_ratio(ours, theirs, batch, args.new, args.rounds, dev)
        del theirs
        t = time.perf_counter()
        rl = rl_throughput(ours, tok, prompts, args, dev)
        sp = rl["split"]
        rows.append(f"{name:7s} {cfg.num_params / 1e6:6.2f}M {rl['replies_s']:10.1f} "
                    f"{rl['step_s']:7.2f}   {sp['generate']:6.0%} {sp['reward']:6.0%} "
                    f"{sp['logp']:5.0%} {sp['train']:5.0%} {sp['rest']:5.0%}   "
                    f"{gen['jielong']:24,.0f} {gen['transformers']:12,.0f} "
                    f"{gen['jielong'] / gen['transformers']:6.2f}")
        print(f"  {name}: done in {time.perf_counter() - t:.0f} s", flush=True)
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
