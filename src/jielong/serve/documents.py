"""The user's documents in the server (`jielong serve --rag`): collections of indexed
documents, retrieval before generation, and uploads from the web chat.

    library = Library({"docs": "runs/index"}, uploads="runs/serve/uploads")
    app = create_app(engine, tok, "mine", gen, store=store, library=library)

A collection is an index folder (jielong.rag.index): the ones given with `--rag [NAME=]INDEX`
are read only; the others are the users' own, made by uploading into them from the web chat,
each kept under the uploads folder as NAME/files/ (the documents) and NAME/index/ (their
index, built again incrementally after each upload: only the new file is read). A request
picks one by name (/v1: `"rag": {"collection": NAME, "k": 4}`, or `"rag": false` for none;
the web chat: its settings' "rag"); by default the first one given with --rag (none when
there is none).

Retrieval is jielong.rag.answer's: BM25 (the index's Chinese-aware words), or with an
embedder (`--rag_embedder`, jielong.rag.embed.load_embedder) dense or hybrid search
(`--rag_method`, default hybrid when there is an embedder; hybrid's dense list weighted by
`--rag_dense_weight`, jielong.rag.index), then the coverage gate. An index is searched with
the embedder it was built with: at start-up a --rag index embedded by another model, or one
without vectors while an embedder is given, or dense / hybrid without an embedder, is one
clear line (UserError); an uploaded collection embedded otherwise (or not at all) is embedded
again then (only its vectors: the index build is incremental), and uploads are embedded with
the server's embedder. The passages kept go into the prompt as numbered, quoted data (rag_messages), fitted to
the context (fit_passages); with none kept the reply is the decline text, and the model is
not asked. What comes back with the reply: `sources` (every passage given, as
jielong.rag.answer.citation makes them) and `citations` (those the reply's [n] markers name),
the source being the file's path under the collection (an uploaded one: its file name).

Routes (under /api, with the web chat):
- GET /api/collections: {"collections": [{name, writable, documents, chunks}], "default",
  "uploads": whether uploading is on, "max_upload_bytes", "types"};
- POST /api/collections/{name}/documents?filename=NAME.md: the body is the file's bytes
  (Content-Type: application/octet-stream; the server takes no multipart forms, as
  python-multipart is not one of its dependencies, and a raw body keeps the same-site rule:
  a page on another site cannot send it without a CORS preflight). The file name is cleaned
  (its folder parts dropped, anything but letters, digits, ".", "-", "_" and spaces made "_",
  no leading dot); an allowed type (ingest.SUFFIXES: txt, md, html, pdf, jsonl, json) or 415;
  at most `max_upload_bytes` or 413; a file the reader cannot use (not UTF-8, an encrypted
  PDF, no text) is a 400 with the reason, and is not kept (it is read once before it joins
  the collection); a name that is a --rag collection is a 409 (those are read only); the
  same file name again replaces that document.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from jielong.errors import UserError
from jielong.rag.answer import citation, citations_of, fit_passages, retrieve
from jielong.rag.index import METHODS, Hit, Index, build_index
from jielong.rag.ingest import SUFFIXES, Skipped, read_file
from jielong.serve.body import read_raw
from jielong.serve.errors import ApiError
from jielong.serve.guard import authorize

MAX_UPLOAD = 20_000_000  # bytes of one uploaded document
MAX_K = 20  # passages one request may ask for
DEFAULT_K = 4
NAME = re.compile(r"^[\w-]{1,64}$")
FILE_CHARS = 120  # of a cleaned file name's stem

router = APIRouter(prefix="/api", dependencies=[Depends(authorize)])


@dataclass
class Collection:
    """One collection: its index folder and, for an uploaded one, its documents' folder."""

    name: str
    index_dir: Path
    files: Path | None = None  # None: given with --rag, read only
    index: Index | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def writable(self) -> bool:
        return self.files is not None

    def describe(self) -> dict:
        idx = self.index
        return {"name": self.name, "writable": self.writable,
                "documents": len(idx.manifest["files"]) if idx else 0,
                "chunks": len(idx.chunks) if idx else 0}

    def source(self, path: str) -> str:
        """A passage's source as the user sees it: an upload's file name, not a server path."""
        if self.files is not None:
            try:
                return Path(path).relative_to(self.files).as_posix()
            except ValueError:
                pass
        return path


def parse_rag(given: list[str] | None) -> dict[str, Path]:
    """--rag values, INDEX or NAME=INDEX, as {name: index folder}, in order (a bare INDEX is
    named after its folder)."""
    out: dict[str, Path] = {}
    for g in given or []:
        name, eq, path = g.partition("=")
        if not eq or not NAME.match(name):
            name, path = Path(g).name or "documents", g
        if not NAME.match(name):
            raise UserError(f"--rag {g}: name the collection, NAME=INDEX (letters, digits, - "
                            "and _)")
        if name in out:
            raise UserError(f"--rag {g}: two collections named {name!r}; give each NAME=INDEX")
        out[name] = Path(path)
    return out


