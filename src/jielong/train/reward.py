"""Reward modelling: a language model learns to score replies the way people rank them.

Run as:
    jielong train reward prefs.jsonl --model runs/sft/model --out runs/reward
    jielong score --reward runs/reward/model --data prefs.jsonl
    jielong score --reward runs/reward/model --prompt "今天天氣如何？" --response "晴天，很暖和。"

Data: preference JSONL (`jielong.data.preferences`): pairs {"prompt", "chosen", "rejected"},
conversations with an implicit prompt, or rankings {"prompt", "responses": [best, …]}.
Unless `--val FILE` is given, `--val_fraction` of the prompts is held out, with all their
pairs (so no held-out prompt was seen in training).

The model is a sequence classifier with one output (`jielong.classifier.Classifier`
with num_labels=1): the base model's body and a linear head, `score`, on the last
non-padding token — transformers' `<Family>ForSequenceClassification`, which is what TRL's
RewardTrainer trains too. Each reply is rendered after its prompt with the chat template
and cut right after the reply's end-of-turn token (e.g. <|im_end|>), so the score is read
at that token, having seen the whole prompt and reply. (If the pad token *is* the
end-of-turn token, as when a Llama 3 tokenizer pads with <|eot_id|>, the token before it is
read, here and in transformers alike.) Pairs longer than `--max_len` tokens are left out
and counted, as TRL does: cutting would remove the very end the score is read at.

The loss is Bradley–Terry's (Bradley & Terry 1952; Ouyang et al. 2022): the chance that
people prefer chosen to rejected is sigmoid(r_chosen − r_rejected), so

    loss = −log sigmoid(r_chosen − r_rejected)  [+ c · (r_chosen + r_rejected)²]

where the optional second term (`--center_rewards c`, Eisenstein et al. 2023; TRL's
center_rewards_coefficient, e.g. 0.01) keeps rewards centred on zero, which BT alone leaves
free. Validation reports pairwise accuracy (the share of pairs with r_chosen > r_rejected)
and the mean margin r_chosen − r_rejected, before training and after.

Writes OUT/model (loads in `AutoModelForSequenceClassification`, num_labels=1),
OUT/metrics.jsonl, OUT/loss.png and OUT/report.json. Other stages score replies with
`jielong.classifier.load_reward` and `reward_scores`; `jielong score` (`jielong.eval.scores`)
scores a file of replies.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from jielong.classifier import (
    Classifier,
    checkpoint_fns,
    encode_scored,
    from_pretrained_lm,
    pad_batch,
    predict_logits,
    save_classifier,
)
from jielong.data.preferences import PrefPair, read_pairs
from jielong.errors import UserError
from jielong.files import write_json
from jielong.plots import loss_curve
from jielong.runtime import init_distributed, is_main_process, pick_device
from jielong.train.common import split_by_prompt
from jielong.train.loop import TrainConfig, context_length, fit
from jielong.train.sampler import EpochSampler

REWARD_TRAIN = TrainConfig(lr=1e-5, warmup_steps=10, steps=200, batch_size=8, eval_every=50,
                           save_every=100)  # `train reward` defaults (batch_size: pairs)
LABELS = ["reward"]  # config.json's id2label: one output

# --------------------------------------------------------------------------------- loss


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                       center: float = 0.0) -> torch.Tensor:
    """Mean −log sigmoid(chosen − rejected) over pairs, plus center · mean((chosen +
    rejected)²) when `center` > 0. chosen, rejected: (B,) rewards."""
    loss = -F.logsigmoid(chosen - rejected).mean()
    if center:
        loss = loss + center * ((chosen + rejected) ** 2).mean()
    return loss


# ------------------------------------------------------------------------------- encoding


def encode_pairs(tok, pairs: Sequence[PrefPair], max_len: int,
                 desc: str = "tokenizing") -> tuple[list[tuple[list[int], list[int]]], int]:
    """((chosen ids, rejected ids) per pair, how many pairs were left out as too long)."""
    out, skipped = [], 0
    for p in tqdm(pairs, desc=desc, unit=" pairs", disable=not sys.stderr.isatty(), leave=False):
        try:
            c, r = encode_scored(tok, p.prompt, p.chosen), encode_scored(tok, p.prompt, p.rejected)
        except UserError as e:
            raise UserError(f"{p.where}: {e}") from None
        if len(c) > max_len or len(r) > max_len:
            skipped += 1
            continue
        out.append((c, r))
    return out, skipped


# ---------------------------------------------------------------------------------- stage


def pair_metrics(model: Classifier, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int,
                 batch_size: int = 32) -> dict[str, float]:
    """Pairwise accuracy (r_chosen > r_rejected), mean margin, BT loss and mean rewards."""
    chosen = predict_logits(model, [c for c, _ in pairs], pad_id, batch_size)[:, 0]
    rejected = predict_logits(model, [r for _, r in pairs], pad_id, batch_size)[:, 0]
    return {"val_loss": bradley_terry_loss(chosen, rejected).item(),
            "accuracy": (chosen > rejected).float().mean().item(),
            "margin": (chosen - rejected).mean().item(),
            "reward_chosen": chosen.mean().item(), "reward_rejected": rejected.mean().item()}


class RewardStage:
    """The loop's stage: batches of pairs, chosen and rejected right-padded together as
    one (2B, T) batch (chosen first), and the Bradley–Terry loss on their scores."""

    def __init__(self, train: list[tuple[list[int], list[int]]],
                 val: list[tuple[list[int], list[int]]] | None, pad_id: int, cfg: TrainConfig,
                 world: int = 1, center: float = 0.0):
        if not train:
            raise UserError("no training pairs; give preference data (or lower --val_fraction)")
        self.train, self.val, self.pad_id, self.center = train, val, pad_id, center
        self.batch_size = cfg.batch_size
        self.sampler = EpochSampler(len(train), cfg.batch_size, cfg.grad_accum, world, cfg.seed)

    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        idx = self.sampler.indices(step, micro, rank)
        seqs = [self.train[i][0] for i in idx] + [self.train[i][1] for i in idx]
        return {"input_ids": pad_batch(seqs, self.pad_id),
                "lengths": torch.tensor([len(s) for s in seqs])}

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        rewards = model(batch["input_ids"])[:, 0].float()
        chosen, rejected = rewards.chunk(2)
        return bradley_terry_loss(chosen, rejected, self.center), int(batch["lengths"].sum())

    def evaluate(self, model) -> dict[str, float]:
        if not self.val:
            return {}
        m = pair_metrics(model, self.val, self.pad_id, 2 * self.batch_size)
        return {k: m[k] for k in ("val_loss", "accuracy", "margin")}


# ---------------------------------------------------------------------------- the command


def reward(
    data: list[str],
    model: str = "runs/demo/model",
    out: str = "runs/reward",
    val: list[str] | None = None,
    val_fraction: float = 0.1,
    system: str | None = None,
    max_len: int | None = None,
    center_rewards: float = 0.0,
    resume: bool = False,
    train: TrainConfig = REWARD_TRAIN,
) -> dict:
    """Train a reward model on preference pairs or rankings (JSONL).

    Args:
        data: Preference JSONL files: {"prompt", "chosen", "rejected"} or {"prompt", "responses"} rows.
        model: Base causal language model (usually the SFT model): a jielong or Hugging Face directory, or a hub id.
        out: Run directory (checkpoints, metrics.jsonl, loss.png, report.json, model/).
        val: Validation JSONL files (default: hold out --val_fraction of the prompts).
        val_fraction: Share of distinct prompts held out, with all their pairs, when --val is not given.
        system: System prompt for prompts that have none.
        max_len: Tokens per prompt + reply (default: the model's context); longer pairs are left out (and counted).
        center_rewards: Weight of the term that keeps rewards centred on 0 (e.g. 0.01; 0: off).
        resume: Continue from the last checkpoint in OUT.
        train: Optimisation settings (steps, batch size in pairs, learning rate, …).
    """
    train.validate()
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction={val_fraction} must be in [0, 1)")
    if center_rewards < 0:
        raise UserError(f"--center_rewards={center_rewards} must be 0 or more")
    pairs = read_pairs(data, system)
    if val:
        held = read_pairs(val, system)
    else:
        pairs, held = split_by_prompt(pairs, val_fraction, train.seed)
    device = pick_device(train.device)
    _, world = init_distributed(device)
    rm, tok = from_pretrained_lm(model, LABELS, seed=train.seed)
    max_len = context_length(max_len, rm.config.max_position_embeddings, "--max_len")
    pad_id = rm.config.pad_token_id
    train_set, cut = encode_pairs(tok, pairs, max_len)
    val_set, cut_val = encode_pairs(tok, held, max_len, desc="tokenizing val") if held else ([], 0)
    if not train_set:
        raise UserError(f"every training pair is longer than --max_len {max_len} tokens; raise it")
    stage = RewardStage(train_set, val_set, pad_id, train, world, center_rewards)
    run = Path(out)
    main = is_main_process()
    before = {}
    if main:
        n_params = sum(p.numel() for p in rm.parameters())
        print(f"reward: {len(train_set):,} train / {len(val_set):,} validation pairs, "
              f"{stage.sampler.epochs(train.steps):.1f} epochs; {n_params / 1e6:.3g}M parameters "
              f"({rm.config.model_type})")
        if cut or cut_val:
            print(f"note: left out {cut + cut_val:,} pairs longer than --max_len {max_len} tokens")
        if val_set:
            rm.to(device)
            with torch.no_grad():
                before = pair_metrics(rm, val_set, pad_id, 2 * train.batch_size)
    save_fn, load_fn = checkpoint_fns()
    summary = fit(rm, stage, train, run, tokenizer=tok, resume=resume, desc="reward",
                  save_fn=save_fn, load_fn=load_fn)
    if not main:
        return summary
    path = save_classifier(run / "model", rm, tok)
    loss_curve(run / "metrics.jsonl", run / "loss.png", title="reward model (Bradley–Terry loss)")
    result = {**summary, "model": str(path), "metrics": str(run / "metrics.jsonl"),
              "curve": str(run / "loss.png")}
    if not val_set:
        print(f"done: {summary['steps']} steps, loss {summary['loss']:.3f} (nothing held out: "
              f"no validation report)\nmodel: {path}  curve: {run / 'loss.png'}")
        return result
    rm.eval()
    after = pair_metrics(rm, val_set, pad_id, 2 * train.batch_size)
    report = {"pairs": len(val_set), "train_pairs": len(train_set), "left_out": cut + cut_val,
              **after, "before": before}
    write_json(run / "report.json", report)
    print(f"done: {summary['steps']} steps, loss {summary['loss']:.3f}; validation pairwise "
          f"accuracy {after['accuracy']:.3f} ({before['accuracy']:.3f} before training), mean "
          f"margin {after['margin']:.3f} ({before['margin']:.3f} before)\n"
          f"model: {path}  report: {run / 'report.json'}  curve: {run / 'loss.png'}")
    return {**result, "accuracy": after["accuracy"], "margin": after["margin"],
            "before": before, "report": str(run / "report.json")}
