"""Text normalisation: `normalize_text` repairs mojibake (ftfy), applies NFC, strips control
and invisible format characters and collapses runs of spaces and blank lines, keeping what
Chinese is written with (full-width punctuation, curly quotes) and emoji; `Normalize` is the
pipeline step that applies it to every document.

    from jielong.prep.normalize import normalize_text
    normalize_text("cafÃ©  au lait，好！")   # "café au lait，好！"
"""

from __future__ import annotations

import functools
import re

import ftfy
from datatrove.pipeline.formatters.base import BaseFormatter


@functools.cache
def _ftfy_config():
    # ftfy's defaults would turn full-width （），。！？ and ＡＢＣ into ASCII
    # (fix_character_width) and “curly” quotes into straight ones (uncurl_quotes): both are
    # how Chinese is written, so both are off. NFC, not NFKC, for the same reason.
    return ftfy.TextFixerConfig(fix_character_width=False, uncurl_quotes=False,
                                normalization="NFC", explain=False)


# C0/C1 controls except tab and newline; invisible format characters (zero-width space, word
# joiner, BOM, soft hyphen, bidirectional overrides). ZWJ and variation selectors stay: emoji
# sequences like 👩‍💻 and ❤️ are built from them.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200e\u200f\u2060\ufeff\u00ad"
                      "\u202a-\u202e\u2066-\u2069]")
_INNER_SPACE = re.compile(r"(?<=\S)[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]{2,}")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """Repair mojibake and bad escapes (ftfy, keeping CJK full-width punctuation), NFC,
    strip control and invisible format characters, collapse runs of spaces inside a line
    (indentation stays) and of blank lines (to one), strip trailing spaces."""
    text = ftfy.fix_text(text.replace("\r\n", "\n"), config=_ftfy_config())
    text = _CONTROL.sub("", text)
    lines = [_INNER_SPACE.sub(" ", line).rstrip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")


class Normalize(BaseFormatter):
    """`normalize_text` on every document."""

    name = "🧽 Normalize"

    def format(self, text: str) -> str:
        return normalize_text(text)