class Library:
    """The server's collections: `given` {name: index folder} (read only, loaded now: a
    missing or broken index, or one that does not fit the embedder, is a UserError at start)
    and, when `uploads` is a folder, the users' own collections in it (those already there
    are found again). `embedder` (None: BM25 only), `method` (bm25, dense or hybrid; default
    hybrid with an embedder, else bm25) and `dense_weight` are how every collection is searched."""

    def __init__(self, given: dict[str, str | Path] | None = None,
                 uploads: str | Path | None = None, max_upload_bytes: int = MAX_UPLOAD,
                 embedder=None, method: str | None = None, dense_weight: float = 1.0):
        self.embedder, self.dense_weight = embedder, dense_weight
        self.method = method or ("hybrid" if embedder is not None else "bm25")
        if self.method not in METHODS:
            raise UserError(f"--rag_method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.method != "bm25" and embedder is None:
            raise UserError(f"--rag_method {self.method} needs --rag_embedder (the encoder folder "
                            "the --rag indexes were built with)")
        self.collections: dict[str, Collection] = {}
        for name, path in (given or {}).items():
            self.collections[name] = Collection(name, Path(path), index=self.open(path, f"--rag {name}={path}"))
        self.default = next(iter(self.collections), None)
        self.uploads = None if uploads is None else Path(uploads).resolve()
        self.max_upload_bytes = max_upload_bytes
        self.lock = threading.Lock()
        if self.uploads is not None and self.uploads.is_dir():
            for d in sorted(self.uploads.iterdir()):
                if d.is_dir() and NAME.match(d.name) and d.name not in self.collections:
                    c = self.uploaded(d.name)
                    if (c.index_dir / "manifest.json").is_file():
                        if embedder is not None and Index.load(c.index_dir).manifest.get("embedder") != embedder.name:
                            build_index([c.files], c.index_dir, embedder=embedder)  # vectors made again
                        c.index = self.open(c.index_dir)

    def open(self, path: str | Path, given: str | None = None) -> Index:
        """The index in `path`, to be searched as this library searches; for a --rag one
        (`given`: how it was named), a UserError when it does not fit the embedder."""
        idx = Index.load(path, embedder=self.embedder, dense_weight=self.dense_weight)
        built = idx.manifest.get("embedder")
        if given and self.embedder is not None:
            if built is None or idx.vectors is None:
                raise UserError(f"{given}: this index has no vectors (built without an embedder), "
                                f"so --rag_embedder cannot search it; build it again with `jielong rag "
                                f"index DOCS --out {path} --embedder DIR`, or leave --rag_embedder out")
            if built != self.embedder.name:
                raise UserError(f"{given}: the index was embedded with {built!r}, --rag_embedder is "
                                f"{self.embedder.name!r}; give the folder it was built with, or build "
                                "it again with this one")
        return idx

    def uploaded(self, name: str) -> Collection:
        """The uploaded collection `name`, made (and listed) when new."""
        d = self.uploads / name
        return self.collections.setdefault(name, Collection(name, d / "index", d / "files"))

    def describe(self) -> dict:
        return {"collections": [c.describe() for c in self.collections.values()],
                "default": self.default, "uploads": self.uploads is not None,
                "max_upload_bytes": self.max_upload_bytes, "types": sorted(SUFFIXES)}

    def pick(self, choice, param: str) -> Collection | None:
        """The collection a request asks for: `choice` False (or "") for none, None or True
        for the default, else a name (404 when there is no such collection)."""
        if choice is False or choice == "":
            return None
        if choice is None or choice is True:
            return self.collections.get(self.default) if self.default else None
        c = self.collections.get(choice)
        if c is None:
            have = ", ".join(self.collections) or "none"
            raise ApiError(404, f"{param}: no document collection {choice!r} on this server "
                                f"(collections: {have})", param=param, code="collection_not_found")
        return c

    def search(self, c: Collection, question: str, k: int) -> list[Hit]:
        """The passages of `c` relevant to `question` (retrieve's gate); none while an
        uploaded collection has no documents yet."""
        idx = c.index
        return [] if idx is None else retrieve(idx, question, k, self.method)

    def sources(self, c: Collection, hits: list[Hit]) -> list[dict]:
        """The passages given, numbered as the prompt numbers them."""
        return [{**citation(n, h), "source": c.source(h.chunk.source)}
                for n, h in enumerate(hits, 1)]

    def cite(self, c: Collection, reply: str, hits: list[Hit]) -> list[dict]:
        """The passages the reply's [n] markers name (citations_of), sources as shown."""
        return [{**x, "source": c.source(x["source"])} for x in citations_of(reply, hits)]

    def check(self, name: str, filename: str) -> str:
        """The cleaned file name of an upload into `name`, or the one clear 4xx."""
        if self.uploads is None:
            raise ApiError(403, "uploading documents is off on this server (start it with "
                                "--uploads DIR)", code="uploads_off")
        if not NAME.match(name):
            raise ApiError(400, f"collection name {name!r}: use 1-64 letters, digits, - and _",
                           param="name")
        safe = clean_name(filename)
        known = self.collections.get(name)
        if known is not None and not known.writable:
            raise ApiError(409, f"the collection {name!r} is the server's own (--rag), read "
                                "only; upload into a collection of your own name",
                           param="name", code="read_only_collection")
        return safe

    def add(self, name: str, filename: str, data: bytes) -> dict:
        """Keep an uploaded document in the collection `name` (made when new) and index it.
        The file is read once on its own first (under a hidden folder no index reads): one
        the reader cannot use is refused and not kept, and makes no collection."""
        safe = self.check(name, filename)
        if not data:
            raise ApiError(400, f"{safe}: the file is empty", param="body")
        incoming = self.uploads / ".incoming" / uuid.uuid4().hex
        incoming.mkdir(parents=True)
        new = incoming / safe
        try:
            new.write_bytes(data)
            read_file(new)
        except Skipped as e:
            shutil.rmtree(incoming, ignore_errors=True)
            raise ApiError(400, f"{safe}: not indexed: {e}", param="body",
                           code="unreadable_document") from None
        with self.lock:
            c = self.uploaded(name)
        with c.lock:  # one build of a collection at a time
            c.files.mkdir(parents=True, exist_ok=True)
            target = c.files / safe
            existed = target.exists()
            os.replace(new, target)
            shutil.rmtree(incoming, ignore_errors=True)
            build_index([c.files], c.index_dir, embedder=self.embedder)
            c.index = self.open(c.index_dir)
        chunks = len(c.index.manifest["files"].get(str(target), {}).get("chunks", []))
        return {"collection": c.describe(), "file": safe, "chunks": chunks,
                "replaced": existed}


def clean_name(given: str) -> str:
    """A file name safe to keep: no folder parts ("../../x.md" is "x.md"), letters, digits,
    ".", "-", "_" and spaces only, no leading dot; an allowed type (415 otherwise)."""
    base = re.split(r"[\\/]", unicodedata.normalize("NFC", given or ""))[-1]
    base = re.sub(r"[^\w.\- ]", "_", base).strip(" .")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    stem = stem.strip(" .")[:FILE_CHARS]
    kinds = ", ".join(sorted(SUFFIXES))
    if f".{suffix.lower()}" not in SUFFIXES:
        raise ApiError(415, f"filename {given!r}: not a document type the server reads "
                            f"({kinds})", param="filename", code="unsupported_media_type")
    if not stem:
        raise ApiError(400, f"filename {given!r}: give the file a name", param="filename")
    return f"{stem}.{suffix.lower()}"


def library_of(request: Request) -> Library | None:
    return getattr(request.app.state, "library", None)


def need_library(request: Request) -> Library:
    lib = library_of(request)
    if lib is None:
        raise ApiError(404, "this server has no document collections (start it with --rag "
                            "INDEX or --uploads DIR)", code="collection_not_found")
    return lib


async def ground(request: Request, choice, question: str, k: int | None,
                 param: str) -> tuple[Collection | None, list[Hit]]:
    """(the collection, the relevant passages) for `question`; (None, []) when the request
    asks for no retrieval or the server has no collections (and it named none)."""
    lib = library_of(request)
    if lib is None:
        if choice not in (None, True, False, ""):
            need_library(request)
        return None, []
    c = lib.pick(choice, param)
    if c is None:
        return None, []
    k = DEFAULT_K if k is None else k
    if not 1 <= k <= MAX_K:
        raise ApiError(400, f"{param}: k={k} must be between 1 and {MAX_K}", param=param)
    return c, await run_in_threadpool(lib.search, c, question, k)


def fit(measure, question: str, hits: list[Hit], history: list[dict], room: int,
        param: str) -> tuple[list[Hit], list[dict]]:
    """fit_passages for a request: (the passages that fit, the conversation with them); a
    conversation that leaves no room for any is a 400 context_length_exceeded."""
    try:
        return fit_passages(measure, question, hits, room, None, history)
    except UserError as e:
        raise ApiError(400, f"{param}: {e}", param=param, code="context_length_exceeded") from None


@router.get("/collections")
async def collections(request: Request):
    lib = library_of(request)
    if lib is None:
        return {"collections": [], "default": None, "uploads": False, "max_upload_bytes": 0,
                "types": sorted(SUFFIXES)}
    return lib.describe()


@router.post("/collections/{name}/documents")
async def upload(name: str, request: Request, filename: str = ""):
    lib = need_library(request)
    lib.check(name, filename)  # before reading the body: a bad name or type is refused at once
    data = await read_raw(request, lib.max_upload_bytes, "document")
    return await run_in_threadpool(lib.add, name, filename, data)
