"""Direct preference optimisation: learn from pairs of replies, one preferred, without a
reward model (DPO, and its IPO and SimPO variants).

Run as:
    jielong train dpo prefs.jsonl --model runs/sft/model --method lora --out runs/dpo

Data: preference JSONL (`jielong.data.preferences`): {"prompt", "chosen", "rejected"} pairs,
conversations with an implicit prompt, or rankings {"prompt", "responses": [best, …]}.
Each reply is rendered after its prompt with the chat template; only the reply's tokens and
its end-of-turn token count (`encode_response`). Pairs longer than `--max_len` are left out
and counted. Unless `--val` is given, `--val_fraction` of the prompts is held out with all
their pairs.

With π and r the summed log-probabilities of a reply under the policy and the reference
model, h = (π_chosen − r_chosen) − (π_rejected − r_rejected), and the losses per pair:

    sigmoid  −log σ(β·h)                            DPO (Rafailov et al. 2023); with
             −(1−ε)·log σ(β·h) − ε·log σ(−β·h)        --label_smoothing ε (conservative DPO)
    ipo      (h̄ − 1/(2β))²                          IPO (Azar et al. 2023, eq. 17), where h̄
             uses log-probabilities averaged per reply token, as TRL does and as the IPO authors
             confirmed to TRL: a sum would make the squared loss grow with reply length
    simpo    −log σ(β·(π̄_chosen − π̄_rejected) − γ)   SimPO (Meng et al. 2024): reference-free,
             average log-probabilities per token (π̄), a target margin γ

`--sft_weight α` adds α·(−π̄_chosen), the chosen reply's per-token negative log-likelihood, to
any of them (RPO: Pang et al. 2024, TRL's `rpo_alpha`). A preference loss only asks chosen to
beat rejected, which it can do by pushing both down; the likelihood term keeps chosen likely,
so what the chosen replies know (facts, format) is not lost on the way.

The logged rewards are β·(π − r) per reply (SimPO: its own implicit reward β·π̄); their
margin and accuracy (the share of pairs where chosen's reward is higher) are logged per step
and on the validation pairs.

The reference model is needed only for r, which never changes, so r is computed once for
every pair before training and kept in memory and in OUT/ref_logps.pt: no second model sits
in memory while training (`jielong.train.reference` says how, and when the file is
computed afresh).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from jielong.data.preferences import read_pairs
from jielong.errors import UserError
from jielong.lora import LoraConfig
from jielong.runtime import is_main_process
from jielong.train.common import checkpoint_fns, finish, setup, split_by_prompt, summarize_params
from jielong.train.loop import TrainConfig, fit
from jielong.train.reference import Row, encode_rows, pad_rows, reference_for, sequence_logps
from jielong.train.sampler import EpochSampler

DPO_TRAIN = TrainConfig(lr=1e-6, warmup_steps=10, steps=200, batch_size=8, eval_every=50,
                        save_every=100)  # `train dpo` defaults (batch_size: pairs); lr: TRL's
SIMPO_BETA = 2.0  # with --loss simpo, unless --beta is given (the SimPO paper uses 2 to 2.5)
# --------------------------------------------------------------------------------- losses


@dataclass
class Objective:
    """Which preference loss, and its constants."""

    loss: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0  # sigmoid only: the share of labels taken to be flipped
    gamma: float = 1.0  # simpo only: the target reward margin
    sft_weight: float = 0.0  # any loss: + this × the chosen reply's per-token NLL

    @property
    def uses_reference(self) -> bool:
        return self.loss != "simpo"


def preference_loss(obj: Objective, policy: torch.Tensor, ref: torch.Tensor,
                    counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair, chosen rewards, rejected rewards). policy, ref, counts: (2B,) summed
    log-probs and reply token counts, the B chosen replies first."""
    pc, pr = policy.float().chunk(2)
    rc, rr = ref.float().chunk(2)
    nc, nr = counts.clamp(min=1).float().chunk(2)
    if obj.loss == "simpo":
        chosen, rejected = obj.beta * pc / nc, obj.beta * pr / nr
        losses = -F.logsigmoid(chosen - rejected - obj.gamma)
    else:
        chosen, rejected = obj.beta * (pc - rc), obj.beta * (pr - rr)
        if obj.loss == "ipo":
            h = (pc - rc) / nc - (pr - rr) / nr
            losses = (h - 1 / (2 * obj.beta)) ** 2
        else:
            h = (pc - rc) - (pr - rr)
            eps = obj.label_smoothing
            losses = -(1 - eps) * F.logsigmoid(obj.beta * h) - eps * F.logsigmoid(-obj.beta * h)
    if obj.sft_weight:
        losses = losses - obj.sft_weight * pc / nc
    return losses, chosen.detach(), rejected.detach()


