"""`jielong data`: clean, de-duplicate, score and shard raw text, on datatrove.

    jielong data clean web/ books.jsonl.zst crawl.warc.gz --out runs/data
    jielong data clean zh/ --out runs/zh --convert t2s --languages zh --quality_model q.json \
        --min_quality 0.3 --upsample_top_fraction 0.1 --upsample_times 3 --tokenizer runs/tok
    jielong data stats runs/data                      # the per-step table, report.md, charts
    jielong data quality-train --good ref.jsonl --bad web.jsonl --out quality.json

Inputs: .txt, .jsonl, .parquet, .html/.htm and .warc files (or folders of them); any but
.parquet may be compressed, .gz or .zst, inferred from the name. A .txt file is one
document, or one per blank-line-separated block with `--txt_split paragraph` (plays,
poems, forum dumps). JSONL, Parquet and WARC use datatrove's readers.

Two stages, both run by a datatrove executor (local processes by default; `--executor
slurm` or `ray` to scale out):
1. per document, in parallel over the input files: read → html → normalize → language →
   quality → repetition → harmful → pii → classifier (the steps of `jielong.prep.steps`,
   then the optional quality model). Every filter writes what it drops to
   OUT/dropped/<reason>.jsonl.
2. one task over everything stage 1 kept: exact and near-duplicate removal
   (`jielong.prep.dedup`) needs all documents at once, so it is a stage of its own that
   streams stage 1's output twice (hashes first, then writing) and holds only the hashes
   and MinHash signatures in memory; then up-sampling by quality score, the output shards
   (OUT/data/part-*.jsonl|parquet), token shards for `jielong pretrain` (--tokenizer),
   OUT/stats.json and the report (report.md + charts/).

A killed run resumes: finished stage-1 tasks are skipped when the same command is run again
(the options and input files must not change; OUT/.work holds the state until the end).
"""

from __future__ import annotations

import heapq
import importlib
import json
import os
import re
import shutil
import sys
import time
import unittest.mock
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Literal

import numpy as np

from jielong.errors import UserError, at
from jielong.files import atomic_path, write_json
from jielong.prep import pii
from jielong.prep.dedup import Deduplicator, MinHashConfig

try:  # datatrove is in the `data` extra; without it the CLI still starts, `data` says why not
    from datatrove.data import Document
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.pipeline.readers.base import BaseDiskReader, BaseReader
    from datatrove.pipeline.readers.jsonl import JsonlReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    HAVE_DATATROVE = True
except ImportError:  # pragma: no cover
    HAVE_DATATROVE = False
    Document = PipelineStep = BaseFilter = BaseDiskReader = BaseReader = JsonlReader = JsonlWriter = object


def _need_datatrove() -> None:
    if not HAVE_DATATROVE:
        raise UserError("`jielong data` needs datatrove and friends: pip install 'jielong[data]'")

KINDS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet", ".html": "html",
         ".htm": "html", ".warc": "warc", ".wet": "warc"}
COMPRESSED = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
CLEAN_STEPS = ("html", "normalize", "language", "quality", "repetition", "harmful", "pii")
SKIPPABLE = CLEAN_STEPS + ("exact_dedup", "near_dedup")
_POS = "jl_pos"  # metadata: (file index, document index), the corpus order


# ----------------------------------------------------------------------------- inputs


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
        import orjson

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
            from datatrove.pipeline.readers.parquet import ParquetReader

            return ParquetReader(folder, **common)
        try:
            from datatrove.pipeline.readers.warc import WarcReader

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
                _check_parquet(path, self.field)
            reader = self._reader(path)
            self.stat_update("input_files")
            try:
                for di, doc in enumerate(reader.read_file(path.name)):
                    doc.metadata[_POS] = [fi, di]
                    doc.metadata.setdefault("format", fmt)
                    doc.metadata.setdefault("file_path", str(path))
                    self.stat_update(f"format_{kind}")
                    yield doc
            except UserError:
                raise
            except Exception as e:  # a damaged file (bad gzip, not a WARC, …)
                raise UserError(f"{path}: cannot read it as {kind} "
                                f"({type(e).__name__}: {str(e)[:120]}); check or remove the file") from None


def _check_parquet(path: Path, field: str) -> None:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    if field not in names:
        raise UserError(f"{path}: no {field!r} column (columns: {', '.join(names)}); "
                        "pass --field NAME")


# ----------------------------------------------------------------------------- steps


class ReadErrors(BaseFilter):
    """Drops the placeholders the readers leave for unreadable records and empty texts."""

    name = "🚫 Read errors"

    def filter(self, doc: Document):
        if "read_error" in doc.metadata:
            return False, doc.metadata["read_reason"]
        return True


