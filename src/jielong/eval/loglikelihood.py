"""Log-likelihood of continuations given a context, as lm-evaluation-harness computes it for
Hugging Face causal models, with every token that several requests share run once.

Tokens, as lm-eval's `TemplateLM._encode_pair` (lm_eval/api/model.py) makes them: trailing
whitespace of the context moves onto the continuation; then context+continuation is encoded
whole, the context alone, and the continuation's tokens are the whole's tokens after as many
as the context has. The model reads the context's own tokens followed by those. Each text is
encoded as `transformers` encodes it by default (`add_special_tokens=True`, lm-eval's
`HFLM.tok_encode`): with what the tokenizer's post-processor adds, e.g. Llama's or Gemma's BOS
first (a tokenizer from `jielong tokenizer train` adds nothing) — unless the text already
starts with that token's string (lm-eval's `has_bos_prefix`, its BOS, else its EOS).

Scoring (`score_questions`), in three levels over a group of questions (a subject: the same
instructions and few-shot examples before each question):
1. the longest token prefix all their contexts share runs once into a KV cache;
2. batches of questions (longest first, as lm-eval sorts) copy that cache and run the rest of
   their context, right-padded (a causal model's padded tail cannot touch the positions
   before it), together with the tokens all of the question's choices begin with (" " before
   a letter, for some tokenizers): from the logits there, the shared tokens' log-probabilities
   and each choice's first token's;
3. the choices' remaining tokens, one row each, from a copy of their question's cache row,
   each row writing at its own positions.
The model sees exactly the token sequences lm-eval feeds it, so the numbers agree up to float
rounding; only the arithmetic that several choices or questions would repeat is skipped.

acc picks the choice of highest summed log-likelihood; acc_norm divides each by the choice's
length in characters first — lm-eval's `ConfigurableTask.process_results` uses `len(choice)`
of the doc_to_choice strings ("A", not " A"), so for lettered choices acc_norm equals acc.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence

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
    return encode_choices(tok, context, [continuation])[0]


def encode_choices(tok, context: str, continuations: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """`encode_pair` for each continuation, the context encoded once."""
    n_spaces = len(context) - len(context.rstrip())
    head, tail = (context[:-n_spaces], context[-n_spaces:]) if n_spaces else (context, "")
    ctx = encode(tok, head)
    return [(ctx, encode(tok, head + tail + c)[len(ctx):]) for c in continuations]


def shared_length(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence has in common."""
    return len(os.path.commonprefix([list(s) for s in seqs])) if seqs else 0


class RowCache(KVCache):
    """A KV cache whose rows each write at their own positions (`starts`, one per row): key i
    of a row holds position i, so the model windows attention by position."""

    keys_at_positions = True

    def __init__(self, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor):
        self.k, self.v, self.starts, self.pos = k, v, starts, 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        at = self.starts[:, None] + torch.arange(k.shape[2], device=k.device)  # (rows, T)
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        self.k[layer][rows, :, at] = k.transpose(1, 2)
        self.v[layer][rows, :, at] = v.transpose(1, 2)
        return self.k[layer], self.v[layer]


def batches_of(n: int, batch_size: int) -> int:
    """How many batches `score_questions` makes of n questions."""
    return math.ceil(n / batch_size)


@torch.no_grad()
def score_questions(model, items: Sequence[tuple[list[int], list[list[int]]]], batch_size: int = 16,
                    take: Callable[[int], bool] | None = None) -> Iterator[tuple[int, list[float]]]:
    """(index, summed log-probability of each continuation) for the items (context ids,
    [continuation ids]) of one group, batch by batch; only the batches b (0, 1, … in scoring
    order, `batches_of(len(items), batch_size)` of them) for which `take(b)` is true — how
    ranks share the work."""
    if not items:
        return
    if any(not ctx or any(not c for c in conts) for ctx, conts in items):
        raise ValueError("a context and every continuation need at least one token")
    cfg, p = model.config, next(model.parameters())
    device, dtype = p.device, p.dtype
    # each question: its context plus what all its choices begin with, then each choice's own rest
    shared, rests = [], []
    for ctx, conts in items:
        k = min(shared_length(conts), min(map(len, conts)) - 1)
        shared.append(ctx + conts[0][:k])
        rests.append([c[k:] for c in conts])
    P = min(shared_length(shared), min(len(ctx) for ctx, _ in items) - 1)  # the group's prefix
    order = sorted(range(len(items)), key=lambda i: -len(shared[i]))
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    mine = [c for b, c in enumerate(chunks) if take is None or take(b)]
    if not mine:
        return
    prefix = KVCache(cfg, 1, P, device=device, dtype=dtype)
    if P:
        model.hidden_states(torch.tensor([shared[0][:P]], device=device), cache=prefix)
    for chunk in mine:
        yield from score_batch(model, chunk, items, shared, rests, prefix)


