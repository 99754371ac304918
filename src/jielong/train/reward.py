"""Reward modelling: a language model learns to score replies the way people rank them.

    jielong train reward prefs.jsonl --model runs/sft/model --out runs/reward
    jielong score --reward runs/reward/model --data prefs.jsonl
    jielong score --reward runs/reward/model --prompt "今天天氣如何？" --response "晴天，很暖和。"

Data: preference JSONL (`jielong.data.preferences`): pairs {"prompt", "chosen", "rejected"},
conversations with an implicit prompt, or rankings {"prompt", "responses": [best, …]}.
Unless `--val FILE` is given, `--val_fraction` of the prompts is held out, with all their
pairs (so no held-out prompt was seen in training).

The model is a sequence classifier with one output (`jielong.train.classify.Classifier`
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
`load_reward` and `reward_scores`.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from jielong.data.chat import IGNORE
from jielong.data.preferences import (
    PrefPair,
    encode_response,
    parse_label,
    parse_pair,
    parse_prompt,
    parse_reply,
    parse_responses,
    read_pairs,
    read_rows,
)
from jielong.errors import UserError
from jielong.files import write_json
from jielong.train.classify import (
    Classifier,
    Sampler,
    _pad,
    _width,
    checkpoint_fns,
    from_pretrained_lm,
    load_classifier,
    pad_batch,
    predict_logits,
    save_classifier,
)
from jielong.train.loop import TrainConfig, context_length, fit

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


def encode_scored(tok, prompt: list[dict], reply: list[dict]) -> list[int]:
    """Token ids of prompt + reply with the chat template, up to and including the reply's
    end-of-turn token: the sequence whose last token the reward is read at."""
    ids, labels = encode_response(tok, prompt, reply)
    last = max(i for i, t in enumerate(labels) if t != IGNORE)
    return ids[:last + 1]


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


def split_by_prompt(pairs: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out) of records with a `.prompt` (PrefPair, Rating): `fraction` of the
    distinct prompts (at least one when there are two or more) held out with every record
    that has it; each list keeps the data's order."""
    if not 0 <= fraction < 1:
        raise UserError(f"--val_fraction={fraction} must be in [0, 1)")
    keys = [json.dumps(p.prompt, ensure_ascii=False, sort_keys=True) for p in pairs]
    prompts = sorted(set(keys))
    random.Random(seed).shuffle(prompts)
    n = round(len(prompts) * fraction)
    if fraction > 0 and len(prompts) > 1:
        n = min(len(prompts) - 1, max(1, n))
    held = set(prompts[:n])
    return ([p for p, k in zip(pairs, keys, strict=True) if k not in held],
            [p for p, k in zip(pairs, keys, strict=True) if k in held])


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
        self.sampler = Sampler(len(train), cfg.batch_size, cfg.grad_accum, world, cfg.seed)

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


# ------------------------------------------------------------------------------ public API


def load_reward(path: str | Path, device: str | torch.device = "cpu"):
    """(reward model, tokenizer) from a directory written by `jielong train reward` (or any
    HF sequence classifier with num_labels=1); a run directory means its model/."""
    d = Path(path)
    if not d.is_dir():
        raise UserError(f"{d}: no such reward model directory; pass the model/ folder that "
                        "`jielong train reward` wrote")
    if not (d / "config.json").is_file() and (d / "model" / "config.json").is_file():
        d = d / "model"
    model, tok = load_classifier(d, device=device)
    if model.num_labels != 1:
        raise UserError(f"{d}: a classifier with {model.num_labels} classes "
                        f"({', '.join(model.labels)}), not a reward model (one output); train one "
                        "with `jielong train reward`")
    return model, tok


def reward_scores(model: Classifier, tok, conversations: list[list[dict]],
                  batch_size: int = 16) -> list[float]:
    """The reward of each conversation's final assistant reply, given the messages before it.
    A conversation longer than the model's context keeps its end (the reply)."""
    limit = model.config.max_position_embeddings
    ids = []
    for i, conv in enumerate(conversations):
        if not conv or not isinstance(conv[-1], dict) or conv[-1].get("role") != "assistant":
            raise UserError(f"conversation {i}: must end with the assistant reply to score")
        try:
            ids.append(encode_scored(tok, conv[:-1], conv[-1:])[-limit:])
        except UserError as e:
            raise UserError(f"conversation {i}: {e}") from None
    if not ids:
        return []
    was_training = model.training
    model.eval()
    scores = predict_logits(model, ids, model.config.pad_token_id, batch_size)[:, 0].tolist()
    model.train(was_training)
    return scores


# -------------------------------------------------------------------------------- commands


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
    from jielong.plots import loss_curve
    from jielong.runtime import init_distributed, is_main_process, pick_device

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