class QualityScore(BaseFilter):
    """Scores each document with a `jielong.prep.quality_model` model (metadata["quality"]) and
    drops those under `min_quality` ("low_quality")."""

    name = "🏅 Quality classifier"

    def __init__(self, model_path: str, min_quality: float = 0.0):
        super().__init__()
        self.model_path, self.min_quality = model_path, min_quality
        self._model = None

    def filter(self, doc: Document):
        if self._model is None:
            from jielong.prep.quality_model import QualityModel

            self._model = QualityModel.load(self.model_path)
        lang = doc.metadata.get("lang")
        score = self._model.score(doc.text, lang if lang in ("zh", "en") else None)
        doc.metadata["quality"] = round(score, 4)
        return score >= self.min_quality or (False, "low_quality")


def length_bin(n: int) -> int:
    """Histogram bin of a length: 0 for 0, k for 2^(k-1) <= n < 2^k."""
    return int(n).bit_length()


class Tally(PipelineStep):
    """Counts what passes: documents, characters, a length histogram, languages and
    scripts. One sits after every step, so the report can show what each step did."""

    type = "📊 - TALLY"

    def __init__(self, label: str, progress: int = 0):
        self.name = f"after {label}"
        super().__init__()
        self.label, self.progress = label, progress

    def run(self, data, rank: int = 0, world_size: int = 1):
        bar = None
        if self.progress and rank < self.progress:  # one bar per concurrently running worker
            from tqdm import tqdm

            bar = tqdm(desc=f"task {rank + 1}/{world_size}", unit=" docs", position=rank,
                       leave=False, dynamic_ncols=True, mininterval=0.5)
        try:
            for doc in data:
                n = len(doc.text)
                self.stat_update("docs")
                self.stat_update("chars", value=n)
                self.stat_update(f"len_{length_bin(n):02d}")
                for key in ("lang", "script"):
                    if key in doc.metadata:
                        self.stat_update(f"{key}_{doc.metadata[key]}")
                if bar is not None:
                    bar.update()
                yield doc
        finally:
            if bar is not None:
                bar.close()


class DropWriter(JsonlWriter):
    """The exclusion writer of one filter: WORK/<label>/<reason>/<rank>.jsonl.

    redact: redact personal data and secrets (`jielong.prep.pii`) in what it writes: the
        text, id and metadata. The filters run before the PII step, so without it a token
        that the kept output shows as <HF_TOKEN> would sit raw in dropped/too_short.jsonl.
    """

    def __init__(self, folder: str, label: str, redact: bool = True):
        super().__init__(folder, output_filename=label + "/${filter_reason}/${rank}.jsonl",
                         compression=None)
        self.label, self.redact = label, redact

    def write(self, document, rank: int = 0, **kwargs):
        for key in (_POS, "read_reason"):  # internal bookkeeping, not for people
            document.metadata.pop(key, None)
        if self.redact:
            document.text, _ = pii.redact(document.text)
            if isinstance(document.id, str):
                document.id = pii.redact(document.id)[0]
            document.metadata = pii.redact_all(document.metadata)
        super().write(document, rank, **kwargs)

    def _get_output_filename(self, document, rank=0, **kwargs):
        reason = document.metadata.get("filter_reason") or self.label
        document.metadata["filter_reason"] = re.sub(r"[^\w.-]+", "_", str(reason))
        document.metadata["dropped_by"] = self.label
        return super()._get_output_filename(document, rank, **kwargs)


# ----------------------------------------------------------------------------- options


@dataclass
class CleanConfig:
    """Everything a run depends on (its fingerprint decides whether a killed run resumes)."""

    files: list[str]
    out: str
    field: str = "text"
    txt_split: str = "file"
    convert: str | None = None
    harmful_classifier: str | None = None
    languages: list[str] = dc_field(default_factory=list)
    skip: list[str] = dc_field(default_factory=list)
    minhash: MinHashConfig = dc_field(default_factory=MinHashConfig)
    quality_model: str | None = None
    min_quality: float = 0.0
    upsample_top_fraction: float = 0.0
    upsample_times: int = 1
    format: str = "jsonl"
    shard_docs: int = 100_000
    tokenizer: str | None = None
    quality_preset: str = "web"

    @property
    def work(self) -> Path:
        return Path(self.out) / ".work"