@torch.no_grad()
def score_batch(model, chunk, items, shared, rests, prefix: KVCache) -> Iterator[tuple[int, list[float]]]:
    """Levels 2 and 3 of the module's docstring for the questions `chunk` after `prefix`."""
    cfg, p = model.config, next(model.parameters())
    device, dtype = p.device, p.dtype
    P, B = prefix.pos, len(chunk)
    T = max(len(shared[i]) for i in chunk) - P
    cache = KVCache(cfg, B, P + T, device=device, dtype=dtype)
    cache.k[:, :, :, :P] = prefix.k
    cache.v[:, :, :, :P] = prefix.v
    cache.pos = P
    x = torch.zeros((B, T), dtype=torch.long)
    for b, i in enumerate(chunk):
        x[b, :len(shared[i]) - P] = torch.tensor(shared[i][P:])
    h = model.hidden_states(x.to(device), cache=cache)
    # the logits from the context's last token on: the shared continuation tokens, then each
    # choice's first own token
    rows, cols, want, owner = [], [], [], []  # owner: (question in chunk, choice or -1 for all)
    for b, i in enumerate(chunk):
        ctx_len = len(items[i][0])
        for t in range(ctx_len - 1, len(shared[i])):
            last = t == len(shared[i]) - 1
            targets = [(r[0], c) for c, r in enumerate(rests[i])] if last else [(shared[i][t + 1], -1)]
            for tok, c in targets:
                rows.append(b)
                cols.append(t - P)
                want.append(tok)
                owner.append((b, c))
    scores = [[0.0] * len(rests[i]) for i in chunk]
    add(scores, owner, logprobs_at(model, h, rows, cols, want))
    # level 3: the choices longer than one own token
    longer = [(b, c) for b, i in enumerate(chunk) for c, r in enumerate(rests[i]) if len(r) > 1]
    if longer:
        U = max(len(rests[chunk[b]][c]) for b, c in longer) - 1
        at = torch.tensor([len(shared[chunk[b]]) for b, _ in longer], device=device)
        pick_rows = torch.tensor([b for b, _ in longer], device=device)
        shape = (cfg.num_hidden_layers, len(longer), cfg.num_key_value_heads, P + T + U, cfg.head_dim)
        k = torch.zeros(shape, device=device, dtype=dtype)
        v = torch.zeros(shape, device=device, dtype=dtype)
        k[:, :, :, :P + T] = cache.k.index_select(1, pick_rows)
        v[:, :, :, :P + T] = cache.v.index_select(1, pick_rows)
        x = torch.zeros((len(longer), U), dtype=torch.long)
        for r, (b, c) in enumerate(longer):
            own = rests[chunk[b]][c]
            x[r, :len(own) - 1] = torch.tensor(own[:-1])
        positions = at[:, None] + torch.arange(U, device=device)
        mask = torch.arange(P + T + U, device=device) <= positions[:, None, :, None]  # (R, 1, U, keys)
        h = model.hidden_states(x.to(device), positions=positions, cache=RowCache(k, v, at), attn_mask=mask)
        rows, cols, want, owner = [], [], [], []
        for r, (b, c) in enumerate(longer):
            own = rests[chunk[b]][c]
            for t in range(len(own) - 1):
                rows.append(r)
                cols.append(t)
                want.append(own[t + 1])
                owner.append((b, c))
        add(scores, owner, logprobs_at(model, h, rows, cols, want))
    for b, i in enumerate(chunk):
        yield i, scores[b]


def logprobs_at(model, h: torch.Tensor, rows: list[int], cols: list[int], want: list[int]) -> list[float]:
    """log p(want[n]) from the hidden state h[rows[n], cols[n]]: the output layer and softmax
    (in float32) on those positions only."""
    dev = h.device
    r, c = torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)
    logp = F.log_softmax(model.lm_head(h[r, c]).float(), dim=-1)
    return logp.gather(1, torch.tensor(want, device=dev)[:, None])[:, 0].tolist()


def add(scores: list[list[float]], owner: list[tuple[int, int]], values: list[float]) -> None:
    for (b, c), v in zip(owner, values, strict=True):
        for j in (range(len(scores[b])) if c < 0 else (c,)):
            scores[b][j] += v


def choice_logprobs(model, ctx: list[int], conts: list[list[int]]) -> list[float]:
    """Summed log-probability of each continuation's tokens after `ctx`, the context run once."""
    return next(score_questions(model, [(ctx, conts)]))[1]


def pick(scores: list[float], choices: list[str]) -> tuple[int, int]:
    """(acc's choice, acc_norm's choice): the argmax of the log-likelihoods, and of the
    log-likelihoods per character of each choice string (first index on a tie, as np.argmax)."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    norm = [s / len(c) for s, c in zip(scores, choices, strict=True)]
    best_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
    return best, best_norm
