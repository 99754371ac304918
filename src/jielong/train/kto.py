"""Kahneman–Tversky optimisation: align a model with unpaired 👍/👎 ratings (KTO,
Ethayarajh et al. 2024) — the feedback a chat app collects, with no pairs needed.

Run as:
    jielong train kto ratings.jsonl --model runs/sft/model --method lora --out runs/kto

Data: preference JSONL (`jielong.data.preferences.read_ratings`): {"prompt", "completion",
"label"} rows (label true/false, 1/0, 👍/👎, …), with an optional "weight" (default 1);
pairs count as a liked chosen and a disliked rejected, rankings as their best (liked) and
worst (disliked) replies.

With r = β·(log π(y|x) − log π_ref(y|x)) a reply's implied reward (log-probs summed over the
reply's tokens) and z0 the reference point, the loss per rating is

    desirable    λ_D · (1 − σ(r − β·z0))
    undesirable  λ_U · (1 − σ(β·z0 − r))

averaged over the batch (paper eq. 7, as TRL computes it). z0 = max(0, mean over the batch
of log π(y'|x) − log π_ref(y'|x)) estimates KL(π‖π_ref) from mismatched pairs: each prompt
x with another rating's reply y'. It is detached (no gradient flows through it), so its
forward pass runs without autograd.

A row's "weight" w (implicit feedback: `jielong feedback export --implicit` writes 0.5 for a
regenerated reply) makes both means weighted, Σ w·loss / Σ w and the same for z0: a row of
weight 2 counts as the row twice in its batch, weight 0 as the row left out (tested). Rows
without a weight weigh 1, so unweighted data trains exactly as before. Micro-batches of a
step still count equally.

The reference log-probs are cached once before training, as in DPO (`jielong.train.reference`), for
the matched and the mismatched sequences alike; for that the mismatch is fixed: rating i's
y' is the reply of rating π(i), π one seeded random cycle through the data (so never i
itself when there are two or more). TRL instead pairs each rating with its neighbour's
reply inside the batch; any reply that does not answer x serves the estimate, and a fixed
partner is what lets its reference log-prob be computed once rather than for every batch of
every epoch. A mismatched sequence longer than --max_len is cut to it (it only feeds the
estimate).

Set λ_D·n_D / (λ_U·n_U) between 1 and 4/3 when liked and disliked replies are unbalanced
(the paper's advice; the command suggests weights).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from jielong.data.chat import IGNORE
from jielong.data.preferences import read_ratings
from jielong.errors import UserError
from jielong.lora import LoraConfig
from jielong.runtime import is_main_process
from jielong.train.common import checkpoint_fns, finish, setup, split_by_prompt, summarize_params
from jielong.train.loop import TrainConfig, fit
from jielong.train.reference import Row, encode_rows, pad_rows, reference_for, sequence_logps
from jielong.train.sampler import EpochSampler

KTO_TRAIN = TrainConfig(lr=1e-6, warmup_steps=10, steps=200, batch_size=8, eval_every=50,
                        save_every=100)  # `train kto` defaults (batch_size: ratings); lr: TRL's


def kto_loss(policy: torch.Tensor, ref: torch.Tensor, kl_policy: torch.Tensor,
             kl_ref: torch.Tensor, desirable: torch.Tensor, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             weight: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per rating, rewards β·(π − ref), the KL estimate z0). policy, ref: (B,) summed
    log-probs of the rated replies; kl_policy, kl_ref: those of the mismatched sequences;
    desirable: (B,) bool; weight: (B,) per-rating weights of z0's mean (None: all 1)."""
    kl = kl_policy.detach().float() - kl_ref.float()
    z0 = kl.mean() if weight is None else weighted_mean(kl, weight)
    if dist.is_initialized() and dist.get_world_size() > 1:  # one estimate over all processes
        dist.all_reduce(z0, op=dist.ReduceOp.AVG)
    z0 = z0.clamp(min=0)
    logratio = policy.float() - ref.float()
    losses = torch.where(desirable,
                         desirable_weight * (1 - torch.sigmoid(beta * (logratio - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratio))))
    return losses, beta * logratio.detach(), z0