def stage1_steps(cfg: CleanConfig) -> list[tuple[str, PipelineStep]]:
    """(label, step) for the per-document stage, tallies and drop writers not included."""
    steps: list[tuple[str, PipelineStep]] = [("read", InputReader(cfg.files, cfg.field, cfg.txt_split)),
                                             ("readable", ReadErrors())]
    wanted = [s for s in CLEAN_STEPS if s not in cfg.skip]
    if wanted:
        c = importlib.import_module("jielong.prep.steps")  # the per-document steps
        make = {"html": lambda: c.HtmlExtract(), "normalize": lambda: c.Normalize(),
                "language": lambda: c.LanguageScript(convert=cfg.convert, keep=cfg.languages or None),
                "quality": lambda: c.QualityFilter(preset=cfg.quality_preset),
                "repetition": lambda: c.RepetitionFilter(preset=cfg.quality_preset),
                "harmful": lambda: c.HarmfulFilter(classifier=cfg.harmful_classifier),
                "pii": lambda: c.PiiRedact()}
        steps += [(s, make[s]()) for s in wanted]
    if cfg.quality_model:
        steps.append(("classifier", QualityScore(cfg.quality_model, cfg.min_quality)))
    return steps


def build_stage1(cfg: CleanConfig, progress: int = 0) -> tuple[list, list[str]]:
    """The stage-1 pipeline and the label of each of its elements (for the stats)."""
    pipeline, labels = [], []
    steps = stage1_steps(cfg)
    for i, (label, step) in enumerate(steps):
        if isinstance(step, BaseFilter) and step.exclusion_writer is None:
            step.exclusion_writer = DropWriter(str(cfg.work / "dropped"), label,
                                               redact="pii" not in cfg.skip)
        pipeline += [step, Tally(label, progress if i == len(steps) - 1 else 0)]
        labels += [label, f"tally:{label}"]
    pipeline.append(JsonlWriter(str(cfg.work / "stage1"), output_filename="${rank}.jsonl",
                                compression=None))
    labels.append("write")
    return pipeline, labels


# ----------------------------------------------------------------------------- stage 2


def _stage1_docs(folder: Path) -> Iterator[dict]:
    """Stage 1's documents in corpus order (each task's file is already in order)."""
    import orjson

    def read(p: Path):
        with open(p, "rb") as f:
            for raw in f:
                d = orjson.loads(raw)
                d.setdefault("metadata", {})
                yield tuple(d["metadata"].get(_POS, (0, 0))), d

    files = sorted(folder.glob("*.jsonl"))
    for _, d in heapq.merge(*(read(p) for p in files), key=lambda kd: kd[0]):
        yield d


def _record(d: dict) -> dict:
    meta = {k: v for k, v in d.get("metadata", {}).items() if k not in (_POS, "read_reason")}
    return {"text": d.get("text", ""), "id": d.get("id"), "metadata": meta}


class _ShardedOutput:
    """OUT/data/part-00000.jsonl|parquet, `shard_docs` documents each."""

    def __init__(self, folder: Path, fmt: str, shard_docs: int):
        self.folder, self.fmt, self.shard_docs = folder, fmt, shard_docs
        self.rows: list[dict] = []
        self.files: list[str] = []
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, rec: dict) -> None:
        self.rows.append(rec)
        if len(self.rows) >= self.shard_docs:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"part-{len(self.files):05d}.{self.fmt}"
        with atomic_path(self.folder / name) as tmp:
            if self.fmt == "jsonl":
                with open(tmp, "w", encoding="utf-8") as f:
                    for r in self.rows:
                        f.write(json.dumps(r, ensure_ascii=False) + "\n")
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                table = pa.table({"text": [r["text"] for r in self.rows],
                                  "id": [r["id"] for r in self.rows],
                                  "metadata": [json.dumps(r["metadata"], ensure_ascii=False)
                                               for r in self.rows]})
                pq.write_table(table, tmp)
        self.files.append(name)
        self.rows.clear()


def _sum_stats(folder: Path) -> list[dict[str, float]]:
    """Per pipeline element, its datatrove counters summed over all tasks' stats files
    (its time in seconds, where the step tracks it, as "_seconds")."""
    total: list[dict[str, float]] = []
    for p in sorted((folder / "stats").glob("*.json")):
        for i, step in enumerate(json.loads(p.read_text())):
            if len(total) <= i:
                total.append({})
            items = list(step["stats"].items()) + [("_seconds", step.get("time_stats", 0))]
            for k, v in items:
                total[i][k] = total[i].get(k, 0) + (v.get("total", 0) if isinstance(v, dict) else v)
    return total


def _mix(counters: dict[str, float], prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: int(v) for k, v in sorted(counters.items()) if k.startswith(prefix)}


