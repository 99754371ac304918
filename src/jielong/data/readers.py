"""Read documents from text corpora: .txt, .jsonl and .parquet files, or folders of them.

    from jielong.data.readers import iter_texts
    for doc in iter_texts(["data/", "extra.jsonl"], field="text"): ...

- `.txt`      the whole file is one document
- `.jsonl`    one JSON object per line; the document is the string in `field`; blank lines
              are skipped; read line by line, so a file of any size streams
- `.parquet`  the string column `field`, read in record batches (needs pyarrow)
- a folder    every file with one of those suffixes under it, recursively, in sorted order

Every user mistake (missing path, bad bytes, a malformed line, a missing field, an empty
corpus) is a one-line `UserError` that says where (file:line) and how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from jielong.errors import UserError, at, json_problem

SUFFIXES = (".txt", ".jsonl", ".parquet")
PARQUET_BATCH_ROWS = 1024


def iter_texts(paths: Sequence[str | Path], field: str = "text") -> Iterator[str]:
    """Yield the non-empty documents of `paths`, in order, streaming.

    Raises `UserError` for a user mistake, and, once everything was read, when not one
    document had any non-whitespace text ("corpus is empty").
    """
    files = find_files(paths)
    found = False
    for f in files:
        for doc in _READERS[f.suffix.lower()](f, field):
            if doc:
                found = found or not doc.isspace()
                yield doc
    if not found:
        where = ", ".join(str(f) for f in files[:5]) + (" …" if len(files) > 5 else "")
        raise UserError(f"corpus is empty: no document with any text in {where}; "
                        f"check the files (and that --field {field!r} names the text field)")


def find_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files `iter_texts(paths)` would read, in order (folders expanded)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    return [f for p in paths for f in _expand(Path(p))]


def _expand(p: Path) -> list[Path]:
    if not p.exists():
        raise UserError(f"{p}: no such file or directory; check the path "
                        f"(corpus files are {', '.join(SUFFIXES)} or folders of them)")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*")
                       if f.is_file() and f.suffix.lower() in SUFFIXES
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise UserError(f"{p}: directory holds no {', '.join(SUFFIXES)} files; "
                            "point at the corpus files or the folder that holds them")
        return files
    if p.suffix.lower() not in SUFFIXES:
        raise UserError(f"{p}: unsupported file type {p.suffix or '(no suffix)'!r}; "
                        f"use {', '.join(SUFFIXES)} (convert the file or rename it)")
    return [p]


def _not_utf8(path: Path, line: int, err: UnicodeDecodeError) -> UserError:
    return UserError(f"{at(path, line)}: not valid UTF-8 (byte 0x{err.object[err.start]:02x}); "
                     "re-save the file as UTF-8")


def _read_txt(path: Path, field: str) -> Iterator[str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, data.count(b"\n", 0, e.start) + 1, e) from None
    yield text.removeprefix("\ufeff")


def iter_records(path: str | Path) -> Iterator[tuple[str, object]]:
    """(where, value) for each non-blank line of a JSONL file; `where` is "file:line"."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, n, e) from None
            if n == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{at(path, n)}: not valid JSON: {json_problem(e)}; "
                                "each line must be one JSON object") from None
            yield at(path, n), obj


def _read_jsonl(path: Path, field: str) -> Iterator[str]:
    for where, obj in iter_records(path):
        yield _field_of(obj, field, where)


def _field_of(obj: object, field: str, where: str) -> str:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object with a {field!r} field, "
                        f"got {type(obj).__name__} {_short(obj)}")
    if field not in obj:
        have = ", ".join(map(repr, list(obj)[:12])) or "none"
        raise UserError(f"{where}: no {field!r} field (fields: {have}); "
                        "pass --field NAME to read another field")
    value = obj[field]
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} is {type(value).__name__} {_short(value)}, "
                        "not a string; the text field must hold a string")
    return value


def _short(value: object, limit: int = 40) -> str:
    s = json.dumps(value, ensure_ascii=False, default=repr)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _read_parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading .parquet needs pyarrow; "
                        "install it with `pip install 'jielong[data]'`") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path}: not a readable parquet file ({e}); "
                        "check the file or re-export it") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise UserError(f"{path}: no {field!r} column (columns: {', '.join(map(repr, names))}); "
                        "pass --field NAME to read another column")
    row = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if not isinstance(value, str):
                raise UserError(f"{path}: row {row}: column {field!r} is "
                                f"{type(value).__name__} {_short(value)}, not a string; "
                                "the text column must hold strings")
            yield value


_READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}
