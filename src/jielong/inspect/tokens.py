"""The same text under several tokenizers: how many tokens the Chinese and the English part
cost, and which characters a vocabulary has no token for.

Run as:
    jielong tokenize --compare runs/tok-small runs/tok --text "韶光易逝。韶光易逝。Time flies."
    jielong tokenize --compare runs/demo/model models/Qwen2.5-0.5B --file notes.txt

A byte-level BPE never meets an unknown character: one without a token of its own is spelled
as its UTF-8 bytes, two to four tokens (the notes' 「韶」 split in two), which is what a
"byte-fallback character" means here — one no single token covers whole.

Counting works on byte spans: each token stands for some bytes of the text (`token_bytes`),
laid end to end. A token counts towards a script by the share of its non-space bytes that
belong to that script's characters, so the shares of all tokens add up to the token count
(a token mixing "。" and "\n" is wholly Chinese; one mixing scripts is split by bytes).
Tokenizers whose pieces do not spell the text byte for byte (SentencePiece's "▁" prefix, a
normalizer) are aligned through the library's character offsets instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jielong.errors import UserError
from jielong.tokenizer import Tokenizer, render_tokens, use_color
from jielong.tokenizer import tokenize_cmd as tokenize_one


def script(c: str) -> str | None:
    """"zh" for Han characters (Traditional and Simplified, 〇, extensions) and CJK or
    full-width punctuation, "en" for ASCII and Latin letters, "other" for the rest (kana,
    emoji…), None for whitespace (counted in no script)."""
    if c.isspace():
        return None
    o = ord(c)
    if (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF
            or 0x20000 <= o <= 0x3FFFF or 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFFEF):
        return "zh"
    if o < 0x80 or (c.isalpha() and o < 0x250):  # ASCII, Latin-1 and Latin Extended letters
        return "en"
    return "other"


@dataclasses.dataclass
class TokenCount:
    """How one tokenizer cuts one text."""

    name: str
    vocab_size: int
    tokens: int
    n_bytes: int
    chars: dict[str, int]     # non-space characters per script
    by_script: dict[str, float]  # tokens per script (shares of mixed tokens)
    fallback: list[str]       # characters no single token covers whole, first-seen order

    def per_char(self, s: str) -> float | None:
        return self.by_script.get(s, 0.0) / self.chars[s] if self.chars.get(s) else None

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / max(self.tokens, 1)


def count_tokens(tok: Tokenizer, text: str, name: str = "") -> TokenCount:
    """Tokens of `text` in all and per script, and its byte-fallback characters."""
    enc = tok.backend.encode(text, add_special_tokens=False)
    pieces = [tok.token_bytes(i) for i in enc.ids]
    # (start, end) of every character and every token, in bytes if the tokens spell the text,
    # else in characters through the encoding's offsets.
    if b"".join(pieces) == text.encode("utf-8"):
        char_spans, at = [], 0
        for c in text:
            char_spans.append((at, at + len(c.encode("utf-8"))))
            at = char_spans[-1][1]
        token_spans, at = [], 0
        for p in pieces:
            token_spans.append((at, at + len(p)))
            at += len(p)
    else:
        char_spans = [(i, i + 1) for i in range(len(text))]
        token_spans = [tuple(o) for o in enc.offsets]
    scripts = [script(c) for c in text]
    chars: dict[str, int] = {}
    for s in scripts:
        if s:
            chars[s] = chars.get(s, 0) + 1
    by_script: dict[str, float] = {}
    covers = [0] * len(text)   # how many tokens overlap each character
    whole = [False] * len(text)  # whether one token covers it entirely
    ci = 0
    for (a, b), piece in zip(token_spans, pieces, strict=True):
        # A byte token (<0xE9>) reports the whole character as its offsets, SentencePiece's
        # lone "▁" the next word's: neither covers a character.
        if not piece.strip():
            continue
        complete = _is_utf8(piece)
        while ci < len(text) and char_spans[ci][1] <= a:
            ci += 1
        weights: dict[str, int] = {}
        j = ci
        while j < len(text) and char_spans[j][0] < b:
            ca, cb = char_spans[j]
            covers[j] += 1
            whole[j] |= complete and a <= ca and cb <= b
            if scripts[j]:
                weights[scripts[j]] = weights.get(scripts[j], 0) + min(b, cb) - max(a, ca)
            j += 1
        total = sum(weights.values())
        for s, w in weights.items():
            by_script[s] = by_script.get(s, 0.0) + w / total
    fallback = list(dict.fromkeys(c for c, n, w in zip(text, covers, whole, strict=True)
                                  if n > 1 and not w and not c.isspace()))
    return TokenCount(name, tok.vocab_size, len(enc.ids), len(text.encode("utf-8")), chars,
                      by_script, fallback)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def table(counts: list[TokenCount]) -> str:
    """The comparison as aligned text columns."""
    def num(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"

    head = ("tokenizer", "vocab", "tokens", "zh tok/char", "en tok/char", "bytes/token",
            "byte-fallback characters")
    rows = [head] + [(c.name, f"{c.vocab_size:,}", str(c.tokens), num(c.per_char("zh")),
                      num(c.per_char("en")), f"{c.bytes_per_token:.2f}",
                      "".join(c.fallback) or "—") for c in counts]
    widths = [max(len(r[k]) for r in rows) for k in range(len(head) - 1)]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [r[k].rjust(widths[k]) for k in range(1, len(widths))]
        lines.append("  ".join(cells + [r[-1]]))
    return "\n".join(lines)


def compare_tokenizers(paths: list[str], text: str, color: bool = False) -> str:
    """Each tokenizer's coloured view of `text`, one after another, then the table."""
    out, counts = [], []
    for p in paths:
        tok = Tokenizer.from_dir(p)
        counts.append(count_tokens(tok, text, name=p))
        out += [f"── {p} ({tok.vocab_size:,} tokens) ──", render_tokens(tok, text, color=color), ""]
    return "\n".join(out + [table(counts)])


def read_text(file: str) -> str:
    path = Path(file)
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass --file with a UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid UTF-8; re-save the file as UTF-8") from None


def tokenize_cmd(text: str | None = None, model: str = "runs/demo/model",
                 compare: list[str] | None = None, file: str | None = None) -> None:
    """Show how a text splits into tokens; with --compare, under several tokenizers side by side.

    Args:
        text: The text to tokenize (also accepted as --text).
        model: A model or tokenizer folder (with tokenizer.json).
        compare: Tokenizer or model folders (ours, or a Hugging Face model's) to compare on the
            same text: each one's coloured tokens, then tokens per character for the Chinese
            and the English part, bytes per token and the characters spelled as bytes.
        file: Read the text from this UTF-8 file instead.
    """
    if text is not None and file is not None:
        raise UserError("tokenize: give the text once, either as TEXT/--text or as --file FILE")
    if file is not None:
        text = read_text(file)
    if not text:
        raise UserError("tokenize: no text; pass it as TEXT, --text \"…\" or --file FILE")
    if not compare:
        tokenize_one(text, model=model)
        return
    print(compare_tokenizers(compare, text, color=use_color()))


# `jielong tokenize "…"` and `jielong tokenize --text "…"` alike (see jielong.cli).
tokenize_cmd.optional_positional = "text"