class Finish(PipelineStep):
    """Stage 2 (one task): de-duplicate, up-sample, write shards, tokens, stats, report."""

    type = "🏁 - FINISH"
    name = "dedup, shards, report"

    def __init__(self, cfg: CleanConfig, labels: list[str]):
        super().__init__()
        self.cfg, self.labels = cfg, labels

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        t0 = time.time()
        cfg, work = self.cfg, self.cfg.work
        stats = self._stage1_stats()
        if stats["steps"][0]["docs"] == 0:
            raise UserError(f"no documents read from {', '.join(cfg.files[:3])}"
                            f"{' …' if len(cfg.files) > 3 else ''}; check the files "
                            f"(and that --field {cfg.field!r} names the text field)")
        final = work / "final"
        shutil.rmtree(final, ignore_errors=True)
        (final / "dropped").mkdir(parents=True)

        # pass 1: hashes and signatures only
        exact, near = "exact_dedup" not in cfg.skip, "near_dedup" not in cfg.skip
        dd = Deduplicator(cfg.minhash, exact=exact, near=near)
        ids, chars, scores = [], [], []
        from tqdm import tqdm

        for d in tqdm(_stage1_docs(work / "stage1"), desc="dedup: hashing", unit=" docs",
                      total=stats["steps"][-1]["docs"], dynamic_ncols=True, mininterval=0.5):
            lang = d["metadata"].get("lang")
            text = d.get("text", "")
            dd.add(text, lang if lang in ("zh", "en") else None)
            ids.append(d.get("id"))
            chars.append(len(text))
            scores.append(d["metadata"].get("quality", 0.0))
        res = dd.finish()
        chars = np.asarray(chars, dtype=np.int64)
        status = np.asarray(res.status)
        if cfg.upsample_top_fraction and cfg.upsample_times > 1:
            from jielong.prep.quality_model import upsample_copies

            copies = np.zeros(len(status), dtype=np.int64)
            kept = status == "keep"
            copies[kept] = upsample_copies(np.asarray(scores)[kept], cfg.upsample_top_fraction,
                                           cfg.upsample_times)
        else:
            copies = (status == "keep").astype(np.int64)
        for label, reason, on in (("exact_dedup", "exact_duplicate", exact),
                                  ("near_dedup", "near_duplicate", near)):
            if on:
                gone = status == reason
                prev = stats["steps"][-1]
                stats["steps"].append({"step": label, "docs_in": prev["docs"],
                                       "docs": prev["docs"] - int(gone.sum()),
                                       "chars": prev["chars"] - int(chars[gone].sum()),
                                       "seconds": round(dd.seconds[label.split("_")[0]], 3),
                                       "dropped": {reason: int(gone.sum())} if gone.any() else {}})
        stats["dedup"] = res.counts | {"threshold": round(cfg.minhash.threshold, 3)}

        # pass 2: write survivors (and copies), duplicates aside, optionally tokens
        output = _ShardedOutput(final / "data", cfg.format, cfg.shard_docs)
        hist, langs, scripts = {}, {}, {}
        dup_files = {}

        def survivors() -> Iterator[str]:
            bar = tqdm(desc="writing", unit=" docs", total=int(copies.sum()), dynamic_ncols=True,
                       mininterval=0.5)
            for i, d in enumerate(_stage1_docs(work / "stage1")):
                rec = _record(d)
                if status[i] != "keep":
                    rec["metadata"] |= {"filter_reason": str(status[i]),
                                        "dropped_by": str(status[i]).split("_")[0] + "_dedup",
                                        "duplicate_of": ids[res.duplicate_of[i]]}
                    if status[i] not in dup_files:
                        dup_files[status[i]] = open(final / "dropped" / f"{status[i]}.jsonl", "w",
                                                    encoding="utf-8")
                    dup_files[status[i]].write(json.dumps(rec, ensure_ascii=False) + "\n")
                    continue
                rec["metadata"]["dup_cluster_size"] = int(res.cluster_size[i])
                if copies[i] > 1:
                    rec["metadata"]["upsampled"] = int(copies[i])
                for _ in range(copies[i]):
                    output.add(rec)
                    b = length_bin(len(rec["text"]))
                    hist[b] = hist.get(b, 0) + 1
                    for key, mix in (("lang", langs), ("script", scripts)):
                        if key in rec["metadata"]:
                            mix[rec["metadata"][key]] = mix.get(rec["metadata"][key], 0) + 1
                    bar.update()
                    yield rec["text"]
            bar.close()

        try:
            if cfg.tokenizer and copies.sum():
                self._tokenize(survivors(), final)
            else:
                for _ in survivors():
                    pass
            output.flush()
        finally:
            for f in dup_files.values():
                f.close()
        if copies.sum() != (status == "keep").sum():
            prev = stats["steps"][-1]
            up = copies > 1
            stats["steps"].append({"step": "upsample", "docs_in": prev["docs"], "docs": int(copies.sum()),
                                   "chars": int((chars * copies).sum()), "seconds": 0.0, "dropped": {},
                                   "added": int((copies[up] - 1).sum())})
        stats["output"] = {"docs": int(copies.sum()), "unique_docs": int((status == "keep").sum()),
                           "chars": int((chars * copies).sum()), "shards": output.files,
                           "format": cfg.format, "length_hist": {str(k): v for k, v in sorted(hist.items())},
                           "lang": langs, "script": scripts}
        self._merge_dropped(final / "dropped")
        stats["dropped_files"] = sorted(p.name for p in (final / "dropped").glob("*.jsonl"))
        stats["stage2_s"] = round(time.time() - t0, 2)
        self._publish(final, stats)

    def _stage1_stats(self) -> dict:
        counters = _sum_stats(self.cfg.work / "logs" / "stage1")
        by = dict(zip(self.labels, counters, strict=False))
        steps, prev = [], None
        for label in self.labels:
            if not label.startswith("tally:"):
                continue
            name = label[len("tally:"):]
            tally, step = by.get(label, {}), by.get(name, {})
            row = {"step": name, "docs_in": prev, "docs": int(tally.get("docs", 0)),
                   "chars": int(tally.get("chars", 0)), "seconds": round(step.get("_seconds", 0), 3),
                   "dropped": {k[len("dropped_"):]: int(v) for k, v in sorted(step.items())
                               if k.startswith("dropped_")}}
            if prev is not None and prev > row["docs"] and not row["dropped"]:
                row["dropped"] = {name: prev - row["docs"]}  # a step that drops without a reason
            steps.append(row)
            prev = row["docs"]
        first = by.get("tally:read", {})
        detected = by.get("tally:language", {})  # every document, before any quality step
        return {"steps": steps, "inputs": self.cfg.files, "options": _options(self.cfg),
                "formats": _mix(by.get("read", {}), "format_"),
                "input": {"length_hist": {str(int(k)): v for k, v in _mix(first, "len_").items()},
                          "lang": _mix(detected, "lang_"), "script": _mix(detected, "script_")}}

    def _tokenize(self, texts: Iterator[str], final: Path) -> None:
        from jielong.data.shards import prepare_shards
        from jielong.tokenizer import Tokenizer

        tok = Tokenizer.from_dir(self.cfg.tokenizer)
        prepare_shards(texts, tok, final / "tokens")

    def _merge_dropped(self, into: Path) -> None:
        """WORK/dropped/<label>/<reason>/<rank>.jsonl → OUT/dropped/<reason>.jsonl."""
        src = self.cfg.work / "dropped"
        for part in sorted(src.glob("*/*/*.jsonl")):
            with open(into / f"{part.parent.name}.jsonl", "ab") as f, open(part, "rb") as g:
                shutil.copyfileobj(g, f)

    def _publish(self, final: Path, stats: dict) -> None:
        from jielong.prep.report import write_report

        out = Path(self.cfg.out)
        for name in ("data", "dropped", "tokens"):
            old = out / name
            if old.exists():
                shutil.rmtree(old)
            if (final / name).exists():
                os.replace(final / name, old)
        if (out / "tokens").exists():
            # the fingerprint `jielong pretrain OUT/data --tokenizer TOK` computes for OUT/data,
            # so a pretraining run whose data folder is these shards reuses them
            import hashlib

            from jielong.data.shards import file_fingerprint

            tok = (Path(self.cfg.tokenizer) / "tokenizer.json").read_bytes()
            meta = json.loads((out / "tokens" / "meta.json").read_text())
            meta["fingerprint"] = file_fingerprint([str(out / "data")], "text", "0.01",
                                                   hashlib.sha256(tok).hexdigest())
            write_json(out / "tokens" / "meta.json", meta)
        write_json(out / "stats.json", stats)
        write_report(out, stats)


