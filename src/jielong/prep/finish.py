"""Stage 2 of `jielong data clean`: one task over everything stage 1 kept, since
de-duplication needs all documents at once.

    Finish(cfg, labels)   # the one step of the stage-2 pipeline (`jielong.prep.pipeline`)

`Finish.run` composes the jobs below, in this order:
  stage1_stats      the per-step table of stage 1 (`jielong.prep.tally`); nothing read stops here
  find_duplicates   pass 1 over stage 1's output (`stage1_docs`, corpus order): exact hashes and
                    MinHash signatures only (`jielong.prep.dedup`), so memory holds no texts
  count_copies      how often each survivor appears: once, or more for the best quality scores
  write_output      pass 2: survivors (and their copies) to OUT/data shards (`ShardedOutput`),
                    duplicates aside, token shards for `jielong pretrain` (`write_tokens`)
  merge_dropped     every filter's dropped documents into OUT/dropped/<reason>.jsonl
  publish           the finished folders into OUT, then stats.json and the report
Everything is written under OUT/.work/final first, so a killed run leaves no half output.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from datatrove.pipeline.base import PipelineStep
from tqdm import tqdm

from jielong.data.shards import file_fingerprint, prepare_shards
from jielong.errors import UserError
from jielong.files import atomic_path, write_json
from jielong.prep.config import CleanConfig
from jielong.prep.dedup import Deduplicator, DedupResult
from jielong.prep.quality_model import upsample_copies
from jielong.prep.readers import POS
from jielong.prep.report import write_report
from jielong.prep.tally import length_bin, stage1_stats
from jielong.tokenizer import Tokenizer


def stage1_docs(folder: Path) -> Iterator[dict]:
    """Stage 1's documents in corpus order (each task's file is already in order)."""

    def read(p: Path):
        with open(p, "rb") as f:
            for raw in f:
                d = orjson.loads(raw)
                d.setdefault("metadata", {})
                yield tuple(d["metadata"].get(POS, (0, 0))), d

    files = sorted(folder.glob("*.jsonl"))
    for _, d in heapq.merge(*(read(p) for p in files), key=lambda kd: kd[0]):
        yield d


def record(d: dict) -> dict:
    """The output record of a stage-1 document: its bookkeeping metadata left out."""
    meta = {k: v for k, v in d.get("metadata", {}).items() if k not in (POS, "read_reason")}
    return {"text": d.get("text", ""), "id": d.get("id"), "metadata": meta}


class ShardedOutput:
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
                import pyarrow as pa  # lazy: pyarrow is only needed for --format parquet
                import pyarrow.parquet as pq

                table = pa.table({"text": [r["text"] for r in self.rows],
                                  "id": [r["id"] for r in self.rows],
                                  "metadata": [json.dumps(r["metadata"], ensure_ascii=False)
                                               for r in self.rows]})
                pq.write_table(table, tmp)
        self.files.append(name)
        self.rows.clear()


@dataclass
class Duplicates:
    """What pass 1 found, per stage-1 document in corpus order."""

    result: DedupResult     # status ("keep", "exact_duplicate", "near_duplicate"), clusters
    ids: list               # document ids, to name what a duplicate duplicates
    chars: np.ndarray       # text lengths
    scores: np.ndarray      # quality-model scores (0 without a model)
    seconds: dict[str, float]  # time spent on "exact" and "near" de-duplication

    @property
    def status(self) -> np.ndarray:
        return np.asarray(self.result.status)


def find_duplicates(cfg: CleanConfig, total: int) -> Duplicates:
    """Pass 1: hash every document (exact and MinHash, as `--skip` leaves them) and cluster."""
    dd = Deduplicator(cfg.minhash, exact="exact_dedup" not in cfg.skip, near="near_dedup" not in cfg.skip)
    ids, chars, scores = [], [], []
    for d in tqdm(stage1_docs(cfg.work / "stage1"), desc="dedup: hashing", unit=" docs",
                  total=total, dynamic_ncols=True, mininterval=0.5):
        lang = d["metadata"].get("lang")
        text = d.get("text", "")
        dd.add(text, lang if lang in ("zh", "en") else None)
        ids.append(d.get("id"))
        chars.append(len(text))
        scores.append(d["metadata"].get("quality", 0.0))
    res = dd.finish()
    return Duplicates(res, ids, np.asarray(chars, dtype=np.int64), np.asarray(scores), dd.seconds)


def count_copies(cfg: CleanConfig, status: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Copies of each document in the output: 0 for a duplicate, 1 for a survivor, and
    `upsample_times` for the best-scoring `upsample_top_fraction` of the survivors."""
    if cfg.upsample_top_fraction and cfg.upsample_times > 1:
        copies = np.zeros(len(status), dtype=np.int64)
        kept = status == "keep"
        copies[kept] = upsample_copies(scores[kept], cfg.upsample_top_fraction, cfg.upsample_times)
        return copies
    return (status == "keep").astype(np.int64)


def dedup_rows(cfg: CleanConfig, dups: Duplicates, prev: dict) -> list[dict]:
    """The exact_dedup and near_dedup rows of the per-step table (those not skipped)."""
    rows, status = [], dups.status
    for label, reason in (("exact_dedup", "exact_duplicate"), ("near_dedup", "near_duplicate")):
        if label in cfg.skip:
            continue
        gone = status == reason
        prev = {"step": label, "docs_in": prev["docs"], "docs": prev["docs"] - int(gone.sum()),
                "chars": prev["chars"] - int(dups.chars[gone].sum()),
                "seconds": round(dups.seconds[label.split("_")[0]], 3),
                "dropped": {reason: int(gone.sum())} if gone.any() else {}}
        rows.append(prev)
    return rows


