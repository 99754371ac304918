"""DPO training throughput: jielong's `train dpo` step vs TRL's DPOTrainer.

Run as:  .venv/bin/python bench/bench_dpo.py [--preset test] [--batch 8] [--rounds 3]

One random model of the preset (the tiny "test" one by default: 2 layers, width 64) and a
BPE tokenizer trained on the synthetic corpus are saved once with
`jielong.checkpoint.save_model`; jielong loads them with `load_model`, TRL gets
`AutoModelForCausalLM.from_pretrained` (sdpa attention) and `AutoTokenizer` of the same
folder. Both train on the same pairs (a user prompt and two replies, cut from the synthetic
corpus), rendered with the same ChatML template: the script checks that TRL's token ids
equal jielong's. Both use the sigmoid loss with the same β, fp32 on the CPU, AdamW at a
constant learning rate with gradient clipping at 1, and reference log-probs precomputed
once before training (jielong always does; TRL with `precompute_ref_log_probs=True`), so
neither runs a reference model while stepping. Batches are taken in order on both sides
(TRL: `train_sampling_strategy="sequential"`; jielong's stage gets a sequential sampler),
so each step sees the same (2·batch, T) padded batch on both.

Each side runs its whole training loop — jielong's `fit` with `DPOStage`, TRL's
`trainer.train()` — for --steps steps per round, rounds alternating so that machine noise
hits both alike. A step's time is the interval between two consecutive step ends (the
loop's per-step metrics hook; TRL's `on_step_end` callback), so it includes batching,
forward, backward, clipping, the optimizer and per-step logging, and leaves out start-up
and the final save. tokens/s counts the real (unpadded) tokens of chosen and rejected.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch
from common import machine

from jielong.checkpoint import load_model, save_model
from jielong.config import preset
from jielong.data.chat import IGNORE
from jielong.data.preferences import PrefPair, encode_response
from jielong.demo.world import build_corpus
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer
from jielong.train.dpo import DPOStage, Objective
from jielong.train.loop import TrainConfig, fit
from jielong.train.reference import reference_logps


def quiet():
    """Neither loop's progress bar nor log lines in the output."""
    sink = io.StringIO()
    return redirect_stdout(sink), redirect_stderr(sink)


