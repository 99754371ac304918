"""Documents from files: the text a passage is cut from, with its pages and headings.

    from jielong.rag.ingest import read_file, find_files
    docs = read_file(Path("guide.md"))        # [Document(source, text, sections)]

What each format gives (the document's `text` is what chunk offsets point into):
- .txt: the file (UTF-8, a BOM dropped); one section.
- .md / .markdown: the file as written; a section per ATX heading (`#`…`######`, not inside
  ``` or ~~~ fences), whose heading is the path of headings above it, "A > B > C".
- .html / .htm: the page's main text, by trafilatura as `jielong data clean` extracts it
  (jielong.prep.html_extract: no menus, scripts or footers).
- .pdf: pypdf's text of each page, pages joined by a blank line; a section per page,
  numbered from 1. An encrypted PDF that opens with the empty password (owner-password-only
  PDFs) is read; one that needs a password, or that pypdf cannot parse, is skipped.
- .jsonl: one document per line, its `field` ("text" unless told); source "FILE:LINE".
- .json: SQuAD-style (data → paragraphs → context, as DRCD and CMRC 2018 ship): each
  paragraph's context is a document, source "FILE#N" (N counts paragraphs from 0 over the
  file), heading the article's title.
A file that cannot be read raises `Skipped(reason)`; so does one with no text at all.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pypdf
from pypdf.errors import PdfReadError

from jielong.prep.html_extract import extract_html

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
            ".html": "html", ".htm": "html", ".pdf": "pdf", ".jsonl": "jsonl", ".json": "squad"}
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


class Skipped(Exception):
    """A file that gives no document: the message is the reason, one line."""


@dataclass
class Section:
    start: int
    end: int
    page: int | None = None
    heading: str | None = None


@dataclass
class Document:
    source: str
    text: str
    sections: list[Section] = field(default_factory=list)

    def __post_init__(self):
        if not self.sections:
            self.sections = [Section(0, len(self.text))]


def find_files(paths: list[str | Path]) -> list[Path]:
    """The files named and, under each folder named, every file (hidden ones aside), sorted;
    a path that does not exist is a UserError-worthy mistake the caller reports."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file()
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def read_file(path: Path, field: str = "text") -> list[Document]:
    """The documents of one file (see the module docstring); `Skipped` when there are none."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise Skipped(f"not a document type jielong reads ({', '.join(sorted(SUFFIXES))})")
    if kind == "pdf":
        docs = [read_pdf(path)]
    else:
        text = read_text(path)
        if kind == "text":
            docs = [Document(str(path), text)]
        elif kind == "markdown":
            docs = [Document(str(path), text, markdown_sections(text))]
        elif kind == "html":
            docs = [Document(str(path), extract_html(text))]
        elif kind == "jsonl":
            docs = read_jsonl(path, text, field)
        else:
            docs = read_squad(path, text)
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise Skipped("empty: no text" + (" (a scanned PDF? run OCR on it first)" if kind == "pdf" else ""))
    return docs


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Skipped(f"not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
    except OSError as e:
        raise Skipped(f"cannot be read ({e.strerror or e})") from None


def markdown_sections(text: str) -> list[Section]:
    """A section per heading (with the heading line in it), headed "A > B > C"."""
    sections = [Section(0, len(text))]
    path: list[tuple[int, str]] = []
    fence = None
    pos = 0
    for line in text.splitlines(keepends=True):
        f = _FENCE.match(line)
        if f:
            fence = None if fence == f.group(1) else fence or f.group(1)
        elif fence is None and (m := _HEADING.match(line.rstrip("\r\n"))):
            level = len(m.group(1))
            path = [(lv, h) for lv, h in path if lv < level] + [(level, m.group(2))]
            sections[-1].end = pos
            sections.append(Section(pos, len(text), heading=" > ".join(h for _, h in path)))
        pos += len(line)
    return [s for s in sections if text[s.start:s.end].strip()]


def read_pdf(path: Path) -> Document:
    # pypdf logs what it repairs ("EOF marker not found", …) as warnings; a file it cannot
    # read is one skipped line with the reason, and one it repaired needs no words
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Skipped("encrypted PDF: it needs a password; save an unencrypted copy")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except Skipped:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, NotImplementedError) as e:
        raise Skipped(f"unreadable PDF ({type(e).__name__}: {str(e)[:80]})") from None
    text, sections = "", []
    for n, page in enumerate(pages, 1):
        if page:
            text += "\n\n" if text else ""
            sections.append(Section(len(text), len(text) + len(page), page=n))
            text += page
    return Document(str(path), text, sections or [Section(0, 0)])


def read_jsonl(path: Path, text: str, field: str) -> list[Document]:
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise Skipped(f"line {n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or field not in row:
            raise Skipped(f"line {n}: no {field!r} field; name the text field with --field")
        if not isinstance(row[field], str):
            raise Skipped(f"line {n}: {field!r} is not a string")
        docs.append(Document(f"{path}:{n}", row[field]))
    return docs


def read_squad(path: Path, text: str) -> list[Document]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise Skipped(f"not JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise Skipped("not SQuAD-style JSON (data → paragraphs → context)")
    docs = []
    for article in data["data"]:
        for para in article.get("paragraphs", []):
            docs.append(Document(f"{path}#{len(docs)}", para.get("context", ""),
                                 [Section(0, len(para.get("context", "")), heading=article.get("title"))]))
    return docs