def upsample_row(prev: dict, chars: np.ndarray, copies: np.ndarray) -> dict:
    """The upsample row of the per-step table: documents added as copies."""
    up = copies > 1
    return {"step": "upsample", "docs_in": prev["docs"], "docs": int(copies.sum()),
            "chars": int((chars * copies).sum()), "seconds": 0.0, "dropped": {},
            "added": int((copies[up] - 1).sum())}


def write_output(cfg: CleanConfig, final: Path, dups: Duplicates, copies: np.ndarray) -> dict:
    """Pass 2: each survivor `copies` times into FINAL/data shards (with its cluster size, and
    how often it was up-sampled), each duplicate into FINAL/dropped/<reason>.jsonl (with the
    id of the document it duplicates), and the survivors' tokens into FINAL/tokens when there
    is a tokenizer. Returns stats.json's "output" entry."""
    status, res = dups.status, dups.result
    output = ShardedOutput(final / "data", cfg.format, cfg.shard_docs)
    hist, langs, scripts = {}, {}, {}
    dup_files = {}

    def survivors() -> Iterator[str]:
        bar = tqdm(desc="writing", unit=" docs", total=int(copies.sum()), dynamic_ncols=True,
                   mininterval=0.5)
        for i, d in enumerate(stage1_docs(cfg.work / "stage1")):
            rec = record(d)
            if status[i] != "keep":
                rec["metadata"] |= {"filter_reason": str(status[i]),
                                    "dropped_by": str(status[i]).split("_")[0] + "_dedup",
                                    "duplicate_of": dups.ids[res.duplicate_of[i]]}
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
            write_tokens(cfg.tokenizer, survivors(), final / "tokens")
        else:
            for _ in survivors():
                pass
        output.flush()
    finally:
        for f in dup_files.values():
            f.close()
    return {"docs": int(copies.sum()), "unique_docs": int((status == "keep").sum()),
            "chars": int((dups.chars * copies).sum()), "shards": output.files,
            "format": cfg.format, "length_hist": {str(k): v for k, v in sorted(hist.items())},
            "lang": langs, "script": scripts}


def write_tokens(tokenizer: str, texts: Iterator[str], folder: Path) -> None:
    """`jielong pretrain` token shards of `texts` in `folder`."""
    prepare_shards(texts, Tokenizer.from_dir(tokenizer), folder)


def merge_dropped(src: Path, into: Path) -> None:
    """WORK/dropped/<label>/<reason>/<rank>.jsonl → OUT/dropped/<reason>.jsonl."""
    for part in sorted(src.glob("*/*/*.jsonl")):
        with open(into / f"{part.parent.name}.jsonl", "ab") as f, open(part, "rb") as g:
            shutil.copyfileobj(g, f)


def publish(cfg: CleanConfig, final: Path, stats: dict) -> None:
    """Replace OUT/data, dropped and tokens with the finished ones; write stats.json and
    the report."""
    out = Path(cfg.out)
    for name in ("data", "dropped", "tokens"):
        old = out / name
        if old.exists():
            shutil.rmtree(old)
        if (final / name).exists():
            os.replace(final / name, old)
    if (out / "tokens").exists():
        # the fingerprint `jielong pretrain OUT/data --tokenizer TOK` computes for OUT/data,
        # so a pretraining run whose data folder is these shards reuses them
        tok = (Path(cfg.tokenizer) / "tokenizer.json").read_bytes()
        meta = json.loads((out / "tokens" / "meta.json").read_text())
        meta["fingerprint"] = file_fingerprint([str(out / "data")], "text", "0.01",
                                               hashlib.sha256(tok).hexdigest())
        write_json(out / "tokens" / "meta.json", meta)
    write_json(out / "stats.json", stats)
    write_report(out, stats)


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
        cfg = self.cfg
        stats = stage1_stats(cfg, self.labels)
        if stats["steps"][0]["docs"] == 0:
            raise UserError(f"no documents read from {', '.join(cfg.files[:3])}"
                            f"{' …' if len(cfg.files) > 3 else ''}; check the files "
                            f"(and that --field {cfg.field!r} names the text field)")
        final = cfg.work / "final"
        shutil.rmtree(final, ignore_errors=True)
        (final / "dropped").mkdir(parents=True)
        dups = find_duplicates(cfg, total=stats["steps"][-1]["docs"])
        copies = count_copies(cfg, dups.status, dups.scores)
        stats["steps"] += dedup_rows(cfg, dups, stats["steps"][-1])
        stats["dedup"] = dups.result.counts | {"threshold": round(cfg.minhash.threshold, 3)}
        output = write_output(cfg, final, dups, copies)
        if copies.sum() != (dups.status == "keep").sum():
            stats["steps"].append(upsample_row(stats["steps"][-1], dups.chars, copies))
        stats["output"] = output
        merge_dropped(cfg.work / "dropped", final / "dropped")
        stats["dropped_files"] = sorted(p.name for p in (final / "dropped").glob("*.jsonl"))
        stats["stage2_s"] = round(time.time() - t0, 2)
        publish(cfg, final, stats)