def _options(cfg: CleanConfig) -> dict:
    d = asdict(cfg)
    d.pop("files")
    return d


# ----------------------------------------------------------------------------- executors


def _not_user_error(record) -> bool:
    """A UserError is shown once, on one line, by the CLI: not as a logged traceback."""
    exc = record["exception"]
    return not (exc and isinstance(exc.value, UserError))


def quiet_console() -> None:
    """Only warnings on the terminal, where the progress bars are."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{level}: {message}", filter=_not_user_error)


def _quiet_task_logger(logging_dir, rank: int, local_rank: int = 0, node_rank: int = -1):
    """datatrove's task logger, everything to logs/task_N.log, with a quiet console."""
    from loguru import logger

    quiet_console()
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    logger.add(logfile, level="DEBUG")
    return logfile


def _quiet_close(logfile) -> None:
    from loguru import logger

    logger.complete()
    quiet_console()
    logfile.close()


if HAVE_DATATROVE:
    from datatrove.executor import base as _executor_base
    from datatrove.executor.local import LocalPipelineExecutor

    class QuietLocalExecutor(LocalPipelineExecutor):
        """datatrove's local executor; only its console logging is quieter (the task logs
        under logging_dir/logs/ keep everything)."""

        def _run_for_rank(self, rank, local_rank=0, node_rank=-1):
            with unittest.mock.patch.object(_executor_base, "add_task_logger", _quiet_task_logger), \
                    unittest.mock.patch.object(_executor_base, "close_task_logger", _quiet_close):
                return super()._run_for_rank(rank, local_rank, node_rank)


