"""Supervised finetuning: teach a model to answer, on conversations rendered with its own
chat template.

    jielong train sft --data chats.jsonl --model Qwen/Qwen2.5-0.5B --method lora --out runs/sft

Data: JSONL in the OpenAI-messages, ShareGPT or alpaca format (`jielong.data.formats`).
Each conversation becomes token ids and a loss mask from `Tokenizer.encode_chat`: by
default only the assistant's tokens are learned — including the end-of-turn token that
closes every reply, so the tuned model stops by itself (`--train_on_prompt` learns the
whole conversation). Conversations are packed into rows of `--seq_len` tokens; each keeps
its own rotary positions and attends only to itself, so packing changes no loss, it only
removes padding.

`--method full` trains every weight and writes a whole model; `--method lora` freezes the
base and trains low-rank adapters (`jielong.lora`), written in PEFT's layout.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from jielong.data.chat import IGNORE, encode
from jielong.errors import UserError
from jielong.lora import LoraConfig, output_weight
from jielong.runtime import is_main_process
from jielong.train.loop import TrainConfig, fit
from jielong.train.losses import linear_cross_entropy

SFT_TRAIN = TrainConfig(lr=2e-5, warmup_steps=10, steps=200, batch_size=8)  # `train sft` defaults
LORA_LR = 2e-4  # with --method lora, unless --lr is given


@dataclass
class Packed:
    """Rows of packed conversations, as (rows, seq_len) tensors: the input ids, the next
    token to predict (or IGNORE), each token's position within its conversation, and which
    conversation of the row it belongs to (-1: padding)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    docs: torch.Tensor
    n_examples: int = 0
    n_skipped: int = 0
    fill: float = 0.0  # share of row positions holding real tokens


def pack(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int,
         seed: int = 0) -> Packed:
    """First-fit-decreasing packing of (ids, labels) examples into rows of seq_len + 1
    tokens (inputs and shifted targets); examples longer than that are skipped."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i][0]), i))
    rows: list[list[int]] = []  # example indices per row
    room: list[int] = []
    skipped = 0
    for i in order:
        n = len(examples[i][0])
        if n > seq_len + 1:
            skipped += 1
            continue
        for r, free in enumerate(room):
            if free >= n:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(seq_len + 1 - n)
    random.Random(seed).shuffle(rows)
    shape = (len(rows), seq_len)
    inputs = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, IGNORE, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    docs = torch.full(shape, -1, dtype=torch.long)
    used = 0
    for r, members in enumerate(rows):
        at = 0
        for d, i in enumerate(members):
            ids, labels = examples[i]
            n = len(ids) - 1  # the last token is only a target
            inputs[r, at:at + n] = torch.tensor(ids[:-1])
            targets[r, at:at + n] = torch.tensor(labels[1:])
            positions[r, at:at + n] = torch.arange(n)
            docs[r, at:at + n] = d
            at += n
        used += at
    return Packed(inputs, targets, positions, docs, len(examples) - skipped, skipped,
                  used / max(1, inputs.numel()))


def attention_mask(docs: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean: causal within each packed conversation; a padding position sees
    only itself (so no softmax row is empty)."""
    T = docs.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=docs.device).tril()
    same = (docs[:, :, None] == docs[:, None, :]) & (docs[:, :, None] >= 0)
    eye = torch.eye(T, dtype=torch.bool, device=docs.device)
    return ((same & causal) | eye)[:, None]


def packed_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """(mean cross-entropy over the learned tokens, tokens read) of a packed batch."""
    hidden = model(batch["input_ids"], batch["positions"], attn_mask=attention_mask(batch["docs"]),
                   hidden_only=True)
    targets = batch["labels"]
    head = output_weight(getattr(model, "module", model))  # unwrap DDP; a trained LoRA head
    return linear_cross_entropy(hidden, head, targets), int((batch["docs"] >= 0).sum())


@dataclass
class EpochSampler:
    """Rows for (step, micro, rank): epoch after epoch, each a fresh shuffle of all rows,
    so a run is deterministic in its arguments (exact resume) and sees every row once per
    epoch across processes."""

    n_rows: int
    batch_size: int
    grad_accum: int
    world: int
    seed: int
    _perms: dict = field(default_factory=dict)

    def rows(self, step: int, micro: int, rank: int) -> list[int]:
        start = ((step * self.grad_accum + micro) * self.world + rank) * self.batch_size
        out = []
        for p in range(start, start + self.batch_size):
            epoch, i = divmod(p, self.n_rows)
            if epoch not in self._perms:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perms = {epoch: torch.randperm(self.n_rows, generator=g).tolist()}
            out.append(self._perms[epoch][i])
        return out

    def epochs(self, steps: int) -> float:
        return steps * self.grad_accum * self.world * self.batch_size / max(1, self.n_rows)