def weighted_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ w·x / Σ w (0 when every weight is 0)."""
    w = weight.to(x.dtype)
    return (w * x).sum() / w.sum().clamp(min=torch.finfo(x.dtype).tiny)


def partners(n: int, seed: int) -> list[int]:
    """partner[i]: whose reply rating i's mismatched sequence uses (one random cycle)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = [0] * n
    for k, i in enumerate(order):
        out[i] = order[(k + 1) % n]
    return out


def mismatched(rows: list[tuple[Row, Row]], cut: list[bool], max_len: int) -> list[Row]:
    """Each rating's prompt with its partner's reply, from (matched row, partner's row)."""
    out = []
    for (ids, labels), (p_ids, p_labels) in rows:
        start = next(i for i, t in enumerate(labels) if t != IGNORE)  # the prompt ends here
        p_start = next(i for i, t in enumerate(p_labels) if t != IGNORE)
        seq = (ids[:start] + p_ids[p_start:], labels[:start] + p_labels[p_start:])
        cut.append(len(seq[0]) > max_len)
        out.append((seq[0][:max_len], seq[1][:max_len]))
    return out


class KTOStage:
    """The loop's stage: batches of rated replies, and the same prompts with mismatched
    replies for z0, with their cached reference log-probs."""

    def __init__(self, rows: list[Row], kl_rows: list[Row], labels: list[bool],
                 ref: torch.Tensor, val: tuple | None, pad_id: int, cfg: TrainConfig,
                 beta: float, weights: tuple[float, float], world: int = 1,
                 row_weights: list[float] | None = None):
        """val: (rows, kl_rows, labels, ref[, row weights]); weights: (λ_D, λ_U);
        row_weights: each rating's weight (None: all 1)."""
        if not rows:
            raise UserError("no training ratings; give rated replies (or lower --val_fraction)")
        w = torch.ones(len(rows)) if row_weights is None else torch.tensor(row_weights)
        self.data = (rows, kl_rows, torch.tensor(labels), ref, w)
        if val is not None and len(val) == 4:
            val = (*val, torch.ones(len(val[0])))
        self.val, self.pad_id, self.beta, self.weights = val, pad_id, beta, weights
        self.batch_size = cfg.batch_size
        self.sampler = EpochSampler(len(rows), cfg.batch_size, cfg.grad_accum, world, cfg.seed)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def _batch(self, data: tuple, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        rows, kl_rows, labels, ref, weight = data
        ids, lab = pad_rows([rows[i] for i in idx], self.pad_id)
        kl_ids, kl_lab = pad_rows([kl_rows[i] for i in idx], self.pad_id)
        return {"input_ids": ids, "labels": lab, "kl_input_ids": kl_ids, "kl_labels": kl_lab,
                "ref": ref[idx, 0], "kl_ref": ref[idx, 1], "desirable": labels[idx],
                "weight": weight[idx],
                "lengths": torch.tensor([len(rows[i][0]) for i in idx])}

    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        return self._batch(self.data, self.sampler.indices(step, micro, rank))

    def _forward(self, model, b) -> tuple[torch.Tensor, dict[str, tuple[float, int]]]:
        with torch.no_grad():  # z0 carries no gradient
            kl_policy, _ = sequence_logps(model, b["kl_input_ids"], b["kl_labels"])
        policy, _ = sequence_logps(model, b["input_ids"], b["labels"])
        losses, rewards, z0 = kto_loss(policy, b["ref"], kl_policy, b["kl_ref"], b["desirable"],
                                       self.beta, *self.weights, weight=b["weight"])
        good, bad = rewards[b["desirable"]], rewards[~b["desirable"]]
        return losses, {"rewards/desirable": (good.sum().item(), len(good)),
                        "rewards/undesirable": (bad.sum().item(), len(bad)),
                        "kl": (z0.item(), 1)}

    def _add(self, stats: dict[str, tuple[float, int]]) -> None:
        for k, (s, n) in stats.items():
            self._sums[k] = self._sums.get(k, 0.0) + s
            self._counts[k] = self._counts.get(k, 0) + n

    def _means(self) -> dict[str, float]:
        out = {k: self._sums[k] / self._counts[k] for k in self._sums if self._counts[k]}
        if "rewards/desirable" in out and "rewards/undesirable" in out:
            out["rewards/margin"] = out["rewards/desirable"] - out["rewards/undesirable"]
        self._sums, self._counts = {}, {}
        return out

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        losses, stats = self._forward(model, batch)
        self._add(stats)
        return weighted_mean(losses, batch["weight"]), int(batch["lengths"].sum())

    def step_metrics(self) -> dict[str, float]:
        """The step's rewards and KL estimate over its micro-batches (this process's)."""
        return {k: round(v, 5) for k, v in self._means().items()}

    def evaluate(self, model) -> dict[str, float]:
        if not self.val:
            return {}
        device = next(model.parameters()).device
        n = len(self.val[0])
        total = weight = 0.0
        for i in range(0, n, self.batch_size):
            idx = list(range(i, min(n, i + self.batch_size)))
            b = {k: v.to(device) for k, v in self._batch(self.val, idx).items()}
            losses, stats = self._forward(model, b)
            w = b["weight"].to(losses.dtype)
            total, weight = total + (w * losses).sum().item(), weight + w.sum().item()
            self._add(stats)
        out = {"loss": total / weight if weight else 0.0, **self._means()}  # Σ w·loss / Σ w
        return {f"val_{k}": v for k, v in out.items()}


def _encode(tok, ratings, max_len: int, seed: int,
            desc: str) -> tuple[list, list, list, list, int, int]:
    """(rows, mismatched rows, labels, weights, left out as too long, mismatched ones cut)."""
    kept, encoded, skipped = encode_rows(tok, ratings, lambda r: (r.completion,), max_len, desc)
    rows = [e[0] for e in encoded]
    other = partners(len(rows), seed)
    cut: list[bool] = []
    kl_rows = mismatched([(rows[i], rows[other[i]]) for i in range(len(rows))], cut, max_len)
    return rows, kl_rows, [r.label for r in kept], [r.weight for r in kept], skipped, sum(cut)


def kto(
    data: list[str],
    model: str = "runs/sft/model",
    ref: str | None = None,
    out: str = "runs/kto",
    method: Literal["full", "lora"] = "full",
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    val: list[str] | None = None,
    val_fraction: float = 0.1,
    system: str | None = None,
    max_len: int | None = None,
    dtype: str = "auto",
    resume: bool = False,
    train: TrainConfig = KTO_TRAIN,
    lora: LoraConfig = LoraConfig(),  # noqa: B008 (never mutated)
) -> dict:
    """Align a model with unpaired ratings (👍/👎 replies) by KTO.

    Args:
        data: Rating JSONL files: {"prompt", "completion", "label"} rows (pairs and rankings count too).
        model: Model to align (usually the SFT model): a jielong or Hugging Face directory, or a hub id.
        ref: Reference model (default: the model itself, before training; with --method lora, its base).
        out: Run directory (checkpoints, metrics.jsonl, loss.png, ref_logps.pt, model/ or adapter/).
        method: full (every weight) or lora (frozen base, low-rank adapters).
        beta: How far from the reference the policy may move (scale of the implied reward).
        desirable_weight: λ_D, the weight of liked replies' loss.
        undesirable_weight: λ_U, the weight of disliked replies' loss.
        val: Validation JSONL files (default: hold out --val_fraction of the prompts).
        val_fraction: Share of distinct prompts held out, with all their ratings, when --val is not given.
        system: System prompt for prompts that have none.
        max_len: Tokens per prompt + reply (default: the model's context); longer ratings are left out (and counted).
        dtype: Weights' dtype: auto (float32, or the checkpoint's for LoRA on a GPU), float32, bfloat16.
        resume: Continue from the last checkpoint in OUT (the reference log-probs are read back).
        train: Optimisation settings (steps, batch size in ratings, learning rate, …).
        lora: LoRA settings (rank, alpha, dropout, target modules), used with --method lora.
    """
    if not (math.isfinite(beta) and beta > 0):
        raise UserError(f"--beta={beta} must be a positive number (0.1 is usual for KTO)")
    for name, w in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
        if not (math.isfinite(w) and w > 0):
            raise UserError(f"--{name}={w} must be a positive number")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction={val_fraction} must be in [0, 1)")
    ratings = read_ratings(data, system)
    if val:
        held = read_ratings(val, system)
    else:
        ratings, held = split_by_prompt(ratings, val_fraction, train.seed)
    net, tok, gen, train, device, world, pad, ref, max_len = setup(
        model, ref, method, lora, dtype, max_len, resume, out, train, KTO_TRAIN.lr)
    rows, kl_rows, labels, row_weights, skipped, cut = _encode(tok, ratings, max_len,
                                                               train.seed, "tokenizing")
    if not rows:
        raise UserError(f"every training rating is longer than --max_len {max_len} tokens; raise it")
    v_rows, v_kl, v_labels, v_weights, v_skipped, v_cut = _encode(tok, held, max_len,
                                                                  train.seed, "tokenizing val")
    run = Path(out)
    logps = reference_for(run, "kto", net, method, model, ref,
                          {"train": rows + kl_rows, "val": v_rows + v_kl}, pad, train.batch_size,
                          device)
    ref_train = torch.stack(logps["train"].chunk(2), 1)  # (N, 2): matched, mismatched
    val_data = None
    if v_rows:
        val_data = (v_rows, v_kl, torch.tensor(v_labels), torch.stack(logps["val"].chunk(2), 1),
                    torch.tensor(v_weights))
    stage = KTOStage(rows, kl_rows, labels, ref_train, val_data, pad, train, beta,
                     (desirable_weight, undesirable_weight), world, row_weights)
    main = is_main_process()
    if main:
        n_good = sum(labels)
        n_bad = len(labels) - n_good
        # The balance below is of the weights (what the loss counts): the counts when unweighted.
        w_good = sum(w for w, y in zip(row_weights, labels, strict=True) if y)
        w_bad = sum(row_weights) - w_good
        print(f"kto ({method}, β {beta:g}): {len(rows):,} train ratings ({n_good:,} 👍, "
              f"{n_bad:,} 👎) / {len(v_rows):,} validation, {stage.sampler.epochs(train.steps):.1f} "
              f"epochs; {summarize_params(net)}")
        if any(w != 1 for w in row_weights):
            print(f"note: weighted ratings: the 👍 weigh {w_good:,.4g} in all, the 👎 {w_bad:,.4g}")
        if skipped or v_skipped:
            print(f"note: left out {skipped + v_skipped:,} ratings longer than --max_len {max_len}")
        if cut or v_cut:
            print(f"note: cut {cut + v_cut:,} mismatched sequences (KL estimate) to --max_len")
        if not n_good or not n_bad:
            print(f"note: every training reply is {'liked' if n_good else 'disliked'}; KTO learns "
                  "best from both kinds")
        elif w_good and w_bad:
            ratio = desirable_weight * w_good / (undesirable_weight * w_bad)
            if not 1 <= ratio <= 4 / 3:
                lo, hi = undesirable_weight * w_bad / w_good, 4 / 3 * undesirable_weight * w_bad / w_good
                print(f"note: λ_D·n_D / (λ_U·n_U) is {ratio:.2f}; the KTO paper advises 1 to 4/3: "
                      f"try --desirable_weight between {lo:.2f} and {hi:.2f}")
    save_fn, load_fn = checkpoint_fns(method)
    summary = fit(net, stage, train, run, tokenizer=tok, resume=resume, desc=f"kto-{method}",
                  save_fn=save_fn, load_fn=load_fn)
    if not main:
        return summary
    return finish(f"KTO ({method})", net, tok, gen, run, method, model, summary,
                  ("val_rewards/desirable", "val_rewards/undesirable"),
                  "; validation rewards 👍 {:.3f} vs 👎 {:.3f}")
