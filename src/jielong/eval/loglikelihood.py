"""Log-likelihood of continuations given a context, as lm-evaluation-harness computes it for
Hugging Face causal models, with the context's KV cache shared by all of a question's choices.

Tokens, as lm-eval's `TemplateLM._encode_pair` (lm_eval/api/model.py) makes them: trailing
whitespace of the context moves onto the continuation; then context+continuation is encoded
whole, the context alone, and the continuation's tokens are the whole's tokens after as many
as the context has. The model reads the context's own tokens followed by those. Each text is
encoded as `transformers` encodes it by default (`add_special_tokens=True`, lm-eval's
`HFLM.tok_encode`): with what the tokenizer's post-processor adds, e.g. Llama's or Gemma's BOS
first (a tokenizer from `jielong tokenizer train` adds nothing) — unless the text already
starts with that token's string (lm-eval's `has_bos_prefix`, its BOS, else its EOS).

Scoring: the context runs once into a KV cache; the cache is copied for each choice and the
choices' tokens run together as one batch (right-padded: a causal model's padded tail cannot
touch the positions before it). The first continuation token is scored by the context's
last logits.

acc picks the choice of highest summed log-likelihood; acc_norm divides each by the choice's
length in characters first — lm-eval's `ConfigurableTask.process_results` uses `len(choice)`
of the doc_to_choice strings ("A", not " A"), so for lettered choices acc_norm equals acc.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jielong.eval.heldout import start_id
from jielong.model import KVCache


def encode(tok, text: str) -> list[int]:
    """Token ids of `text` with the special tokens the tokenizer itself adds (its BOS), as
    lm-eval encodes a context for a Hugging Face model."""
    starts_with_prefix = text.startswith(tok.decode([start_id(tok)]))
    return tok.backend.encode(text, add_special_tokens=not starts_with_prefix).ids


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval splits them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode(tok, context + continuation)
    ctx = encode(tok, context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def choice_logprobs(model, ctx: list[int], conts: list[list[int]]) -> list[float]:
    """Summed log-probability of each continuation's tokens after `ctx`, the context run once."""
    if not ctx or any(not c for c in conts):
        raise ValueError("a context and every continuation need at least one token")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    longest = max(len(c) for c in conts)
    cache = KVCache(model.config, 1, len(ctx) + longest, device=device, dtype=dtype)
    last = model(torch.tensor([ctx], device=device), cache=cache, last_only=True)[0, -1]
    first = F.log_softmax(last.float(), dim=-1)
    # every choice continues from its own copy of the context's keys and values
    rows = KVCache(model.config, len(conts), cache.max_len, device=device, dtype=dtype)
    rows.k.copy_(cache.k.expand_as(rows.k))
    rows.v.copy_(cache.v.expand_as(rows.v))
    rows.pos = cache.pos
    scores = [first[c[0]].item() for c in conts]
    if longest > 1:
        x = torch.zeros((len(conts), longest - 1), dtype=torch.long)
        for i, c in enumerate(conts):
            x[i, :len(c) - 1] = torch.tensor(c[:-1])
        logp = F.log_softmax(model(x.to(device), cache=rows).float(), dim=-1).cpu()
        for i, c in enumerate(conts):
            if len(c) > 1:
                scores[i] += logp[i, :len(c) - 1].gather(1, torch.tensor(c[1:])[:, None]).sum().item()
    return scores


def pick(scores: list[float], choices: list[str]) -> tuple[int, int]:
    """(acc's choice, acc_norm's choice): the argmax of the log-likelihoods, and of the
    log-likelihoods per character of each choice string (first index on a tie, as np.argmax)."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    norm = [s / len(c) for s, c in zip(scores, choices, strict=True)]
    best_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
    return best, best_norm