class PackedStage:
    """The loop's stage for packed token rows (SFT, sequence-level distillation)."""

    def __init__(self, train: Packed, val: Packed | None, cfg: TrainConfig, world: int = 1):
        if train.inputs.shape[0] == 0:
            raise UserError("no training examples fit in --seq_len; raise it")
        self.train, self.val = train, val
        self.sampler = EpochSampler(train.inputs.shape[0], cfg.batch_size, cfg.grad_accum,
                                    world, cfg.seed)
        self.batch_size = cfg.batch_size

    @staticmethod
    def _rows(p: Packed, idx) -> dict[str, torch.Tensor]:
        return {"input_ids": p.inputs[idx], "labels": p.targets[idx],
                "positions": p.positions[idx], "docs": p.docs[idx]}

    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        return self._rows(self.train, self.sampler.rows(step, micro, rank))

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        return packed_loss(model, batch)

    def evaluate(self, model) -> dict[str, float]:
        if self.val is None or self.val.inputs.shape[0] == 0:
            return {}
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for i in range(0, self.val.inputs.shape[0], self.batch_size):
            b = {k: v.to(device) for k, v in self._rows(self.val, slice(i, i + self.batch_size)).items()}
            loss, n = packed_loss(model, b)
            n_learned = int((b["labels"] != IGNORE).sum())
            total += loss.item() * n_learned
            count += n_learned
        return {"val_loss": total / max(1, count)}


def load_examples(paths: list[str], tok, system: str | None, train_on_prompt: bool,
                  desc: str = "tokenizing") -> list[tuple[list[int], list[int]]]:
    """Read and tokenize conversation files; an error names the file and line."""
    from jielong.data.formats import read_conversations

    out = []
    records = read_conversations(paths, system)
    for where, messages in tqdm(records, desc=desc, unit=" chats", disable=not sys.stderr.isatty(),
                                leave=False):
        try:
            out.append(encode(tok, messages, train_on_prompt))
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    if not out:
        raise UserError(f"{', '.join(map(str, paths))}: no conversations found")
    return out


def split(examples: list, val_fraction: float, seed: int) -> tuple[list, list]:
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction={val_fraction} must be in [0, 1)")
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    n_val = int(len(examples) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(examples) > 1:
        n_val = 1
    val = set(idx[:n_val])
    return ([e for i, e in enumerate(examples) if i not in val],
            [e for i, e in enumerate(examples) if i in val])


def prepare_model(model_name: str, method: str, lora, dtype: str, device: torch.device):
    """(model, tokenizer, generation config, model dir) with LoRA adapters added if asked."""
    from jielong.hub import open_model

    if dtype == "auto":  # full finetuning keeps fp32 master weights; a LoRA base may stay small
        dtype = "auto" if method == "lora" and device.type == "cuda" else "float32"
    model, tok, gen = open_model(model_name, device="cpu", dtype=dtype)
    if method == "lora":
        from jielong.lora import add_adapter

        add_adapter(model, lora)
    return model, tok, gen


def checkpoint_fns(method: str, adapter: str = "default"):
    """save_fn/load_fn for fit: LoRA checkpoints hold only the adapter (named `adapter`).
    A resumed run writes the saved values into the adapter's own Parameters: the optimizer
    fit built holds those very tensors, so loading a fresh adapter beside them would leave
    it stepping orphans."""
    if method != "lora":
        return None, None
    from safetensors.torch import load_file

    from jielong.adapter_files import WEIGHTS_FILE, lora_state_dict, save_adapter
    from jielong.checkpoint import TRAINER_STATE
    from jielong.files import atomic_path

    def save_fn(model, path: Path, tokenizer, trainer_state: dict) -> None:
        save_adapter(model, path, name=adapter)
        # Written last: a checkpoint counts (list_checkpoints) only once this file exists.
        with atomic_path(path / TRAINER_STATE) as tmp:
            torch.save(trainer_state, tmp)

    def load_fn(model, path: Path) -> None:
        live, saved = lora_state_dict(model, adapter), load_file(path / WEIGHTS_FILE)
        if set(live) != set(saved):
            raise UserError(f"{path}: the checkpoint's adapter does not match this run's (other "
                            "LoRA settings?); resume with the settings it was started with")
        with torch.no_grad():
            for k, t in live.items():
                t.copy_(saved[k])

    return save_fn, load_fn


def summarize_params(model) -> str:
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{trainable / 1e6:.3g}M of {total / 1e6:.3g}M parameters trained ({100 * trainable / total:.2g}%)"


def save_result(model, tok, gen: dict, out: Path, method: str, base: str) -> Path:
    from jielong.checkpoint import save_model

    if method == "lora":
        from jielong.adapter_files import save_adapter

        return save_adapter(model, out / "adapter", base_model_name_or_path=base)
    return save_model(out / "model", model, tok, generation=gen)


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
    from jielong.plots import loss_curve
    from jielong.runtime import init_distributed, pick_device
    from jielong.train.loop import context_length

    if method == "lora" and train.lr == SFT_TRAIN.lr:
        train = replace(train, lr=LORA_LR)
        print(f"learning rate {LORA_LR:g}, the LoRA default (--lr sets another)")
    train.validate()
    device = pick_device(train.device)
    _, world = init_distributed(device)
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
