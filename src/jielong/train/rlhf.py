"""RLHF: the model learns from its own samples. It writes several replies to each prompt,
each reply is scored, and the replies that scored better become likelier.

Run as:
    jielong train rlhf prompts.jsonl --model runs/sft/model --reward_fn arithmetic --out runs/rl
    jielong train rlhf prompts.jsonl --model runs/sft/model --reward_model runs/reward --method lora

Prompts: JSONL rows {"prompt": "…" or [messages], …} or whole conversations (OpenAI
messages, ShareGPT, alpaca) whose final assistant reply is dropped and kept as the row's
"reference". Every other field of a row (e.g. "answer") goes to the reward function.

Rewards: a Python function (`jielong.rewards`: arithmetic, script, length, concise, or your
own FILE.py:FUNCTION) for tasks that can be checked, or a reward model trained by
`jielong train reward`.

Each step, for each of --batch_size prompts, the policy samples --group replies (with
--temperature, from the KV-cache engine, seeded by (seed, step) so a resumed run samples
the same). A reply ends with its end-of-turn token, which is learned like any other: the
model learns when to stop. A reply cut at --max_new_tokens has no such token (and loses
--truncation_penalty). Then, GRPO (Shao et al. 2024, DeepSeekMath):

    A_i = (r_i − mean(r_group)) / (std(r_group) + ε)     one advantage per reply; population std;
                                                         --no-scale_rewards drops the division
                                                         (Liu et al. 2025, "Dr. GRPO")
    ratio_t = exp(logp_t − logp_old_t)                   per reply token; logp_old is the
                                                         sampling policy's (ratio = 1 on the first
                                                         pass, so the gradient is −A·∇logp)
    loss_t = −min(ratio_t·A, clip(ratio_t, 1 − ε, 1 + ε)·A) + β·KL_t
    KL_t = exp(ref_t − logp_t) − (ref_t − logp_t) − 1    k3 estimator (Schulman 2020): ≥ 0, unbiased
    loss = mean of loss_t over every reply token of the batch (token-level, as DAPO)

--ppo_epochs N takes N optimizer steps on each batch of samples (the ratio then moves
away from 1 and the clip matters); steps and --save_every must be multiples of N, so a
checkpoint always falls between batches and resuming stays exact.

--algo ppo (Schulman et al. 2017; Ouyang et al. 2022) instead learns a value head (one
nn.Linear on the policy's final hidden states) and takes per-token advantages from GAE
(γ = 1, --gae_lambda), with the reward at the reply's last token minus β·(logp − ref) at
every token, and a clipped value loss weighted by --vf_coef.

The reference (for KL) is the model before training: with --method lora simply the base
with the adapter switched off (no extra memory); with --method full a frozen copy of the
whole model, which costs one more copy of the weights (skipped when --beta 0 for GRPO,
as DAPO and Dr. GRPO suggest; then no KL is logged).

Each step logs the reward's mean and spread, the KL to the reference, the mean reply length
(tokens, end token excluded) and the share of replies that stopped by themselves to
metrics.jsonl, and plots them into OUT/rl.png; with held-out prompts (--eval_prompts) it
also scores greedy replies every --eval_every steps.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from jielong.checkpoint import load_model, load_trainer_state, save_model
from jielong.classifier import load_reward, reward_scores
from jielong.data.chat import IGNORE
from jielong.data.formats import to_messages
from jielong.data.readers import iter_records
from jielong.errors import UserError
from jielong.hub import stop_ids
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.lora import LoraConfig, output_weight, using_adapter
from jielong.plots import rl_curves
from jielong.rewards import Reward, checked, load_reward_fn
from jielong.runtime import init_distributed, is_main_process, pick_device
from jielong.train.common import checkpoint_fns, prepare_model, save_result, summarize_params
from jielong.train.loop import TrainConfig, fit
from jielong.train.losses import token_logps
from jielong.train.sampler import EpochSampler

# `train rlhf` defaults: learning rates as in common GRPO recipes for real models (a tiny
# demo model wants ~100× more); batch_size counts prompts, each sampled --group times.
RL_TRAIN = TrainConfig(lr=1e-6, steps=200, batch_size=4, warmup_steps=0, schedule="constant",
                       weight_decay=0.0, eval_every=20, save_every=50)
RL_LORA_LR = 2e-5
ADV_EPS = 1e-4


@dataclass
class RLConfig:
    """Reinforcement learning settings.

    Args:
        algo: grpo (group-normalised rewards, no value model) or ppo (a value head and GAE).
        group: Replies sampled per prompt (GRPO needs at least 2).
        beta: Weight of the KL penalty to the reference model.
        clip: PPO's ratio clip ε: the ratio is kept within [1 − ε, 1 + ε].
        ppo_epochs: Optimizer steps taken on each batch of samples.
        scale_rewards: Divide group advantages by the group's std (off: Dr. GRPO).
        max_new_tokens: Longest reply sampled.
        temperature: Sampling temperature (log-probabilities are taken at it too).
        top_p: Nucleus sampling while training (1: off).
        truncation_penalty: Subtracted from the reward of a reply cut at max_new_tokens.
        gae_lambda: ppo: GAE's λ (γ is 1).
        vf_coef: ppo: weight of the value loss.
        value_clip: ppo: the new value stays within this of the old one in the clipped loss.
        eval_prompts: Prompts held out and answered greedily at each evaluation (0: none).
    """

    algo: Literal["grpo", "ppo"] = "grpo"
    group: int = 8
    beta: float = 0.04
    clip: float = 0.2
    ppo_epochs: int = 1
    scale_rewards: bool = True
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    truncation_penalty: float = 0.0
    gae_lambda: float = 0.95
    vf_coef: float = 0.1
    value_clip: float = 0.2
    eval_prompts: int = 32

    def validate(self, train: TrainConfig) -> None:
        if self.group < (2 if self.algo == "grpo" else 1):
            raise UserError(f"--group {self.group}: GRPO compares replies to the same prompt, so it "
                            "needs at least 2 (8–16 is usual)" if self.algo == "grpo" else
                            f"--group {self.group} must be at least 1")
        if self.temperature <= 0:
            raise UserError(f"--temperature {self.temperature}: RL samples, so it must be positive "
                            "(1.0 is usual)")
        if self.beta < 0 or not 0 < self.clip < 1 or self.max_new_tokens < 1:
            raise UserError("--beta must be ≥ 0, --clip within (0, 1), --max_new_tokens ≥ 1")
        if not 0 < self.top_p <= 1 or not 0 <= self.gae_lambda <= 1 or self.eval_prompts < 0:
            raise UserError("--top_p must be in (0, 1], --gae_lambda in [0, 1], --eval_prompts ≥ 0")
        if self.ppo_epochs < 1:
            raise UserError(f"--ppo_epochs {self.ppo_epochs} must be at least 1")
        for name in ("steps", "save_every"):
            if getattr(train, name) % self.ppo_epochs:
                raise UserError(f"--{name} {getattr(train, name)} must be a multiple of "
                                f"--ppo_epochs {self.ppo_epochs}, so checkpoints fall between batches "
                                "of samples")


# ---------------------------------------------------------------------------------- the math


def group_advantages(rewards: torch.Tensor, group: int, scale: bool = True,
                     eps: float = ADV_EPS) -> torch.Tensor:
    """(N,) rewards of N / group prompts × group replies, grouped consecutively → (N,)
    advantages: reward minus its group's mean, divided by the group's (population) std + eps."""
    r = rewards.float().view(-1, group)
    a = r - r.mean(1, keepdim=True)
    if scale:
        a = a / (r.std(1, unbiased=False, keepdim=True) + eps)
    return a.view(-1)


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy ‖ reference) estimate from sampled tokens: exp(d) − d − 1 with
    d = ref − logp; never negative, unbiased, lower variance than −d (Schulman 2020)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                      clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token policy loss −min(ratio·A, clip(ratio)·A), per-token was-clipped flag)."""
    ratio = torch.exp(logp - old_logp)
    plain, clipped = ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv
    return -torch.minimum(plain, clipped), (clipped < plain)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
              ref_logp: torch.Tensor | None, clip: float, beta: float) -> torch.Tensor:
    """GRPO's loss: the mean over reply tokens of the clipped surrogate + β·k3 KL. All
    inputs are flat (M,) over the batch's reply tokens (adv: each token's reply's)."""
    loss, _ = clipped_surrogate(logp, old_logp, adv, clip)
    if ref_logp is not None and beta > 0:
        loss = loss + beta * k3(logp, ref_logp)
    return loss.mean()


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        lam: float) -> torch.Tensor:
    """Generalised advantage estimation (Schulman et al. 2016) with γ = 1 over (N, T)
    per-token rewards and values, where mask marks each row's reply tokens (contiguous)."""
    m = mask.float()
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    T = values.shape[1]
    for t in reversed(range(T)):
        cont = m[:, t + 1] if t + 1 < T else torch.zeros_like(last)  # the reply goes on
        delta = rewards[:, t] + cont * (values[:, t + 1] if t + 1 < T else 0) - values[:, t]
        last = delta + lam * cont * last
        adv[:, t] = last * m[:, t]
    return adv


