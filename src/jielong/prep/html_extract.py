"""HTML to text: the main text of a web page (trafilatura), and the `HtmlExtract` step that
turns HTML documents into it.

    from jielong.prep.html_extract import extract_html
    extract_html(open("page.html").read())   # the article, without menus, scripts or footers

`looks_like_html` tells a whole HTML document from text that merely contains a tag.
Emoji survive whole, zero-width-joiner sequences included (trafilatura would split them).
"""

from __future__ import annotations

import re

import trafilatura
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

_HTML_START = re.compile(r"\A\ufeff?\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html[\s>]|head[\s>]|body[\s>])",
                         re.I | re.S)


def looks_like_html(text: str) -> bool:
    """True for a whole HTML document (it starts with <!DOCTYPE html>, <html>, <head> or
    <body>), not for text that merely contains a tag."""
    return bool(_HTML_START.match(text[:2000]))


# The zero-width joiner, literal or as an entity. trafilatura drops every non-printable
# character, and ZWJ is one (category Cf), which splits emoji sequences: ❤️‍🔥 became ❤️🔥 and
# 👩‍👩‍👧 three people. It travels through trafilatura as a marker of printable letters instead.
_ZWJ = re.compile(r"\u200d|&zwj;|&#0*8205;|&#x0*200d;", re.I)
_ZWJ_MARK = "ZwJqXjZw"


def extract_html(html: str, favor_precision: bool = True, include_tables: bool = True) -> str:
    """The main text of an HTML page (trafilatura): no navigation, scripts, styles, footers
    or comments; emoji (ZWJ sequences whole) and punctuation as written. "" when there is
    none."""
    joined = _ZWJ_MARK not in html and _ZWJ.search(html) is not None
    if joined:
        html = _ZWJ.sub(_ZWJ_MARK, html)
    text = trafilatura.extract(html, output_format="txt", include_comments=False,
                               include_tables=include_tables, favor_precision=favor_precision,
                               deduplicate=False, with_metadata=False)
    text = (text or "").strip()
    return text.replace(_ZWJ_MARK, "\u200d") if joined else text


class HtmlExtract(BaseFilter):
    """Documents with metadata["format"] == "html", or whose text is a whole HTML document,
    become their main text (trafilatura, `extract_html`); metadata["format"] becomes "text"
    and metadata["source_format"] "html". A page with no main text is dropped ("no_text");
    one that trafilatura fails on, too ("extract_error"). Other documents pass unchanged."""

    name = "🌐 HTML extract"

    def __init__(self, favor_precision: bool = True, include_tables: bool = True,
                 exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.favor_precision = favor_precision
        self.include_tables = include_tables

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if str(doc.metadata.get("format", "")).lower() != "html" and not looks_like_html(doc.text):
            return True
        try:
            text = extract_html(doc.text, self.favor_precision, self.include_tables)
        except Exception:  # one malformed page must not end the job
            return False, "extract_error"
        if not text:
            return False, "no_text"
        self.stat_update("html_extracted")
        doc.text = text
        doc.metadata["format"] = "text"
        doc.metadata["source_format"] = "html"
        return True