def _row_to_score(obj: object, where: str, system: str | None) -> dict:
    """{"where", "kind": single|pair|ranking, "prompt", "replies", "label"?} of one row."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object like {{\"prompt\": …, \"response\": …}}, "
                        f"got {type(obj).__name__}")
    if "chosen" in obj or "rejected" in obj:
        p = parse_pair(obj, where, system)
        return {"where": where, "kind": "pair", "prompt": p.prompt, "replies": [p.chosen, p.rejected]}
    if "responses" in obj:
        prompt, replies = parse_responses(obj, where, system)
        return {"where": where, "kind": "ranking", "prompt": prompt, "replies": replies}
    name = "response" if "response" in obj else "completion" if "completion" in obj else None
    if name is None or "prompt" not in obj:
        keys = ", ".join(map(repr, list(obj)[:8])) or "none"
        raise UserError(f"{where}: nothing to score (keys: {keys}); use {{\"prompt\", \"response\"}} "
                        "(or \"completion\"), or a pair {\"prompt\", \"chosen\", \"rejected\"}")
    row = {"where": where, "kind": "single", "prompt": parse_prompt(obj["prompt"], where, system),
           "replies": [parse_reply(obj[name], where, name)]}
    if "label" in obj:
        row["label"] = parse_label(obj["label"], where)
    return row


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    if _width(text) <= width:
        return text
    out = ""
    for c in text:
        if _width(out + c) > width - 1:
            break
        out += c
    return out + "…"


def _shown(row: dict, scores: list[float]) -> str:
    """The reward column: a score (with its 👍/👎 label), or the scores of the replies from
    preferred to least preferred, ✓ when the model orders them so too."""
    if row["kind"] == "single":
        return f"{scores[0]:.3f}" + ("" if "label" not in row else " 👍" if row["label"] else " 👎")
    agrees = all(a > b for a, b in zip(scores, scores[1:], strict=False))
    return ", ".join(f"{s:.3f}" for s in scores) + (" ✓" if agrees else " ✗")


def _table(rows: list[dict], per_row: list[list[float]]) -> str:
    """where | reward | prompt → reply (the first reply), aligned for wide characters."""
    cells = [(row["where"], _shown(row, scores),
              _clip(next((m["content"] for m in reversed(row["prompt"]) if m["role"] == "user"), ""), 24)
              + " → " + _clip(row["replies"][0][-1]["content"], 32))
             for row, scores in zip(rows, per_row, strict=True)]
    cells.insert(0, ("where", "reward (preferred first)", "prompt → reply"))
    w0, w1 = (max(_width(c[i]) for c in cells) for i in (0, 1))
    return "\n".join(f"{_pad(a, w0)}  {_pad(b, w1)}  {c}" for a, b, c in cells)


def _jsonl(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)


def score_cmd(
    reward: str = "runs/reward/model",
    data: list[str] | None = None,
    prompt: str | None = None,
    response: str | None = None,
    system: str | None = None,
    json: bool = False,
    batch_size: int = 16,
    device: str = "auto",
) -> dict:
    """Score replies with a reward model: a JSONL file of rows, or one prompt and response.

    Rows: {"prompt", "response"} (or "completion"; a "label" is shown beside the score),
    pairs {"prompt", "chosen", "rejected"} (both scored: does chosen win?) or rankings
    {"prompt", "responses": [best, …]} (is the order the model's?).

    Args:
        reward: Reward model directory (from `jielong train reward`).
        data: JSONL files of rows to score.
        prompt: The user's message (with --response, instead of --data).
        response: The reply to score (with --prompt).
        system: System prompt for prompts that have none.
        json: Print one JSON object a line instead of a table.
        batch_size: Sequences scored at once.
        device: auto, cpu, cuda, cuda:N or mps.
    """
    from jielong.runtime import pick_device

    if data and (prompt is not None or response is not None):
        raise UserError("give either --data FILE.jsonl or --prompt and --response, not both")
    if not data and prompt is None and response is None:
        raise UserError("nothing to score: give --data FILE.jsonl, or --prompt P --response R")
    if batch_size < 1:
        raise UserError(f"--batch_size={batch_size} must be at least 1")
    if data:
        rows = [_row_to_score(obj, where, system) for where, obj in read_rows(data)]
    else:
        if prompt is None or response is None:
            raise UserError("--prompt and --response go together: give both (the user's message "
                            "and the reply to score)")
        rows = [{"where": "--prompt", "kind": "single",
                 "prompt": parse_prompt(prompt, "--prompt", system),
                 "replies": [parse_reply(response, "--response", "the response")]}]
    model, tok = load_reward(reward, device=pick_device(device))
    convs = [row["prompt"] + reply for row in rows for reply in row["replies"]]
    flat = reward_scores(model, tok, convs, batch_size)
    results, per_row, at = [], [], 0
    for row in rows:
        scores, at = flat[at:at + len(row["replies"])], at + len(row["replies"])
        per_row.append(scores)
        if row["kind"] == "single":
            res = {"where": row["where"], "score": scores[0]}
            if "label" in row:
                res["label"] = row["label"]
        elif row["kind"] == "pair":
            res = {"where": row["where"], "chosen": scores[0], "rejected": scores[1],
                   "margin": scores[0] - scores[1], "agrees": scores[0] > scores[1]}
        else:
            res = {"where": row["where"], "scores": scores,
                   "agrees": all(a > b for a, b in zip(scores, scores[1:], strict=False))}
        results.append(res)
    ranked = [r for r in results if "agrees" in r]
    summary = {"rows": len(rows), "replies": len(flat), "results": results}
    if ranked:
        summary["accuracy"] = sum(r["agrees"] for r in ranked) / len(ranked)
    if json:
        for r in results:
            print(_jsonl(r if data else {"score": r["score"]}))
        return summary
    if not data:
        print(f"reward {flat[0]:.4f}")
        return summary
    print(_table(rows, per_row))
    tail = f"{len(flat):,} replies scored in {len(rows):,} rows"
    if ranked:
        tail += (f"; the model agrees with {sum(r['agrees'] for r in ranked):,} of {len(ranked):,} "
                 f"preferences ({summary['accuracy']:.1%})")
    print(tail)
    return summary