def _fingerprint(cfg: CleanConfig, tasks: int) -> str:
    """Identity of a run: its input files (path, size, mtime), options and task count."""
    import hashlib

    h = hashlib.sha256(json.dumps([_options(cfg), tasks], sort_keys=True, default=str).encode())
    for f in cfg.files:
        st = os.stat(f)
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def run_clean(cfg: CleanConfig, executor: str = "local", workers: int = 0, tasks: int = 0,
              slurm_partition: str | None = None, slurm_time: str = "24:00:00",
              verbose: bool = False) -> dict | None:
    """Run both stages; returns the stats (None when the jobs were only submitted)."""
    if executor == "local":
        workers = workers or available_cores()
        tasks = tasks or min(len(cfg.files), 4 * workers)
    else:  # a cluster: one task per file unless told, as many at once as it will run
        tasks, workers = tasks or len(cfg.files), workers or -1
    tasks = max(1, min(tasks, len(cfg.files)))
    work, out = cfg.work, Path(cfg.out)
    progress = min(workers, tasks) if executor == "local" else 0
    stage1, labels = build_stage1(cfg, progress)  # checks the steps' options first
    stage2 = [Finish(cfg, labels)]
    fp = _fingerprint(cfg, tasks)
    if not (work / "fingerprint").is_file() or (work / "fingerprint").read_text() != fp:
        shutil.rmtree(work, ignore_errors=True)  # a new run, not the resumption of a killed one
        work.mkdir(parents=True)
        (work / "fingerprint").write_text(fp)
    logs = work / "logs"
    if executor == "local":
        from datatrove.executor.local import LocalPipelineExecutor
        from datatrove.utils.logging import setup_default_logger

        Local = LocalPipelineExecutor if verbose else QuietLocalExecutor
        s1 = Local(stage1, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logs / "stage1"))
        s2 = Local(stage2, tasks=1, workers=1, logging_dir=str(logs / "stage2"), depends=s1)
        if not verbose:
            quiet_console()
        try:
            s2.run()
        finally:
            if not verbose:
                setup_default_logger()
    elif executor == "slurm":
        from datatrove.executor.slurm import SlurmPipelineExecutor

        venv = os.environ.get("VIRTUAL_ENV")  # the jobs run in the environment of this command
        common = {"time": slurm_time, "partition": slurm_partition,
                  "venv_path": f"{venv}/bin/activate" if venv else None}
        s1 = SlurmPipelineExecutor(stage1, tasks=tasks, workers=workers, job_name="jielong-clean",
                                   logging_dir=str(logs / "stage1"), **common)
        s2 = SlurmPipelineExecutor(stage2, tasks=1, job_name="jielong-finish", depends=s1,
                                   logging_dir=str(logs / "stage2"), **common)
        s2.run()
        print(f"submitted to Slurm ({tasks} tasks, then one to de-duplicate and write); when they "
              f"finish: jielong data stats {out}")
        return None
    else:
        import ray
        from datatrove.executor.ray import RayPipelineExecutor

        if not ray.is_initialized():
            ray.init()  # joins the cluster in RAY_ADDRESS, else starts a local one
        s1 = RayPipelineExecutor(stage1, tasks=tasks, workers=workers, logging_dir=str(logs / "stage1"))
        s2 = RayPipelineExecutor(stage2, tasks=1, workers=1, logging_dir=str(logs / "stage2"), depends=s1)
        s2.run()
    stats = json.loads((out / "stats.json").read_text())
    if (out / "logs").exists():
        shutil.rmtree(out / "logs")
    os.replace(logs, out / "logs")  # datatrove's per-task logs and stats, for the curious
    shutil.rmtree(work, ignore_errors=True)
    return stats