# ---------------------------------------------------------------------------------- stage


class DPOStage:
    """The loop's stage: batches of pairs, chosen and rejected right-padded together as one
    (2B, T) batch (chosen first), with their cached reference log-probs."""

    def __init__(self, train: list[tuple[Row, Row]], val: list[tuple[Row, Row]],
                 ref_train: torch.Tensor | None, ref_val: torch.Tensor | None, pad_id: int,
                 obj: Objective, cfg: TrainConfig, world: int = 1):
        if not train:
            raise UserError("no training pairs; give preference data (or lower --val_fraction)")
        self.train, self.val, self.pad_id, self.obj = train, val, pad_id, obj
        no_ref = torch.zeros  # SimPO: there is no reference
        self.ref_train = ref_train if ref_train is not None else no_ref(len(train), 2)
        self.ref_val = ref_val if ref_val is not None else no_ref(len(val), 2)
        self.batch_size = cfg.batch_size
        self.sampler = EpochSampler(len(train), cfg.batch_size, cfg.grad_accum, world, cfg.seed)
        self._sums: dict[str, float] = {}
        self._n = 0

    def _batch(self, pairs: Sequence[tuple[Row, Row]], ref: torch.Tensor) -> dict[str, torch.Tensor]:
        ids, labels = pad_rows([c for c, _ in pairs] + [r for _, r in pairs], self.pad_id)
        return {"input_ids": ids, "labels": labels, "ref": torch.cat([ref[:, 0], ref[:, 1]]),
                "lengths": torch.tensor([len(c[0]) + len(r[0]) for c, r in pairs])}

    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        idx = self.sampler.indices(step, micro, rank)
        return self._batch([self.train[i] for i in idx], self.ref_train[idx])

    def _forward(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        policy, counts = sequence_logps(model, batch["input_ids"], batch["labels"])
        losses, chosen, rejected = preference_loss(self.obj, policy, batch["ref"], counts)
        stats = {"rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
                 "rewards/margin": (chosen - rejected).mean().item(),
                 "rewards/accuracy": (chosen > rejected).float().mean().item()}
        return losses, stats

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        losses, stats = self._forward(model, batch)
        for k, v in stats.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._n += 1
        return losses.mean(), int(batch["lengths"].sum())

    def step_metrics(self) -> dict[str, float]:
        """The step's rewards, averaged over its micro-batches (this process's)."""
        out = {k: round(v / max(1, self._n), 5) for k, v in self._sums.items()}
        self._sums, self._n = {}, 0
        return out

    def evaluate(self, model) -> dict[str, float]:
        if not self.val:
            return {}
        device = next(model.parameters()).device
        totals: dict[str, float] = {}
        for i in range(0, len(self.val), self.batch_size):
            part = self.val[i:i + self.batch_size]
            b = {k: v.to(device) for k, v in self._batch(part, self.ref_val[i:i + len(part)]).items()}
            losses, stats = self._forward(model, b)
            for k, v in {"loss": losses.mean().item(), **stats}.items():
                totals[k] = totals.get(k, 0.0) + v * len(part)
        return {f"val_{k}": v / len(self.val) for k, v in totals.items()}


# ---------------------------------------------------------------------------- the command


def dpo(
    data: list[str],
    model: str = "runs/sft/model",
    ref: str | None = None,
    out: str = "runs/dpo",
    method: Literal["full", "lora"] = "full",
    loss: Literal["sigmoid", "ipo", "simpo"] = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    gamma: float = 1.0,
    sft_weight: float = 0.0,
    val: list[str] | None = None,
    val_fraction: float = 0.1,
    system: str | None = None,
    max_len: int | None = None,
    dtype: str = "auto",
    resume: bool = False,
    train: TrainConfig = DPO_TRAIN,
    lora: LoraConfig = LoraConfig(),  # noqa: B008 (never mutated)
) -> dict:
    """Align a model with preference pairs (DPO, IPO or SimPO), without a reward model.

    Args:
        data: Preference JSONL files: {"prompt", "chosen", "rejected"} or {"prompt", "responses"} rows.
        model: Model to align (usually the SFT model): a jielong or Hugging Face directory, or a hub id.
        ref: Reference model (default: the model itself, before training; with --method lora, its base).
        out: Run directory (checkpoints, metrics.jsonl, loss.png, ref_logps.pt, model/ or adapter/).
        method: full (every weight) or lora (frozen base, low-rank adapters).
        loss: sigmoid (DPO), ipo (IPO, per-token averages) or simpo (SimPO, reference-free).
        beta: How far from the reference the policy may move (IPO: its τ; SimPO: reward scale, default 2).
        label_smoothing: sigmoid only: the share of labels assumed flipped (conservative DPO; below 0.5).
        gamma: simpo only: the target margin between chosen and rejected rewards.
        sft_weight: Add this × the chosen reply's per-token NLL to the loss (RPO; 1.0 is usual), to keep what SFT taught.
        val: Validation JSONL files (default: hold out --val_fraction of the prompts).
        val_fraction: Share of distinct prompts held out, with all their pairs, when --val is not given.
        system: System prompt for prompts that have none.
        max_len: Tokens per prompt + reply (default: the model's context); longer pairs are left out (and counted).
        dtype: Weights' dtype: auto (float32, or the checkpoint's for LoRA on a GPU), float32, bfloat16.
        resume: Continue from the last checkpoint in OUT (the reference log-probs are read back).
        train: Optimisation settings (steps, batch size in pairs, learning rate, …).
        lora: LoRA settings (rank, alpha, dropout, target modules), used with --method lora.
    """
    if loss == "simpo" and beta == 0.1:
        beta = SIMPO_BETA
        print(f"β {SIMPO_BETA:g}, the SimPO default (--beta sets another)")
    obj = Objective(loss, beta, label_smoothing, gamma, sft_weight)
    if not (math.isfinite(beta) and beta > 0):
        raise UserError(f"--beta={beta} must be a positive number (0.1 is usual for DPO)")
    if not 0 <= label_smoothing < 0.5:
        raise UserError(f"--label_smoothing={label_smoothing} must be in [0, 0.5)")
    if label_smoothing and loss != "sigmoid":
        raise UserError(f"--label_smoothing applies to --loss sigmoid only, not {loss}")
    if not (math.isfinite(sft_weight) and sft_weight >= 0):
        raise UserError(f"--sft_weight={sft_weight} must be 0 or more (1.0 is usual; 0 turns it off)")
    if ref is not None and loss == "simpo":
        raise UserError("--ref has no use with --loss simpo: SimPO needs no reference model")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction={val_fraction} must be in [0, 1)")
    pairs = read_pairs(data, system)
    if val:
        held = read_pairs(val, system)
    else:
        pairs, held = split_by_prompt(pairs, val_fraction, train.seed)
    net, tok, gen, train, device, world, pad, ref, max_len = setup(
        model, ref, method, lora, dtype, max_len, resume, out, train, DPO_TRAIN.lr)
    both = lambda p: (p.chosen, p.rejected)  # noqa: E731
    _, train_set, cut = encode_rows(tok, pairs, both, max_len)
    _, val_set, cut_val = encode_rows(tok, held, both, max_len, "tokenizing val")
    if not train_set:
        raise UserError(f"every training pair is longer than --max_len {max_len} tokens; raise it")
    run = Path(out)
    ref_train = ref_val = None
    if obj.uses_reference:
        groups = {"train": [r for pair in train_set for r in pair],
                  "val": [r for pair in val_set for r in pair]}
        logps = reference_for(run, "dpo", net, method, model, ref, groups, pad, train.batch_size,
                              device)
        ref_train, ref_val = logps["train"].view(-1, 2), logps["val"].view(-1, 2)
    stage = DPOStage(train_set, val_set, ref_train, ref_val, pad, obj, train, world)
    main = is_main_process()
    if main:
        print(f"dpo ({method}, {loss} loss, β {beta:g}): {len(train_set):,} train / "
              f"{len(val_set):,} validation pairs, {stage.sampler.epochs(train.steps):.1f} epochs; "
              f"{summarize_params(net)}")
        if cut or cut_val:
            print(f"note: left out {cut + cut_val:,} pairs longer than --max_len {max_len} tokens")
    save_fn, load_fn = checkpoint_fns(method)
    summary = fit(net, stage, train, run, tokenizer=tok, resume=resume, desc=f"dpo-{method}",
                  save_fn=save_fn, load_fn=load_fn)
    if not main:
        return summary
    return finish(f"{loss} preference loss ({method})", net, tok, gen, run, method, model,
                  summary, ("val_rewards/accuracy", "val_rewards/margin"),
                  "; validation reward accuracy {:.3f}, margin {:.3f}")