# ---------------------------------------------------------------------------------- the data


@dataclass
class Prompt:
    where: str  # file:line
    messages: list[dict]  # the conversation so far, ending with the user's turn
    item: dict  # the row's other fields (+ "reference" for conversation rows)
    ids: list[int] = field(default_factory=list)


def _prompt_messages(value, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        raise UserError(f'{where}: "prompt" must be a string or a list of {{"role", "content"}} '
                        "messages")
    if value[-1]["role"] != "user":
        raise UserError(f'{where}: the "prompt" messages must end with a user message')
    return [{"role": m["role"], "content": m["content"]} for m in value]


CONVERSATION_KEYS = ("messages", "conversations", "instruction", "input", "output", "history", "system")


def read_prompts(paths: list[str], system: str | None = None) -> list[Prompt]:
    """Prompts and their data from JSONL files; errors name the file and line."""
    out = []
    for path in paths:
        if Path(path).suffix.lower() not in (".jsonl", ".json"):
            raise UserError(f"{path}: prompts must be a .jsonl file (one JSON object a line)")
        for where, obj in iter_records(path):
            if not isinstance(obj, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            if "prompt" in obj:
                messages = _prompt_messages(obj["prompt"], where)
                item = {k: v for k, v in obj.items() if k != "prompt"}
                if system and messages[0]["role"] != "system":
                    messages.insert(0, {"role": "system", "content": system})
            else:
                try:
                    messages = to_messages(obj, where, system)
                except UserError as e:
                    raise UserError(f'{e}; or give the row a "prompt"') from None
                item = {k: v for k, v in obj.items() if k not in CONVERSATION_KEYS}
                item["reference"] = messages[-1]["content"]
                messages = messages[:-1]
            out.append(Prompt(where, messages, item))
    if not out:
        raise UserError(f"{', '.join(map(str, paths))}: no prompts found")
    return out


def sample_replies(model, prompts: list[list[int]], s: SamplingParams,
                   stops: set[int]) -> list[tuple[list[int], bool]]:
    """(reply ids, stopped) per prompt. Unlike `generate_ids`' own stop tokens, the token
    that ended a reply is kept at its end (it is part of what the policy learns); stopped is
    False for a reply that ran out of tokens. (A "stop string" that fires on any stop token
    does this through generate_ids' public interface.)"""
    mark = "\x00"
    outs = generate_ids(model, prompts, replace(s, stop=[mark]), set(),
                        decode=lambda i, ids: mark if ids[-1] in stops else "")
    return [(ids, bool(ids) and ids[-1] in stops) for ids in outs]


# --------------------------------------------------------------------------------- the stage


class WithValueHead(nn.Module):
    """The policy and PPO's value head (a linear map of the final hidden state to a scalar),
    trained together; the head is saved in trainer_state.pt, the policy as usual."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # values start at 0: no made-up baseline
        nn.init.zeros_(self.value_head.bias)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        # the head stays float32 on a bfloat16 body (a LoRA base on a GPU)
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.policy(input_ids, hidden_only=True)
        return hidden, self.values(hidden)


class RLStage:
    """The loop's stage for online RL: batch() samples and scores replies with the current
    policy, loss() is GRPO's or PPO's. `reference` is None (no KL), "adapter-off" (the LoRA
    base) or a frozen model; `value_model` (PPO) is the WithValueHead being trained."""

    def __init__(self, policy, tok, prompts: list[Prompt], held: list[Prompt], reward: Reward,
                 rl: RLConfig, cfg: TrainConfig, stops: set[int], reference=None,
                 value_model: WithValueHead | None = None, world: int = 1):
        self.policy, self.tok, self.prompts, self.held = policy, tok, prompts, held
        self.reward, self.rl, self.cfg, self.stops = reward, rl, cfg, stops
        self.reference, self.value_model = reference, value_model
        self.sampler = EpochSampler(len(prompts), cfg.batch_size, cfg.grad_accum, world, cfg.seed)
        self.world = world
        self._cache: dict[tuple, dict] = {}  # a batch of samples, kept for its ppo_epochs steps
        self._log: dict[str, list] = defaultdict(list)
        self._step = -1
        self.timings: dict[str, float] = defaultdict(float)  # seconds: generate, reward, ...
        self.replies = 0  # sampled so far (this process)

    # -- sampling -------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def _amp(self):
        dev = self._device()  # the passes here match the training pass's precision
        return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()

    def _logp(self, model, input_ids, targets, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T) log-probabilities of the reply tokens (0 elsewhere), and the hidden states."""
        hidden = model(input_ids, hidden_only=True)
        out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
        out[mask] = token_logps(hidden[mask], output_weight(model), targets[mask],
                                self.rl.temperature, chunk=512)
        return out, hidden

    def _ref_logp(self, input_ids, targets, mask) -> torch.Tensor | None:
        if self.reference is None:
            return None
        if self.reference == "adapter-off":
            with using_adapter(self.policy, None):
                return self._logp(self.policy, input_ids, targets, mask)[0]
        if next(self.reference.parameters()).device != input_ids.device:
            self.reference.to(input_ids.device)
        return self._logp(self.reference, input_ids, targets, mask)[0]

    def score(self, prompts: list[Prompt], replies: list[tuple[list[int], bool]]) -> list[float]:
        texts = [self.tok.decode(ids[:-1] if stopped else ids, skip_special_tokens=True).strip()
                 for ids, stopped in replies]
        return self.reward([p.messages for p in prompts], texts, [p.item for p in prompts])

    @torch.no_grad()
    def rollout(self, index: int, micro: int, rank: int) -> tuple[dict, dict]:
        """(batch tensors, logged values) for one micro-batch of samples."""
        rl, G, device = self.rl, self.rl.group, self._device()
        chosen = [self.prompts[i] for i in self.sampler.indices(index, micro, rank) for _ in range(G)]
        seed = (self.cfg.seed * 1_000_003 + (index * self.cfg.grad_accum + micro) * self.world
                + rank) % 2**62
        s = SamplingParams(rl.max_new_tokens, rl.temperature, top_p=rl.top_p, seed=seed)
        was_training = self.policy.training
        self.policy.eval()
        t0 = time.perf_counter()
        replies = sample_replies(self.policy, [p.ids for p in chosen], s, self.stops)
        t1 = time.perf_counter()
        scores = self.score(chosen, replies)
        t2 = time.perf_counter()
        stopped = torch.tensor([st for _, st in replies], device=device)
        rewards = torch.tensor(scores, dtype=torch.float32, device=device)
        rewards = rewards - rl.truncation_penalty * (~stopped).float()

        seqs = [p.ids + ids for p, (ids, _) in zip(chosen, replies, strict=True)]
        N, T = len(seqs), max(len(x) for x in seqs) - 1
        pad = self.policy.config.pad_token_id or 0
        input_ids = torch.full((N, T), pad, dtype=torch.long)
        targets = torch.full((N, T), IGNORE, dtype=torch.long)
        for i, (x, p) in enumerate(zip(seqs, chosen, strict=True)):
            input_ids[i, :len(x) - 1] = torch.tensor(x[:-1])
            targets[i, len(p.ids) - 1:len(x) - 1] = torch.tensor(x[len(p.ids):])
        input_ids, targets = input_ids.to(device), targets.to(device)
        mask = targets != IGNORE
        batch = {"input_ids": input_ids, "targets": targets,
                 "n_tokens": torch.tensor(sum(len(x) for x in seqs))}
        with self._amp():
            ref = self._ref_logp(input_ids, targets, mask)
            if ref is not None:
                batch["ref_logp"] = ref
            if rl.algo == "ppo" or rl.ppo_epochs > 1:
                old, hidden = self._logp(self.policy, input_ids, targets, mask)
                batch["old_logp"] = old
            if rl.algo == "ppo":
                values = self.value_model.values(hidden) * mask
        if rl.algo == "grpo":
            batch["advantages"] = group_advantages(rewards, G, rl.scale_rewards)
        else:
            per_token = torch.zeros_like(values)
            if ref is not None and rl.beta > 0:
                per_token = -rl.beta * (old - ref) * mask
            last = mask.cumsum(1).argmax(1)  # each reply's last token
            per_token[torch.arange(N, device=device), last] += rewards
            adv = gae(per_token, values, mask, rl.gae_lambda)
            batch["values"], batch["returns"] = values, adv + values
            a = adv[mask]  # whitened over the batch's tokens, as is usual for PPO
            batch["advantages"] = (adv - a.mean()) / (a.std() + 1e-8) * mask
        self.policy.train(was_training)
        self.timings["generate"] += t1 - t0
        self.timings["reward"] += t2 - t1
        self.timings["logp"] += time.perf_counter() - t2
        self.replies += N
        logged = {"reward": rewards.tolist(), "length": [len(ids) - st for ids, st in replies],
                  "stopped": [float(st) for _, st in replies]}
        return batch, logged

    # -- the loop's interface -------------------------------------------------------------

    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        index = step // self.rl.ppo_epochs
        key = (index, micro, rank)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] == index}
            self._cache[key] = self.rollout(index, micro, rank)
        if step != self._step:
            self._log.clear()
            self._step = step
        batch, logged = self._cache[key]
        for k, v in logged.items():
            self._log[k] += v
        return batch

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        rl = self.rl
        t0 = time.perf_counter()
        targets = batch["targets"]
        mask = targets != IGNORE
        core = getattr(model, "module", model)  # unwrap DDP
        if rl.algo == "ppo":
            hidden, values = model(batch["input_ids"])
            core = core.policy
        else:
            hidden = model(batch["input_ids"], hidden_only=True)
        logp = token_logps(hidden[mask], output_weight(core), targets[mask], rl.temperature, chunk=512)
        old = batch["old_logp"][mask] if "old_logp" in batch else logp.detach()
        ref = batch["ref_logp"][mask] if "ref_logp" in batch else None
        if rl.algo == "grpo":
            adv = batch["advantages"][:, None].expand_as(targets)[mask]
            loss = grpo_loss(logp, old, adv, ref, rl.clip, rl.beta)
        else:
            adv = batch["advantages"][mask]
            pg, _ = clipped_surrogate(logp, old, adv, rl.clip)
            v, v_old, ret = values[mask], batch["values"][mask], batch["returns"][mask]
            v_clip = v_old + (v - v_old).clamp(-rl.value_clip, rl.value_clip)
            value_loss = 0.5 * torch.maximum((v - ret) ** 2, (v_clip - ret) ** 2).mean()
            loss = pg.mean() + rl.vf_coef * value_loss
            self._log["value_loss"].append(value_loss.item())
        if ref is not None:
            self._log["kl"].append(k3(logp.detach(), ref).mean().item())
        if "old_logp" in batch:  # the share of tokens whose ratio the clip held back
            _, was_clipped = clipped_surrogate(logp.detach(), old, adv, rl.clip)
            self._log["clipped"].append(was_clipped.float().mean().item())
        self.timings["train"] += time.perf_counter() - t0  # forward only; backward is the loop's
        return loss, int(batch["n_tokens"])

    def step_metrics(self) -> dict[str, float]:
        r = self._log["reward"]
        if not r:
            return {}
        out = {"reward": statistics.fmean(r), "reward_std": statistics.pstdev(r),
               "length": statistics.fmean(self._log["length"]),
               "stopped": statistics.fmean(self._log["stopped"])}
        for k in ("kl", "value_loss", "clipped"):
            if self._log[k]:
                out[k] = statistics.fmean(self._log[k])
        return {k: round(v, 6) for k, v in out.items()}

    def evaluate(self, model) -> dict[str, float]:
        """Greedy replies to the held-out prompts: mean reward, length, share stopped."""
        if not self.held:
            return {}
        s = SamplingParams(self.rl.max_new_tokens, temperature=0.0)
        scores, lengths, stopped = [], [], []
        for i in range(0, len(self.held), 32):
            chunk = self.held[i:i + 32]
            replies = sample_replies(self.policy, [p.ids for p in chunk], s, self.stops)
            scores += self.score(chunk, replies)
            lengths += [len(ids) - st for ids, st in replies]
            stopped += [float(st) for _, st in replies]
        return {"eval_reward": round(statistics.fmean(scores), 6),
                "eval_length": round(statistics.fmean(lengths), 3),
                "eval_stopped": round(statistics.fmean(stopped), 4)}


