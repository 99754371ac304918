"""Packing: conversations laid end to end into rows of `seq_len` tokens, each keeping its own
rotary positions and attending only to itself, so packing changes no loss, it only removes
padding; and the loop's stage for such rows (SFT, sequence-level distillation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from jielong.data.chat import IGNORE
from jielong.errors import UserError
from jielong.lora import output_weight
from jielong.train.loop import TrainConfig
from jielong.train.losses import linear_cross_entropy
from jielong.train.sampler import EpochSampler


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


def packed_rows(p: Packed, idx) -> dict[str, torch.Tensor]:
    """The batch of rows `idx` (a list or a slice) of `p`, as a stage's batch dict."""
    return {"input_ids": p.inputs[idx], "labels": p.targets[idx],
            "positions": p.positions[idx], "docs": p.docs[idx]}


class PackedStage:
    """The loop's stage for packed token rows (SFT, sequence-level distillation)."""

    def __init__(self, train: Packed, val: Packed | None, cfg: TrainConfig, world: int = 1):
        if train.inputs.shape[0] == 0:
            raise UserError("no training examples fit in --seq_len; raise it")
        self.train, self.val = train, val
        self.sampler = EpochSampler(train.inputs.shape[0], cfg.batch_size, cfg.grad_accum,
                                    world, cfg.seed)
        self.batch_size = cfg.batch_size

    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        return packed_rows(self.train, self.sampler.indices(step, micro, rank))

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        return packed_loss(model, batch)

    def evaluate(self, model) -> dict[str, float]:
        if self.val is None or self.val.inputs.shape[0] == 0:
            return {}
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for i in range(0, self.val.inputs.shape[0], self.batch_size):
            b = {k: v.to(device) for k, v in packed_rows(self.val, slice(i, i + self.batch_size)).items()}
            loss, n = packed_loss(model, b)
            n_learned = int((b["labels"] != IGNORE).sum())
            total += loss.item() * n_learned
            count += n_learned
        return {"val_loss": total / max(1, count)}