# ----------------------------------------------------------------------------- commands


def clean(
    inputs: list[str],
    out: str = "runs/data",
    field: str = "text",
    txt_split: Literal["file", "paragraph"] = "file",
    convert: str | None = None,
    languages: list[str] | None = None,
    harmful_classifier: str | None = None,
    skip: list[str] | None = None,
    quality_preset: Literal["web", "literature"] = "web",
    minhash: MinHashConfig = MinHashConfig(),  # noqa: B008 (never mutated)
    quality_model: str | None = None,
    min_quality: float = 0.0,
    upsample_top_fraction: float = 0.0,
    upsample_times: int = 1,
    format: Literal["jsonl", "parquet"] = "jsonl",
    shard_docs: int = 100_000,
    tokenizer: str | None = None,
    executor: Literal["local", "slurm", "ray"] = "local",
    workers: int = 0,
    tasks: int = 0,
    slurm_partition: str | None = None,
    slurm_time: str = "24:00:00",
    verbose: bool = False,
) -> dict | None:
    """Clean, de-duplicate and shard raw text: the steps of a pretraining corpus.

    Reads txt, JSONL, Parquet, HTML and WARC files (.gz/.zst too); runs html extraction,
    normalisation, language/script detection, quality, repetition, harmful-content and PII
    steps, exact and MinHash near-duplicate removal, and optional quality-model filtering and
    up-sampling. Writes OUT/data/ shards, OUT/dropped/<reason>.jsonl, OUT/stats.json,
    OUT/report.md with charts, and OUT/tokens/ when given a tokenizer.

    Args:
        inputs: Input files or folders.
        out: Output folder.
        field: The text field of JSONL records and the text column of Parquet files.
        txt_split: A .txt file is one document ("file") or one per blank-line-separated block ("paragraph").
        convert: Convert Chinese script with OpenCC: s2t, t2s, s2tw, tw2s, s2twp, tw2sp, s2hk, hk2s, …
        languages: Keep only these languages (zh, en, other); default: all.
        harmful_classifier: A `jielong train classify` model for the harmful step, besides its lexicon.
        skip: Steps to leave out: html normalize language quality repetition harmful pii exact_dedup near_dedup.
        quality_preset: Quality thresholds: web (Gopher/C4/FineWeb-2, for crawled text) or literature (shorter Chinese texts and classical prose pass).
        minhash: Near-duplicate settings.
        quality_model: A model from `jielong data quality-train`: scores each document.
        min_quality: Drop documents scoring below this (0 to 1) with the quality model.
        upsample_top_fraction: Share of the best-scoring documents to repeat.
        upsample_times: How many times each of those appears in the output.
        format: Output shards: jsonl or parquet.
        shard_docs: Documents per output shard.
        tokenizer: A tokenizer folder: also write `jielong pretrain` token shards to OUT/tokens.
        executor: Where stage 1 runs: local processes, a Slurm cluster, or a Ray cluster.
        workers: Processes at once (default: the available cores).
        tasks: Stage-1 tasks, each a share of the input files (default: up to 4 per worker).
        slurm_partition: Slurm partition (with --executor slurm).
        slurm_time: Slurm time limit per job.
        verbose: Show datatrove's own logs.
    """
    _need_datatrove()
    bad = sorted(set(skip or []) - set(SKIPPABLE))
    if bad:
        raise UserError(f"--skip {' '.join(bad)}: no such step; steps are {' '.join(SKIPPABLE)}")
    if not 0 <= min_quality <= 1:
        raise UserError(f"--min_quality {min_quality} must be between 0 and 1")
    if (min_quality or upsample_top_fraction) and not quality_model:
        raise UserError("--min_quality and --upsample_top_fraction need --quality_model FILE "
                        "(train one with `jielong data quality-train`)")
    if shard_docs < 1:
        raise UserError(f"--shard_docs {shard_docs} must be at least 1")
    unknown = sorted(set(languages or []) - {"zh", "en", "other"})
    if unknown:
        raise UserError(f"--languages {' '.join(unknown)}: languages are zh, en and other")
    if executor == "slurm" and not slurm_partition:
        raise UserError("--executor slurm needs --slurm_partition NAME")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--executor ray needs ray: pip install 'ray[default]'") from None
    if quality_model:
        from jielong.prep.quality_model import QualityModel, upsample_copies

        QualityModel.load(quality_model)  # fail now on a bad file, not in a worker
        upsample_copies(np.zeros(0), upsample_top_fraction, upsample_times)
    if tokenizer and not (Path(tokenizer) / "tokenizer.json").is_file():
        raise UserError(f"{tokenizer}: no tokenizer.json; train one with `jielong tokenizer train`")
    if format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("--format parquet needs pyarrow: pip install 'jielong[data]'") from None
    files = find_inputs(inputs)
    for f in files:  # a missing column is a mistake in the command: say so before starting
        if input_kind(f)[0] == "parquet":
            _check_parquet(f, field)
    cfg = CleanConfig(files=[str(f.resolve()) for f in files], out=str(Path(out).resolve()),
                      field=field, txt_split=txt_split, convert=convert,
                      harmful_classifier=harmful_classifier, languages=languages or [],
                      skip=skip or [], minhash=minhash, quality_model=quality_model,
                      min_quality=min_quality, upsample_top_fraction=upsample_top_fraction,
                      upsample_times=upsample_times, format=format, shard_docs=shard_docs,
                      tokenizer=tokenizer, quality_preset=quality_preset)
    t0 = time.time()
    print(f"cleaning {len(files)} file{'s' * (len(files) != 1)} into {out}/", file=sys.stderr)
    stats = run_clean(cfg, executor, workers, tasks, slurm_partition, slurm_time, verbose)
    if stats is None:
        return None
    from jielong.prep.report import drop_note, format_table

    print(format_table(stats))
    o = stats["output"]
    secs = time.time() - t0
    print(f"done in {secs:.1f} s: {o['docs']:,} documents ({o['chars']:,} characters) in "
          f"{len(o['shards'])} shard{'s' * (len(o['shards']) != 1)} under {out}/data/\n"
          f"dropped: {out}/dropped/  report: {out}/report.md  stats: {out}/stats.json"
          + (f"  tokens: {out}/tokens/" if tokenizer else ""))
    note = drop_note(stats)
    if note:
        print(note)
    return stats