# ------------------------------------------------------------------------------ the command


def reward_from_model(path: str, device) -> Reward:
    """A reward function that asks a reward model (`jielong train reward`)."""
    model, tok = load_reward(path, device=device)
    for p in model.parameters():
        p.requires_grad_(False)

    def score(prompts: list[list[dict]], replies: list[str], items: list[dict]) -> list[float]:
        return reward_scores(model, tok, [m + [{"role": "assistant", "content": r}]
                                          for m, r in zip(prompts, replies, strict=True)])

    return score


def _value_head_fns(save_fn, load_fn):
    """Checkpoint functions for WithValueHead: the policy as `save_fn` / `load_fn` (or a whole
    model directory) would write it, the value head inside trainer_state.pt."""
    def save(model, path: Path, tok, trainer_state: dict) -> None:
        state = {**trainer_state, "value_head": model.value_head.state_dict()}
        if save_fn is None:
            save_model(path, model.policy, tok, state)
        else:
            save_fn(model.policy, path, tok, state)

    def load(model, path: Path) -> None:
        if load_fn is None:
            model.policy.load_state_dict(load_model(path).state_dict())
        else:
            load_fn(model.policy, path)
        model.value_head.load_state_dict(load_trainer_state(path)["value_head"])

    return save, load


def curve_summary(metrics: Path, key: str) -> tuple[float, float] | None:
    """(mean over the first tenth of the steps, over the last tenth) of a logged value."""
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    vals = [r[key] for r in rows if key in r]
    if not vals:
        return None
    k = max(1, len(vals) // 10)
    return statistics.fmean(vals[:k]), statistics.fmean(vals[-k:])


def rlhf(
    prompts: list[str],
    model: str = "runs/sft/model",
    out: str = "runs/rlhf",
    method: Literal["full", "lora"] = "full",
    reward_fn: str | None = None,
    reward_model: str | None = None,
    system: str | None = None,
    dtype: str = "auto",
    resume: bool = False,
    rl: RLConfig = RLConfig(),  # noqa: B008 (never mutated)
    train: TrainConfig = RL_TRAIN,
    lora: LoraConfig = LoraConfig(),  # noqa: B008
) -> dict:
    """Reinforcement learning from rewards: sample replies, score them, make the better ones likelier (GRPO, or PPO).

    Args:
        prompts: JSONL files of {"prompt": ...} rows or conversations (their last reply is dropped).
        model: The policy to start from (usually an SFT model): directory or hub id.
        out: Run directory (checkpoints, metrics.jsonl, rl.png, model/ or adapter/).
        method: full (every weight; the reference is a frozen copy) or lora (the reference is the
            base with the adapter off).
        reward_fn: A built-in reward (arithmetic, script, length, concise), FILE.py:FUNCTION or
            MODULE:FUNCTION.
        reward_model: Or a reward model directory from `jielong train reward`.
        system: System prompt for prompts that have none.
        dtype: Weights' dtype: auto (float32, or the checkpoint's for LoRA on a GPU), float32, bfloat16.
        resume: Continue from the last checkpoint in OUT.
        rl: RL settings (algorithm, group size, KL weight, sampling, ...).
        train: Optimisation settings (steps, prompts per batch, learning rate, ...).
        lora: LoRA settings, used with --method lora.
    """
    if (reward_fn is None) == (reward_model is None):
        raise UserError("give one reward: --reward_fn NAME|FILE.py:FUNCTION|MODULE:FUNCTION or "
                        "--reward_model DIR")
    if method == "lora" and train.lr == RL_TRAIN.lr:
        train = replace(train, lr=RL_LORA_LR)
        print(f"learning rate {RL_LORA_LR:g}, the LoRA default (--lr sets another)")
    train.validate()
    rl.validate(train)
    fn = load_reward_fn(reward_fn) if reward_fn else None  # a bad spec fails before any loading
    device = pick_device(train.device)
    _, world = init_distributed(device)
    rows = read_prompts(prompts, system)
    check = getattr(fn, "check", None)
    for p in rows if check else []:
        why = check(p.item)
        if why:
            raise UserError(f"{p.where}: {why}")
    if reward_model:
        fn, label = reward_from_model(reward_model, device), f"model {reward_model}"
    else:
        label = reward_fn
    reward = checked(fn, label)

    net, tok, gen = prepare_model(model, method, lora, dtype, device)
    limit = net.config.max_position_embeddings - rl.max_new_tokens
    kept = []
    for p in rows:
        try:
            p.ids = tok.encode_chat(p.messages, add_generation_prompt=True)[0]
        except UserError as e:
            raise UserError(f"{p.where}: {e}") from None
        if len(p.ids) <= limit:
            kept.append(p)
    if not kept:
        raise UserError(f"no prompt fits the model's context of {net.config.max_position_embeddings} "
                        f"tokens with --max_new_tokens {rl.max_new_tokens}")
    order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(train.seed)).tolist()
    n_held = min(rl.eval_prompts, len(kept) // 4)
    held = [kept[i] for i in order[:n_held]]
    train_prompts = [kept[i] for i in order[n_held:]]

    if method == "lora":
        reference = "adapter-off"
    elif rl.beta > 0:
        reference = copy.deepcopy(net).eval()  # the starting policy, frozen: one more copy
        for p in reference.parameters():
            p.requires_grad_(False)
    else:
        reference = None
    save_fn, load_fn = checkpoint_fns(method)
    trained: nn.Module = net
    value_model = None
    if rl.algo == "ppo":
        trained = value_model = WithValueHead(net)
        save_fn, load_fn = _value_head_fns(save_fn, load_fn)
    stage = RLStage(net, tok, train_prompts, held, reward, rl, train,
                    stop_ids(tok, gen, net.config.eos_token_id), reference, value_model, world)
    run = Path(out)
    main = is_main_process()
    if main:
        per_step = train.batch_size * train.grad_accum * world
        print(f"rlhf ({rl.algo}, {method}): {len(train_prompts):,} prompts ({n_held} held out"
              + (f", {len(rows) - len(kept)} too long skipped" if len(rows) > len(kept) else "")
              + f"), {per_step} a step × {rl.group} replies of ≤ {rl.max_new_tokens} tokens; "
              f"reward {label}; β {rl.beta:g}; {summarize_params(net)}")
    before = {}
    if main and held:  # the starting point (the loop evaluates only after training steps)
        net.to(device).eval()
        with torch.no_grad():
            before = stage.evaluate(net)
        print(f"held-out greedy reward before training: {before['eval_reward']:.3f}")
    summary = fit(trained, stage, train, run, tokenizer=tok, resume=resume, desc=f"rlhf-{rl.algo}",
                  save_fn=save_fn, load_fn=load_fn)
    if not main:
        return summary
    path = save_result(net, tok, gen, run, method, str(model))
    metrics = run / "metrics.jsonl"
    rl_curves(metrics, run / "rl.png", title=f"RLHF ({rl.algo}, {method})")
    curves = {k: curve_summary(metrics, k) for k in ("reward", "kl", "length", "stopped", "eval_reward")}
    line = f"done: {summary['steps']} steps"
    if curves["reward"]:
        line += f"; reward {curves['reward'][0]:.3f} → {curves['reward'][1]:.3f} (first/last tenth)"
    if curves["eval_reward"]:
        line += f", held-out greedy {before['eval_reward']:.3f} → {curves['eval_reward'][1]:.3f}"
    if curves["kl"]:
        line += f"; KL to the reference {curves['kl'][1]:.4f}"
    if curves["length"]:
        line += (f"; reply length {curves['length'][0]:.1f} → {curves['length'][1]:.1f} tokens, "
                 f"{curves['stopped'][1]:.0%} stopped by themselves")
    replies_s = stage.replies / max(summary["seconds"], 1e-9)
    print(f"{line}; {replies_s:.1f} replies/s\n{'adapter' if method == 'lora' else 'model'}: "
          f"{path}  curves: {run / 'rl.png'}")
    out_summary = {**summary, "path": str(path), "replies_s": round(replies_s, 2)}
    for k, v in curves.items():
        if v:
            out_summary[f"{k}_first"], out_summary[f"{k}_last"] = (round(x, 6) for x in v)
    if before:
        out_summary["eval_reward_before"] = before["eval_reward"]
    return out_summary
