"""Token pieces merged into whole characters, for showing a model's view of a text.

Byte-level BPE spells a character its merges never saw as its UTF-8 bytes, so 「韶」 may be
two tokens, each half a character; shown one by one they are garbage (what TransformerLens
and BertViz print for Chinese). Here consecutive tokens are joined until their bytes decode
as whole characters, and each piece keeps the span of token indices it came from, so a
per-token quantity (an attention weight, a probability) can be summed or averaged onto it.

    pieces = merged_pieces(tok, tok.encode("小美把禮物送給小芳"))   # [("小", (0, 1)), …]
"""

from __future__ import annotations

import codecs

import torch


def token_text(tok, token_id: int) -> str:
    """One token as text; bytes that are only part of a character as hex, e.g. 的 after
    the tail of another character is ⟨ae⟩的."""
    raw, out = tok.token_bytes(token_id), []
    while raw:
        try:
            out.append(raw.decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            out.append(raw[: e.start].decode("utf-8"))
            bad = raw[e.start: max(e.end, e.start + 1)]
            out.append("⟨" + " ".join(f"{b:02x}" for b in bad) + "⟩")
            raw = raw[e.start + len(bad):]
    return "".join(out)


def merged_pieces(tok, ids: list[int]) -> list[tuple[str, tuple[int, int]]]:
    """[(text, (start, end))]: tokens ids[start:end] joined until their bytes end on a
    character boundary, so every piece is whole UTF-8 characters (a token that is already
    whole stays alone; one that holds the end of 開 and the start of 心 joins both). Bytes
    that can never make a character stay pieces of their own, shown as hex."""
    out, i = [], 0
    while i < len(ids):
        decoder, text, whole = codecs.getincrementaldecoder("utf-8")(), "", None
        for end in range(i + 1, len(ids) + 1):
            try:
                text += decoder.decode(tok.token_bytes(ids[end - 1]))
            except UnicodeDecodeError:
                break
            if decoder.getstate()[0] == b"":
                whole = end
                break
        if whole is None:  # no boundary reached: this token alone, as hex
            out.append((token_text(tok, ids[i]), (i, i + 1)))
            i += 1
        else:
            out.append((text, (i, whole)))
            i = whole
    return out


def merge_matrix(weights: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """A (…, T, T) attention matrix onto pieces (…, P, P): a key piece gets the sum of its
    tokens' weights (so each row still sums to 1) and a query piece the mean of its tokens'
    rows (a mean of distributions is one)."""
    cols = [weights[..., a:b].sum(-1) for a, b in spans]
    w = torch.stack(cols, dim=-1)
    return torch.stack([w[..., a:b, :].mean(-2) for a, b in spans], dim=-2)