class InOrder:
    """Batches in data order, as TRL's sequential sampler gives them."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        return [(step * self.batch_size + i) % self.n for i in range(self.batch_size)]

    def epochs(self, steps: int) -> float:
        return steps * self.batch_size / self.n


def make_pairs(n: int, prompt_chars: int, reply_chars: int) -> list[PrefPair]:
    text = " ".join(build_corpus(0, 2000).train)
    out, at = [], 0
    for _ in range(n):
        parts = []
        for size in (prompt_chars, reply_chars, reply_chars):
            parts.append(text[at:at + size].strip())
            at += size
        out.append(PrefPair([{"role": "user", "content": parts[0]}],
                            [{"role": "assistant", "content": parts[1]}],
                            [{"role": "assistant", "content": parts[2]}]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="test")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--prompt_chars", type=int, default=200)
    ap.add_argument("--reply_chars", type=int, default=200)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    warnings.filterwarnings("ignore", category=FutureWarning)

    work = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    tok = train_tokenizer(build_corpus(0, 2000).train, vocab_size=args.vocab)
    torch.manual_seed(0)
    cfg = preset(args.preset, vocab_size=tok.vocab_size)
    model_dir = save_model(work / "model", Transformer(cfg), tok)
    pairs = make_pairs(args.pairs, args.prompt_chars, args.reply_chars)
    encoded = [(encode_response(tok, p.prompt, p.chosen), encode_response(tok, p.prompt, p.rejected))
               for p in pairs]
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else tok.eos_id

    # --- jielong: the reference pass, then fit() with the DPO stage
    ours = load_model(model_dir)
    rows = [r for pair in encoded for r in pair]
    reference_logps(ours, rows, pad, args.batch)  # warm-up
    t0 = time.perf_counter()
    ref = reference_logps(ours, rows, pad, args.batch).view(-1, 2)
    ours_ref_s = time.perf_counter() - t0
    stage = DPOStage(encoded, [], ref, None, pad, Objective("sigmoid", args.beta),
                     TrainConfig(batch_size=args.batch))
    stage.sampler = InOrder(len(encoded), args.batch)
    ends: list[float] = []
    step_metrics = stage.step_metrics

    def timed_metrics():
        ends.append(time.perf_counter())
        return step_metrics()
    stage.step_metrics = timed_metrics
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=0,
                            schedule="constant", weight_decay=0.0, eval_every=10**9,
                            save_every=10**9, device="cpu")

    def run_ours(r: int) -> list[float]:
        ends.clear()
        run = work / f"ours-{r}"
        out, err = quiet()
        with out, err:
            fit(ours, stage, train_cfg, run, tokenizer=tok)
        shutil.rmtree(run)
        return [b - a for a, b in zip(ends, ends[1:], strict=False)]

    # --- TRL: DPOTrainer with precomputed reference log-probs
    out, err = quiet()
    with out, err:
        theirs = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                      attn_implementation="sdpa")
    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    data = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                              for p in pairs])
    trl_ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, *a, **k):
            trl_ends.append(time.perf_counter())

    trl_cfg = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.batch,
                        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant",
                        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=args.beta,
                        loss_type=["sigmoid"], precompute_ref_log_probs=True, max_length=None,
                        train_sampling_strategy="sequential", report_to="none",
                        save_strategy="no", logging_steps=args.steps, disable_tqdm=True,
                        use_cpu=True, dataloader_num_workers=0, seed=0,
                        precompute_ref_batch_size=args.batch)
    ref_s: list[float] = []
    precompute = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **k):
        t = time.perf_counter()
        out = precompute(self, *a, **k)
        ref_s.append(time.perf_counter() - t)
        return out
    DPOTrainer._precompute_ref_logps = timed_precompute
    out, err = quiet()
    with out, err:
        trainer = DPOTrainer(model=theirs, args=trl_cfg, train_dataset=data,
                             processing_class=hf_tok, callbacks=[StepEnds()])
    same = sum(row["prompt_ids"] + row["chosen_ids"] == c[0] and row["prompt_ids"] + row["rejected_ids"] == r[0]
               for row, (c, r) in zip(trainer.train_dataset, encoded, strict=True))
    # TRL's completion is everything after the generation prompt; jielong learns the reply and
    # its end-of-turn token: the difference, in tokens per reply.
    extra = {len(row["chosen_ids"]) - sum(t != IGNORE for t in c[1])
             for row, (c, _) in zip(trainer.train_dataset, encoded, strict=True)}
    tail = {hf_tok.decode(row["chosen_ids"][-1:]) for row in trainer.train_dataset}

    def run_theirs(r: int) -> list[float]:
        trl_ends.clear()
        out, err = quiet()
        with out, err:
            trainer.train()
        return [b - a for a, b in zip(trl_ends, trl_ends[1:], strict=False)]

    # Tokens per step, steps 2..N (the timed intervals), in data order on both sides.
    def tokens(step: int) -> int:
        return sum(len(c[0]) + len(r[0]) for c, r in (encoded[i] for i in stage.sampler.indices(step, 0, 0)))
    timed_tokens = sum(tokens(s) for s in range(1, args.steps))

    run_ours(-1)  # warm-up
    run_theirs(-1)
    tps: dict[str, list[float]] = {"jielong": [], "TRL": []}
    for r in range(args.rounds):
        tps["jielong"].append(timed_tokens / sum(run_ours(r)))
        tps["TRL"].append(timed_tokens / sum(run_theirs(r)))
    shutil.rmtree(work, ignore_errors=True)

    lens = [len(x[0]) for pair in encoded for x in pair]
    print(f"DPO training step, {args.preset} preset ({cfg.num_params / 1e6:.2f}M params, vocabulary "
          f"{tok.vocab_size:,}), {args.batch} pairs a step (sequences of {min(lens)}-{max(lens)} "
          f"tokens), sigmoid loss β {args.beta}, fp32, {machine()}")
    print(f"  same token ids in TRL: {same}/{len(encoded)} pairs; TRL's completions hold "
          f"{sorted(extra)} more token(s) than jielong's learned reply tokens (ending in {sorted(tail)!r})")
    print(f"  reference pass over {len(encoded)} pairs: jielong {ours_ref_s:.2f} s (after a warm-up "
          f"pass), TRL {ref_s[0]:.2f} s (its precompute, dataset writes included)")
    print(f"  {'':13s} {'tokens/s (median of rounds)':>28s}  rounds")
    med = {k: statistics.median(v) for k, v in tps.items()}
    for k, v in tps.items():
        print(f"  {k:13s} {med[k]:28,.0f}  " + " ".join(f"{x:,.0f}" for x in v))
    print(f"  ratio (jielong / TRL): {med['jielong'] / med['TRL']:.2f}")


if __name__ == "__main__":
    main()
