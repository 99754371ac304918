"""Inputs of `jielong data clean`: which files it reads, the readers for each kind, and
`InputReader`, the first step of the pipeline, which reads a task's share of the files.

    from jielong.prep.readers import find_inputs, read_texts
    texts = read_texts(find_inputs(["web/", "books.jsonl.zst"]), field="text")

Kinds: .txt (one document per file, or per blank-line-separated block), .jsonl, .parquet,
.html/.htm (one page per file) and .warc/.wet; any but .parquet may be .gz or .zst. A
record that cannot be read (bad UTF-8 or JSON, no text field, empty text) becomes a
placeholder document that `ReadErrors` drops with its file:line and why; a damaged file
stops the run with one line that names it. Every document is stamped with its position
in the corpus (metadata[POS]), which the de-duplication stage uses to keep input order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import orjson
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers.base import BaseDiskReader, BaseReader
from datatrove.pipeline.readers.jsonl import JsonlReader
from datatrove.pipeline.readers.parquet import ParquetReader
from datatrove.pipeline.readers.warc import WarcReader

from jielong.errors import UserError, at
from jielong.prep.html_extract import extract_html

KINDS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet", ".html": "html",
         ".htm": "html", ".warc": "warc", ".wet": "warc"}
COMPRESSED = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
POS = "jl_pos"  # metadata: (file index, document index), the corpus order


def input_kind(path: str | Path) -> tuple[str, str | None] | None:
    """(kind, compression) from a file name, e.g. ("jsonl", "zstd") for x.jsonl.zst."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    comp = COMPRESSED.get(suffixes[-1]) if suffixes else None
    if comp:
        suffixes = suffixes[:-1]
    kind = KINDS.get(suffixes[-1]) if suffixes else None
    if kind is None or (kind == "parquet" and comp):
        return None
    return kind, comp


def find_inputs(paths: list[str]) -> list[Path]:
    """Input files, folders expanded (sorted, hidden files skipped), checked up front."""
    names = "txt, jsonl, parquet, html, warc (optionally .gz or .zst)"
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or directory; check the path")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and input_kind(f)
                           and not any(s.startswith(".") for s in f.relative_to(p).parts))
            if not found:
                raise UserError(f"{p}: folder holds no {names} files")
            files += found
        elif input_kind(p) is None:
            raise UserError(f"{p}: unsupported file type; inputs are {names} files")
        else:
            files.append(p)
    if not files:
        raise UserError("no input files given")
    return files


class TxtReader(BaseDiskReader):
    """Plain text: one document per file, or per blank-line-separated block ("paragraph")."""

    name = "📄 Txt"

    def __init__(self, data_folder, split: str = "file", compression: str | None = "infer", **kw):
        super().__init__(data_folder, **kw)
        self.split, self.compression = split, compression

    def read_file(self, filepath: str):
        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            data = f.read()
        try:
            text = data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            yield _error_doc(filepath, line, f"not valid UTF-8 (byte 0x{data[e.start]:02x})")
            return
        if self.split == "file":
            blocks = [(1, text)]
        else:  # blocks separated by blank lines, each with its first line number
            blocks, line = [], 1
            for part in re.split(r"(\n[ \t]*\n\s*)", text):
                if part.strip() and not re.fullmatch(r"\n[ \t]*\n\s*", part):
                    blocks.append((line + len(part) - len(part.lstrip("\n")), part.strip("\n")))
                line += part.count("\n")
        for line, block in blocks:
            doc = self.get_document_from_dict({"text": block}, filepath, line)
            if doc:
                yield doc


class HtmlReader(BaseDiskReader):
    """One document per HTML file, left as HTML for the html step (bad bytes replaced)."""

    name = "🌐 Html"

    def __init__(self, data_folder, compression: str | None = "infer", **kw):
        super().__init__(data_folder, **kw)
        self.compression = compression

    def read_file(self, filepath: str):
        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            html = f.read().decode("utf-8", errors="replace")
        doc = self.get_document_from_dict({"text": html}, filepath, 0)
        if doc:
            yield doc


