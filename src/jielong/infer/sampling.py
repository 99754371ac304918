"""Choosing the next token: the one set of sampling settings (`SamplingParams`) and the one
sampler (`sample`) that plain generation (jielong.infer.generate), the terminal chat
(jielong.infer.chat) and the serving engine (jielong.infer.engine) all use.

    s = SamplingParams(max_tokens=32, temperature=0.7, top_p=0.9, seed=1)
    token = sample(logits, s, seen=seen, gen=torch.Generator().manual_seed(1))

The order, per row: the repetition penalty (CTRL's, Keskar et al. 2019: a seen token's
positive logit divided, a negative one multiplied), the presence and frequency penalties
(OpenAI's: subtracted for each token already generated), greedy when the temperature is 0,
else the temperature, top-k, then top-p over what top-k kept (the order transformers' logits
warpers and vLLM's sampler use), then min-p, then one draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from jielong.errors import UserError
from jielong.infer.constrain import Grammar

MAX_TOP_LOGPROBS = 20  # as OpenAI's API


@dataclass
class SamplingParams:
    max_tokens: int | None = None  # new tokens; None: up to the end of the context
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1): off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)  # the engine's; generate_ids takes its own
    ignore_eos: bool = False  # do not stop on the model's end tokens (the engine's)
    seed: int | None = None
    logprobs: int | None = None  # the engine's: None: none; k ≥ 0: the chosen token's and the k likeliest
    grammar: Grammar | None = None  # output held to it (jielong.infer.constrain): engine, generate_ids

    def validate(self) -> None:
        """Raise UserError naming the first bad field."""
        checks = [
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "must be at least 1"),
            (0 <= self.temperature <= 100, "temperature", "must be in [0, 100]; 0 is greedy"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.top_k >= -1, "top_k", "must be -1 or 0 (off) or a positive count"),
            (0 <= self.min_p <= 1, "min_p", "must be in [0, 1]"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
            (0 < self.repetition_penalty <= 10, "repetition_penalty", "must be in (0, 10]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"),
            (self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS, "logprobs",
             f"must be in [0, {MAX_TOP_LOGPROBS}]"),
            (self.seed is None or -2**63 <= self.seed < 2**64, "seed", "must fit in 64 bits"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise UserError(f"{name}={getattr(self, name)!r} {why}")
        for v in (self.temperature, self.top_p, self.min_p, self.presence_penalty,
                  self.frequency_penalty, self.repetition_penalty):
            if not math.isfinite(v):
                raise UserError(f"sampling values must be finite numbers, not {v}")


def sample(logits: torch.Tensor, params: SamplingParams | Sequence[SamplingParams],
           counts: torch.Tensor | None = None, seen: torch.Tensor | None = None,
           gen: torch.Generator | Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
    """One token per row of (B, V) logits.

    params: one SamplingParams for every row, or one per row.
    counts: (B, V) how often each token was generated (presence and frequency penalties);
        seen: (B, V) bool, in the prompt or the output (repetition penalty); either may be None
        when no row uses it.
    gen: one generator drawing every row at once (None: torch's global one), or one per row
        (None for a row: the global one), so that a seeded request's tokens do not depend on
        what else is in the batch."""
    B, V = logits.shape
    dev = logits.device
    rows = [params] * B if isinstance(params, SamplingParams) else list(params)
    logits = logits.float()

    def col(name: str) -> torch.Tensor:
        return torch.tensor([getattr(p, name) for p in rows], device=dev, dtype=torch.float32)[:, None]

    if seen is not None and any(p.repetition_penalty != 1 for p in rows):
        rp = col("repetition_penalty")
        logits = torch.where(seen, torch.where(logits > 0, logits / rp, logits * rp), logits)
    if counts is not None and any(p.presence_penalty or p.frequency_penalty for p in rows):
        logits = logits - col("frequency_penalty") * counts - col("presence_penalty") * (counts > 0)
    greedy = logits.argmax(-1)
    temp = col("temperature")
    if bool((temp == 0).all()):
        return greedy
    logits = logits / temp.clamp(min=1e-5)
    if any(p.top_k > 0 or p.top_p < 1 for p in rows):
        sorted_, order = logits.sort(-1, descending=True)
        k = torch.tensor([min(p.top_k, V) if p.top_k > 0 else V for p in rows], device=dev)
        kth = sorted_.gather(-1, k[:, None] - 1)  # ties with the k-th are kept, as transformers
        sorted_ = sorted_.masked_fill(sorted_ < kth, float("-inf"))
        probs = sorted_.softmax(-1)  # over what top-k kept
        top_p = col("top_p")
        drop = (probs.cumsum(-1) - probs > top_p) & (top_p < 1)  # the smallest set reaching top_p
        sorted_ = sorted_.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_)
    probs = logits.softmax(-1)
    if any(p.min_p > 0 for p in rows):
        probs = probs.masked_fill(probs < col("min_p") * probs.max(-1, keepdim=True).values, 0.0)
    if gen is None or isinstance(gen, torch.Generator):
        out = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    else:
        out = torch.empty(B, dtype=torch.long, device=dev)
        free = [i for i, g in enumerate(gen) if g is None]
        if free:
            out[free] = torch.multinomial(probs[free], 1).squeeze(-1)
        for i, g in enumerate(gen):
            if g is not None:
                out[i] = torch.multinomial(probs[i], 1, generator=g)[0]
    return torch.where(temp[:, 0] == 0, greedy, out)
