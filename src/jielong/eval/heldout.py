"""Perplexity and bits per byte of a model on held-out text.

    from jielong.eval.heldout import heldout_text
    r = heldout_text(model, tok, ["valid/", "extra.jsonl"], field="text")
    print(r.ppl, r.bits_per_byte)

Documents come from .txt/.jsonl/.parquet files or folders of them (`jielong.data.readers`).
Each is scored from its start: its tokens follow the tokenizer's BOS token when it has one,
else the end-of-text token, the document separator jielong's pretraining writes after every
document (lm-eval's rolling log-likelihood makes the same choice), so every token of the
text is scored, the first one included.

A document longer than the window (`max_length`, default the model's context) is scored in
sliding windows (strided perplexity): window k ends at min(max_length + k·stride, n) and
spans max_length tokens back from there; it scores only the tokens the previous window did
not. Every token is scored once, with at least max_length − stride tokens of left context
(all of them while the document fits). A smaller stride gives more context and costs more.

Bits per byte = total negative log-likelihood (nats) / ln 2 / UTF-8 bytes of the documents:
unlike perplexity per token, it does not depend on the tokenizer, so models with different
vocabularies compare.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from jielong.data.readers import iter_texts
from jielong.errors import UserError
from jielong.runtime import pick_device

LOGIT_CHUNK = 2048  # positions per output-projection call: bounds memory for large vocabularies


@dataclass
class HeldoutResult:
    tokens: int  # tokens scored (the start token is context, not scored)
    bytes: int  # UTF-8 bytes of the documents
    nll: float  # total negative log-likelihood, in nats
    ppl: float  # exp(nll / tokens): perplexity per token of this tokenizer
    bits_per_byte: float  # nll / ln 2 / bytes
    documents: int
    doc_nll: list[float] = field(default_factory=list)  # each document's nll (for paired comparisons)
    doc_bytes: list[int] = field(default_factory=list)


def start_id(tok) -> int:
    """The token a document is scored after: the tokenizer's BOS token if it has one
    (tokenizer_config.json's bos_token, found in the vocabulary), else end-of-text."""
    bos = tok.config.get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    if bos and tok.backend.token_to_id(bos) is not None:
        return tok.backend.token_to_id(bos)
    return tok.eos_id


def windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) of each window over the n prediction positions of a document:
    the window reads inputs [begin, end) and scores its last `scored` positions."""
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be between 1 and max_length={max_length}, got {stride}")
    out, done = [], 0
    while done < n:
        end = min(n, max_length + len(out) * stride)
        out.append((max(0, end - max_length), end, end - done))
        done = end
    return out


@torch.no_grad()
def score_texts(model, tok, texts: Iterable[str], max_length: int | None = None,
                stride: int | None = None, batch_size: int = 8, device: str = "auto",
                progress: bool | None = None) -> HeldoutResult:
    """Perplexity and bits per byte of `model` on `texts` (each a document).

    max_length: tokens per window (default: the model's max_position_embeddings);
    stride: new tokens scored per window after the first (default: max_length // 2);
    batch_size: windows per forward pass; progress: a tqdm bar (default: when on a terminal).
    """
    dev = pick_device(device) if isinstance(device, str) else device
    model.eval().to(dev)
    context = model.config.max_position_embeddings
    max_length = max_length or context
    stride = stride or max(1, max_length // 2)
    if not 2 <= max_length <= context:
        raise UserError(f"max_length {max_length}: must be between 2 and the model's context "
                        f"({context} tokens)")
    if not 1 <= stride <= max_length:
        raise UserError(f"stride {stride}: must be between 1 and max_length ({max_length}); "
                        "each window scores `stride` new tokens")
    first = start_id(tok)
    pad = tok.eos_id
    tokens = 0
    doc_nll: list[float] = []
    doc_bytes: list[int] = []
    batch: list[tuple[list[int], int, int]] = []  # (window's token ids + the next one, scored, doc)

    def flush() -> None:
        longest = max(len(ids) for ids, _, _ in batch) - 1
        inputs = torch.full((len(batch), longest), pad, dtype=torch.long)
        for r, (ids, _, _) in enumerate(batch):  # right padding: causal attention never sees it
            inputs[r, :len(ids) - 1] = torch.tensor(ids[:-1])
        amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
        with amp:
            hidden = model(inputs.to(dev), hidden_only=True)
        h = torch.cat([hidden[r, len(ids) - 1 - s:len(ids) - 1] for r, (ids, s, _) in enumerate(batch)])
        y = torch.tensor([t for ids, s, _ in batch for t in ids[len(ids) - s:]], device=dev)
        losses = []
        for i in range(0, len(y), LOGIT_CHUNK):
            with amp:
                logits = model.lm_head(h[i:i + LOGIT_CHUNK])
            losses.append(F.cross_entropy(logits.float(), y[i:i + LOGIT_CHUNK], reduction="none"))
        per_window = torch.cat(losses).split([s for _, s, _ in batch])
        for (_, _, doc), part in zip(batch, per_window, strict=True):
            doc_nll[doc] += part.sum().item()
        batch.clear()

    show = sys.stderr.isatty() if progress is None else progress
    for text in tqdm(texts, desc="held-out text", unit=" docs", disable=not show, leave=False):
        ids = [first] + tok.encode(text)
        if len(ids) == 1:
            continue
        doc = len(doc_nll)
        doc_nll.append(0.0)
        doc_bytes.append(len(text.encode("utf-8")))
        tokens += len(ids) - 1
        for begin, end, scored in windows(len(ids) - 1, max_length, stride):
            batch.append((ids[begin:end + 1], scored, doc))
            if len(batch) == batch_size:
                flush()
    if batch:
        flush()
    nll, n_bytes = sum(doc_nll), sum(doc_bytes)
    return HeldoutResult(tokens=tokens, bytes=n_bytes, nll=nll,
                         ppl=math.exp(nll / tokens) if tokens else math.nan,
                         bits_per_byte=nll / math.log(2) / n_bytes if n_bytes else math.nan,
                         documents=len(doc_nll), doc_nll=doc_nll, doc_bytes=doc_bytes)


def heldout_text(model, tok, paths: Sequence[str | Path], field: str = "text",
                 max_documents: int | None = None, **kw) -> HeldoutResult:
    """`score_texts` on the documents of .txt/.jsonl/.parquet files or folders (`field`: the
    JSONL field or parquet column), the first `max_documents` of them if given."""
    texts = iter_texts(paths, field=field)
    if max_documents is not None:
        texts = (t for _, t in zip(range(max_documents), texts, strict=False))
    return score_texts(model, tok, texts, **kw)
