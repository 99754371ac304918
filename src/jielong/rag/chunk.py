"""Chunks: a document's text cut into passages of about `size` tokens, at sentence ends.

    from jielong.rag.chunk import chunk_document
    chunks = chunk_document(doc, size=256, overlap=32)   # doc: jielong.rag.ingest.Document
    doc.text[c.start:c.end] == c.text                     # for every chunk, exactly

A document comes in sections (a Markdown heading's text, a PDF page, the whole of a plain
file); a chunk never crosses a section, so each has one page and one heading path. Inside a
section the text is cut into units — sentences, and lines (a list item, a table row, a
hard-wrapped line are units too) — and the units are packed greedily until the next one would
pass `size` tokens. A paragraph break is the preferred place to end a chunk: when the next
paragraph does not fit whole and the chunk is already half full, it ends there. Consecutive
chunks share their last whole sentences up to `overlap` tokens, so a chunk starts at a
sentence start; only a single sentence longer than `size` is cut inside itself, at token
boundaries.

Sentence ends: Chinese 。！？；… (and ! ?, full width or not), then any closing quotes or
brackets (」』”’）》】), kept with the sentence; an English full stop when a space and a word
that does not start lower-case follow, and not after a title (Mr, Dr, St, …) or an initial,
so "3.30 p.m. for" and "Mr. Li" go on. "… in the U.S. The" stays one sentence; rule-based
splitters such as pySBD know more abbreviations, we keep the rule short.

Tokens are counted by `SimpleCounter` unless another counter is given: each CJK character
(Han, kana, Hangul) is one token, each other run of letters or digits is one, punctuation
none — near what a Chinese BERT's WordPiece gives for Chinese (one token a character) and
within a factor of 1.3 of BPE for English words. `HFCounter` counts with a real tokenizer
(jielong.tokenizer.Tokenizer or a `tokenizers.Tokenizer`).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

SIZE, OVERLAP = 256, 32  # tokens; a bge-small-zh / BERT window is 512

# One token each: a CJK character, or a run of other letters/digits.
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0003134f"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}_]+")
_CLOSE = "\"'”’」』）)】》〉\\]"
_LINE = re.compile(r"\n")
_SENT_END = re.compile(
    rf"(?:[。．！？；!?]|…+|\.{{3}})[{_CLOSE}]*"           # Chinese, and ! ? anywhere
    # an English full stop: after a word that is not a title or an initial, before a space
    # and a word that does not start lower-case ("3.30 p.m. for" goes on; "Mr. Li" too)
    rf"|(?<=[^\s.])(?<!\b[A-Z])(?<!\bMr)(?<!\bMs)(?<!\bDr)(?<!\bSt)(?<!\bMrs)(?<!\bvs)(?<!\bProf)"
    rf"\.[{_CLOSE}]*(?=\s+[^a-z\s]|\s*$)"
)
_PARA = re.compile(r"\n[ \t\u3000]*\n\s*")


@dataclass
class Chunk:
    """A passage of a source document: `text` is exactly the document's extracted text
    [start:end]; page is 1-based (PDFs), heading the Markdown path "A > B > C"."""

    id: str
    text: str
    source: str
    page: int | None
    heading: str | None
    start: int
    end: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Chunk:
        return cls(**{k: d.get(k) for k in ("id", "text", "source", "page", "heading", "start", "end")})

    def indexed_text(self) -> str:
        """What retrieval reads: the heading path, then the text (a passage under "Install >
        Linux" is found by "install linux" even when its sentences do not say so)."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def chunk_id(source: str, n: int) -> str:
    return f"{hashlib.sha256(source.encode()).hexdigest()[:12]}:{n}"


class SimpleCounter:
    """CJK characters one token each, other words one each (see the module docstring)."""

    name = "simple"

    def count(self, text: str) -> int:
        return sum(1 for _ in _TOKEN.finditer(text))

    def cuts(self, text: str, size: int) -> list[int]:
        """Character positions that cut `text` into pieces of at most `size` tokens."""
        starts = [m.start() for m in _TOKEN.finditer(text)]
        return starts[size::size]


class HFCounter:
    """Counts with a subword tokenizer: a jielong Tokenizer or a `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer, name: str = "hf"):
        self.backend = getattr(tokenizer, "backend", tokenizer)
        self.name = name

    def count(self, text: str) -> int:
        return len(self.backend.encode(text, add_special_tokens=False).ids)

    def cuts(self, text: str, size: int) -> list[int]:
        offsets = self.backend.encode(text, add_special_tokens=False).offsets
        return sorted({offsets[i][0] for i in range(size, len(offsets), size)} - {0})


def units(text: str, start: int, end: int) -> list[tuple[int, int, bool]]:
    """(start, end, starts_paragraph) of each sentence or line in text[start:end], whitespace
    trimmed, in order."""
    out: list[tuple[int, int, bool]] = []
    for pstart, pend in _spans(text, start, end, _PARA):
        before = len(out)
        for lstart, lend in _spans(text, pstart, pend, _LINE):
            cut = lstart
            for m in _SENT_END.finditer(text, lstart, lend):
                out += _trimmed(text, cut, m.end())
                cut = m.end()
            out += _trimmed(text, cut, lend)
        if len(out) > before:  # the paragraph's first unit starts it
            out[before] = (*out[before][:2], True)
    return out


def _spans(text: str, start: int, end: int, sep: re.Pattern) -> list[tuple[int, int]]:
    spans, cut = [], start
    for m in sep.finditer(text, start, end):
        spans.append((cut, m.start()))
        cut = m.end()
    spans.append((cut, end))
    return spans


def _trimmed(text: str, start: int, end: int, para: bool = False) -> list[tuple[int, int, bool]]:
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return []
    s = start + (len(piece) - len(piece.lstrip()))
    return [(s, s + len(stripped), para)]


def pack(text: str, spans: list[tuple[int, int, bool]], size: int, overlap: int,
         counter) -> list[tuple[int, int]]:
    """(start, end) of each chunk over `spans` (from `units`): greedy packing to `size`
    tokens, ending at a paragraph break when the next paragraph does not fit and the chunk
    is half full, with whole trailing sentences repeated up to `overlap` tokens."""
    pieces: list[tuple[int, int, bool, int]] = []
    for s, e, para in spans:  # a unit longer than `size`: cut it at token boundaries
        n = counter.count(text[s:e])
        if n <= size:
            pieces.append((s, e, para, n))
            continue
        cuts = [s] + [s + c for c in counter.cuts(text[s:e], size)] + [e]
        for i, (a, b) in enumerate(itertools.pairwise(cuts)):
            for ts, te, _ in _trimmed(text, a, b, False):
                pieces.append((ts, te, para and i == 0, counter.count(text[ts:te])))
    para_tokens = _paragraph_tokens(pieces)
    chunks: list[tuple[int, int]] = []
    i = 0
    while i < len(pieces):
        j, total = i, pieces[i][3]
        while j + 1 < len(pieces):
            nxt = pieces[j + 1]
            if total + nxt[3] > size:
                break
            if nxt[2] and total >= size / 2 and total + para_tokens[j + 1] > size:
                break
            j += 1
            total += nxt[3]
        # a subword tokenizer's count is not a sum over sentences (" The" merges its space)
        while j > i and counter.count(text[pieces[i][0]:pieces[j][1]]) > size:
            j -= 1
        chunks.append((pieces[i][0], pieces[j][1]))
        if j + 1 >= len(pieces):
            break
        back, kept = j + 1, 0  # the next chunk starts with whole sentences of this one's end
        while back - 1 > i and kept + pieces[back - 1][3] <= overlap:
            back -= 1
            kept += pieces[back][3]
        i = back
    return chunks


def _paragraph_tokens(pieces: list[tuple[int, int, bool, int]]) -> list[int]:
    """For each piece that starts a paragraph, the tokens of its whole paragraph."""
    out = [0] * len(pieces)
    start = 0
    for k in range(1, len(pieces) + 1):
        if k == len(pieces) or pieces[k][2]:
            out[start] = sum(p[3] for p in pieces[start:k])
            start = k
    return out


def chunk_document(doc, size: int = SIZE, overlap: int = OVERLAP, counter=None) -> list[Chunk]:
    """The chunks of an ingested document (`jielong.rag.ingest.Document`), section by
    section; ids are f"{sha256(source)[:12]}:{n}"."""
    if size < 1 or overlap < 0 or overlap >= size:
        raise ValueError(f"chunk size {size} and overlap {overlap}: need size ≥ 1 and 0 ≤ overlap < size")
    counter = counter or SimpleCounter()
    out: list[Chunk] = []
    for sec in doc.sections:
        for s, e in pack(doc.text, units(doc.text, sec.start, sec.end), size, overlap, counter):
            out.append(Chunk(chunk_id(doc.source, len(out)), doc.text[s:e], doc.source,
                             sec.page, sec.heading, s, e))
    return out


def chunk_all(docs: Iterable, size: int = SIZE, overlap: int = OVERLAP, counter=None) -> list[Chunk]:
    return [c for d in docs for c in chunk_document(d, size, overlap, counter)]
