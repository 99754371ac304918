"""Supervised finetuning: teach a model to answer, on conversations rendered with its own
chat template.

Run as:
    jielong train sft chats.jsonl --model Qwen/Qwen2.5-0.5B --method lora --out runs/sft

Data: JSONL in the OpenAI-messages, ShareGPT or alpaca format (`jielong.data.formats`);
OpenAI records may hold tool use (`tool_calls`, `tool` messages, a per-record `tools` list
the chat template renders): the calls are learned, the tools' results are not.
Each conversation becomes token ids and a loss mask from `Tokenizer.encode_chat`: by
default only the assistant's tokens are learned — including the end-of-turn token that
closes every reply, so the tuned model stops by itself (`--train_on_prompt` learns the
whole conversation). Conversations are packed into rows of `--seq_len` tokens
(`jielong.train.packing`); each keeps its own rotary positions and attends only to itself,
so packing changes no loss, it only removes padding.

`--method full` trains every weight and writes a whole model; `--method lora` freezes the
base and trains low-rank adapters (`jielong.lora`), written in PEFT's layout.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from jielong.data.chat import IGNORE, encode
from jielong.data.formats import read_chats
from jielong.errors import UserError
from jielong.lora import LoraConfig
from jielong.plots import loss_curve
from jielong.runtime import init_distributed, is_main_process, pick_device
from jielong.train.common import (
    checkpoint_fns,
    prepare_model,
    save_result,
    split,
    summarize_params,
)
from jielong.train.loop import TrainConfig, context_length, fit
from jielong.train.packing import PackedStage, pack

SFT_TRAIN = TrainConfig(lr=2e-5, warmup_steps=10, steps=200, batch_size=8)  # `train sft` defaults
LORA_LR = 2e-4  # with --method lora, unless --lr is given


def load_examples(paths: list[str], tok, system: str | None, train_on_prompt: bool,
                  desc: str = "tokenizing") -> list[tuple[list[int], list[int]]]:
    """Read and tokenize conversation files; an error names the file and line."""
    out = []
    records = read_chats(paths, system)
    for where, messages, tools in tqdm(records, desc=desc, unit=" chats", disable=not sys.stderr.isatty(),
                                       leave=False):
        try:
            out.append(encode(tok, messages, train_on_prompt, tools))
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    if not out:
        raise UserError(f"{', '.join(map(str, paths))}: no conversations found")
    return out


def sft(
    data: list[str],
    model: str = "runs/demo/model",
    out: str = "runs/sft",
    method: Literal["full", "lora"] = "full",
    val: list[str] | None = None,
    val_fraction: float = 0.05,
    system: str | None = None,
    train_on_prompt: bool = False,
    seq_len: int | None = None,
    dtype: str = "auto",
    resume: bool = False,
    train: TrainConfig = SFT_TRAIN,
    lora: LoraConfig = LoraConfig(),  # noqa: B008 (never mutated)
) -> dict:
    """Finetune a model on conversations (OpenAI messages, ShareGPT or alpaca JSONL).

    Args:
        data: Conversation JSONL files.
        model: Base model: a jielong or Hugging Face model directory, or a hub id.
        out: Run directory (checkpoints, metrics.jsonl, loss.png, model/ or adapter/).
        method: full (every weight) or lora (frozen base, low-rank adapters).
        val: Validation JSONL files (default: hold out --val_fraction of the data).
        val_fraction: Share of conversations held out when --val is not given.
        system: System prompt for conversations that have none.
        train_on_prompt: Learn the user and system tokens too, not only the replies.
        seq_len: Tokens per packed row (default: the model's context); longer conversations
            are skipped (and counted).
        dtype: Weights' dtype: auto (float32, or the checkpoint's for LoRA on a GPU), float32, bfloat16.
        resume: Continue from the last checkpoint in OUT.
        train: Optimisation settings (steps, batch size, learning rate, …).
        lora: LoRA settings (rank, alpha, dropout, target modules), used with --method lora.
    """
    if method == "lora" and train.lr == SFT_TRAIN.lr:
        train = replace(train, lr=LORA_LR)
        print(f"learning rate {LORA_LR:g}, the LoRA default (--lr sets another)")
    train.validate()
    device = pick_device(train.device)
    _, world = init_distributed(device)
    torch.manual_seed(train.seed)  # LoRA's initial A: the same on any number of processes
    net, tok, gen = prepare_model(model, method, lora, dtype, device)
    seq_len = context_length(seq_len, net.config.max_position_embeddings)
    examples = load_examples(data, tok, system, train_on_prompt)
    if val:
        held = load_examples(val, tok, system, train_on_prompt, desc="tokenizing val")
    else:
        examples, held = split(examples, val_fraction, train.seed)
    pad = net.config.pad_token_id if net.config.pad_token_id is not None else tok.eos_id
    packed = pack(examples, seq_len, pad, train.seed)
    packed_val = pack(held, seq_len, pad, train.seed) if held else None
    stage = PackedStage(packed, packed_val, train, world)
    run = Path(out)
    main = is_main_process()
    if main:
        learned = int((packed.targets != IGNORE).sum())
        print(f"sft ({method}): {packed.n_examples:,} conversations in {packed.inputs.shape[0]:,} "
              f"rows of {seq_len} ({packed.fill:.0%} filled), {learned:,} tokens learned per epoch, "
              f"{stage.sampler.epochs(train.steps):.1f} epochs; {len(held):,} held out; "
              f"{summarize_params(net)}")
        if packed.n_skipped:
            print(f"note: skipped {packed.n_skipped:,} conversations longer than --seq_len {seq_len}")
    save_fn, load_fn = checkpoint_fns(method)
    summary = fit(net, stage, train, run, tokenizer=tok, resume=resume, desc=f"sft-{method}",
                  save_fn=save_fn, load_fn=load_fn)
    if not main:
        return summary
    path = save_result(net, tok, gen, run, method, str(model))
    loss_curve(run / "metrics.jsonl", run / "loss.png", title=f"SFT ({method})")
    print(f"done: {summary['steps']} steps, loss {summary['loss']:.3f}"
          + (f", val_loss {summary['val_loss']:.3f}" if "val_loss" in summary else "")
          + f", {summary['tok_s']:,.0f} tokens/s\n{'adapter' if method == 'lora' else 'model'}: "
          f"{path}  curve: {run / 'loss.png'}")
    return {**summary, "path": str(path)}