class StrictJsonlReader(JsonlReader):
    """datatrove's JSONL reader, but a bad line becomes a document dropped as "unreadable"
    (with its file:line and why) instead of a warning in a log nobody reads."""

    def read_file(self, filepath: str):
        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            for n, raw in enumerate(_lines(f), 1):
                if not raw.strip():
                    continue
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError as e:
                    yield _error_doc(filepath, n, f"not valid JSON ({str(e).split(':')[0]})")
                    continue
                value = obj.get(self.text_key) if isinstance(obj, dict) else None
                if not isinstance(value, str):
                    why = (f"no {self.text_key!r} field (fields: {', '.join(list(obj)[:8])})"
                           if isinstance(obj, dict) else f"a JSON {type(obj).__name__}, not an object")
                    yield _error_doc(filepath, n, why + "; pass --field NAME for another field"
                                     if isinstance(obj, dict) else why)
                    continue
                if not value.strip():
                    yield _error_doc(filepath, n, "empty text", reason="no_text")
                    continue
                doc = self.get_document_from_dict(obj, filepath, n)
                if doc:
                    yield doc


def _lines(f, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary stream that may not support readline (zstd streams don't)."""
    rest = b""
    while block := f.read(chunk):
        parts = (rest + block).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def _error_doc(filepath: str, line: int, why: str, reason: str = "unreadable") -> Document:
    """The placeholder of a record that could not be read; `ReadErrors` drops it."""
    return Document(text="", id=at(filepath, line),
                    metadata={"read_error": f"{at(filepath, line)}: {why}", "read_reason": reason})


class InputReader(BaseReader):
    """Reads this task's share of the input files (every world_size-th), each with the
    reader for its kind, and stamps each document with its position in the corpus."""

    name = "📖 Inputs"

    def __init__(self, files: list[str], field: str = "text", txt_split: str = "file"):
        super().__init__(text_key=field)
        self.files, self.field, self.txt_split = files, field, txt_split

    def _reader(self, path: Path):
        kind, comp = input_kind(path)
        folder = str(path.parent)
        common = {"text_key": self.field}
        if kind == "txt":
            return TxtReader(folder, split=self.txt_split, compression=comp)
        if kind == "html":
            return HtmlReader(folder, compression=comp)
        if kind == "jsonl":
            return StrictJsonlReader(folder, compression=comp, **common)
        if kind == "parquet":
            return ParquetReader(folder, **common)
        try:  # datatrove checks WarcReader's own dependencies when it is made
            return WarcReader(folder, compression=comp)
        except ImportError as e:
            raise UserError(f"{path}: reading WARC needs warcio, python-magic and faust-cchardet "
                            f"({e}); `pip install 'jielong[data]'`") from None

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        for fi in range(rank, len(self.files), world_size):
            path = Path(self.files[fi])
            kind = input_kind(path)[0]
            fmt = "html" if kind == "html" or (kind == "warc" and ".wet" not in path.name) else "text"
            if kind == "parquet":
                check_parquet(path, self.field)
            reader = self._reader(path)
            self.stat_update("input_files")
            try:
                for di, doc in enumerate(reader.read_file(path.name)):
                    doc.metadata[POS] = [fi, di]
                    doc.metadata.setdefault("format", fmt)
                    doc.metadata.setdefault("file_path", str(path))
                    self.stat_update(f"format_{kind}")
                    yield doc
            except UserError:
                raise
            except Exception as e:  # a damaged file (bad gzip, not a WARC, …)
                raise UserError(f"{path}: cannot read it as {kind} "
                                f"({type(e).__name__}: {str(e)[:120]}); check or remove the file") from None


def check_parquet(path: Path, field: str) -> None:
    """A parquet input must have the text column: say so before any task starts."""
    import pyarrow.parquet as pq  # lazy: pyarrow is only needed for parquet inputs

    try:
        names = pq.read_schema(path).names
    except Exception as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    if field not in names:
        raise UserError(f"{path}: no {field!r} column (columns: {', '.join(names)}); "
                        "pass --field NAME")



class ReadErrors(BaseFilter):
    """Drops the placeholders the readers leave for unreadable records and empty texts."""

    name = "🚫 Read errors"

    def filter(self, doc: Document):
        if "read_error" in doc.metadata:
            return False, doc.metadata["read_reason"]
        return True



def read_texts(files: list[Path], field: str = "text", txt_split: str = "file",
               limit: int | None = None) -> list[str]:
    """Texts of input files in one process, through the same readers as `clean`; HTML
    pages become their main text; unreadable records and empty pages are skipped."""
    reader = InputReader([str(f) for f in files], field, txt_split)
    texts = []
    for doc in reader.run():
        if "read_error" in doc.metadata:
            continue
        text = doc.text
        if doc.metadata.get("format") == "html":
            text = extract_html(text)
        if text.strip():
            texts.append(text)
            if limit and len(texts) >= limit:
                break
    return texts