def stats_cmd(path: str) -> dict:
    """Show a cleaned folder's per-step table and rewrite its report.md and charts.

    Args:
        path: A folder written by `jielong data clean`.
    """
    from jielong.prep.report import format_table, write_report

    p = Path(path) / "stats.json"
    if not p.is_file():
        hint = " (the run is still going or was killed; run the clean command again to resume)" \
            if (Path(path) / ".work").exists() else ""
        raise UserError(f"{path}: no stats.json; is it a folder written by `jielong data clean`?{hint}")
    try:
        st = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{p}: not valid JSON ({e})") from None
    print(format_table(st))
    report = write_report(Path(path), st)
    print(f"report: {report}")
    return st


def quality_train(good: list[str] | None = None, bad: list[str] | None = None,
                  out: str = "runs/quality.json", field: str = "text",
                  txt_split: Literal["file", "paragraph"] = "paragraph", max_docs: int = 50_000,
                  buckets: int = 2**18, steps: int = 300, seed: int = 0) -> dict:
    """Train the quality classifier: reference-quality text against web-like text.

    Args:
        good: Files or folders of reference-quality text (books, encyclopaedia, classics).
        bad: Files or folders of ordinary web-like text.
        out: Where to write the model (one JSON file).
        field: The text field of JSONL/Parquet inputs.
        txt_split: A .txt file is one document ("file") or one per blank-line block ("paragraph").
        max_docs: Read at most this many documents from each side.
        buckets: Hashed feature slots (2**18 = 1 MB of weights).
        steps: Full-batch optimisation steps.
        seed: Seed of the held-out split.
    """
    from jielong.prep.quality_model import train_quality

    _need_datatrove()
    if not good or not bad:
        raise UserError("quality-train needs both --good FILES and --bad FILES")
    t0 = time.time()
    sides = [read_texts(find_inputs(x), field, txt_split, max_docs) for x in (good, bad)]
    model = train_quality(sides[0], sides[1], buckets=buckets, steps=steps, seed=seed)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    r = model.report
    print(f"trained on {r['good']:,} good and {r['bad']:,} bad documents in {time.time() - t0:.1f} s: "
          f"held-out accuracy {r.get('val_accuracy', float('nan')):.3f}, AUC "
          f"{r.get('val_auc', float('nan')):.3f}\nmodel: {out}  (use it with `jielong data clean … "
          f"--quality_model {out}`)")
    return r


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
            text = importlib.import_module("jielong.prep.steps").extract_html(text)
        if text.strip():
            texts.append(text)
            if limit and len(texts) >= limit:
                break
    return texts
