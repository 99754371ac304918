"""Data preparation speed on ../shared/data: the whole `jielong data clean` pipeline, our
MinHash de-duplication alone, and datatrove's own MinHash pipeline on the same input.

    python bench/bench_data.py                 # every shared corpus (~37k documents)
    python bench/bench_data.py --limit 2000    # the first 2,000 documents of each, quick

The corpora (Tang poems in Traditional Chinese, Song ci in Simplified, the classics, and
Tiny Shakespeare cut at blank lines) go into one JSONL file that every contender reads.
Everything runs in one process on one core, so documents/s is documents/s per core
(the MinHash pair alternates for --rounds rounds and reports medians):
1. `jielong data clean` with all its steps (`--workers 1`);
2. jielong MinHash alone: read the JSONL, signatures + LSH + clusters (character 5-grams
   for Chinese, word 5-grams for English, 14 bands × 8 rows), write the survivors;
3. datatrove's four MinHash stages (signature, buckets, cluster, filter) with their default
   `MinhashConfig()` (word 5-grams, 14 × 8) and English word tokenizer (it needs spaCy),
   reading and writing the same way, run by datatrove's LocalPipelineExecutor.
It prints documents/s, the ratio, how many duplicates each removed and how many both did.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import datatrove.utils.hashes.xxhash as dt_xxhash
import orjson
import xxhash
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.typeshelper import Languages
from loguru import logger

from jielong.prep.commands import clean
from jielong.prep.console import QuietLocalExecutor as Local
from jielong.prep.dedup import Deduplicator, MinHashConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def build_corpus(path: Path, limit: int | None) -> dict[str, int]:
    counts = {}
    with open(path, "w", encoding="utf-8") as out:
        for name in ("tang-poems-zh-hant.jsonl", "song-ci-zh-hans.jsonl", "classics-zh.jsonl"):
            n = 0
            with open(SHARED / name, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if limit and n > limit:
                        n -= 1
                        break
                    out.write(json.dumps({"text": json.loads(line)["text"], "id": f"{name}:{n}"},
                                         ensure_ascii=False) + "\n")
            counts[name] = n
        blocks = [b.strip() for b in (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")]
        blocks = [b for b in blocks if b][:limit] if limit else [b for b in blocks if b]
        for i, b in enumerate(blocks, 1):
            out.write(json.dumps({"text": b, "id": f"tinyshakespeare.txt:{i}"}) + "\n")
        counts["tinyshakespeare.txt (blocks)"] = len(blocks)
    return counts


def run_full(corpus: Path, work: Path) -> tuple[float, dict]:

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        stats = clean([str(corpus)], out=str(work / "full"), workers=1)
    return time.perf_counter() - t, stats


def run_ours(corpus: Path, work: Path) -> tuple[float, set[str]]:

    t = time.perf_counter()
    dd = Deduplicator(MinHashConfig(), exact=False)
    ids = []
    with open(corpus, "rb") as f:
        for line in f:
            d = orjson.loads(line)
            dd.add(d["text"])
            ids.append(d["id"])
    res = dd.finish()
    with open(corpus, "rb") as f, open(work / "ours.jsonl", "wb") as out:
        for status, line in zip(res.status, f, strict=True):
            if status == "keep":
                out.write(line)
    secs = time.perf_counter() - t
    return secs, {i for i, s in zip(ids, res.status, strict=True) if s != "keep"}


def run_datatrove(corpus: Path, work: Path) -> tuple[float, set[str], list[float]]:

    # xxhash 4 takes bytes only and datatrove 0.10 passes str: encode as UTF-8, which is what
    # older xxhash did with a str itself
    dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)
    cfg, d = MinhashConfig(), work / "dt"
    shutil.rmtree(d, ignore_errors=True)
    logs = d / "logs"

    def reader():
        return JsonlReader(str(corpus.parent), glob_pattern=corpus.name, compression=None)

    stages = [  # run one after the other, as `depends=` would, each timed
        Local([reader(), MinhashDedupSignature(str(d / "sigs"), config=cfg, language=Languages.english)],
              tasks=1, workers=1, logging_dir=str(logs / "1")),
        Local([MinhashDedupBuckets(str(d / "sigs"), str(d / "buckets"), config=cfg)],
              tasks=cfg.num_buckets, workers=1, logging_dir=str(logs / "2")),
        Local([MinhashDedupCluster(str(d / "buckets"), str(d / "remove"), config=cfg)],
              tasks=1, workers=1, logging_dir=str(logs / "3")),
        Local([reader(), MinhashDedupFilter(str(d / "remove"),
                                            exclusion_writer=JsonlWriter(str(d / "removed"), compression=None)),
               JsonlWriter(str(d / "out"), compression=None)],
              tasks=1, workers=1, logging_dir=str(logs / "4")),
    ]
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    parts = []
    for stage in stages:
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # the cluster stage's progress bar
            stage.run()
        parts.append(time.perf_counter() - t)
    removed = {orjson.loads(x)["id"] for p in (d / "removed").glob("*.jsonl") for x in p.read_bytes().splitlines()}
    return sum(parts), removed, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="documents per corpus file")
    ap.add_argument("--skip_full", action="store_true", help="only the MinHash comparison")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the MinHash comparison")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is not present")
    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        corpus = work / "corpus" / "all.jsonl"
        corpus.parent.mkdir()
        counts = build_corpus(corpus, args.limit)
        n = sum(counts.values())
        print(f"corpus: {n:,} documents ({', '.join(f'{k} {v:,}' for k, v in counts.items())})")
        print(f"machine: {platform.machine()}, {platform.python_version()}, one process\n")
        if not args.skip_full:
            secs, stats = run_full(corpus, work)
            o = stats["output"]
            print(f"full pipeline: {n / secs:,.0f} docs/s ({secs:.1f} s), {o['docs']:,} documents out; "
                  f"near duplicates {stats['dedup']['near_duplicate']:,}, exact {stats['dedup']['exact_duplicate']:,}")
        ours_t, dt_t, dt_parts = [], [], []
        for _ in range(args.rounds):  # alternating, medians
            took, ours = run_ours(corpus, work)
            ours_t.append(took)
            took, theirs, parts = run_datatrove(corpus, work)
            dt_t.append(took)
            dt_parts.append(parts)
        ours_s, dt_s = statistics.median(ours_t), statistics.median(dt_t)
        parts = [statistics.median(p) for p in zip(*dt_parts, strict=True)]
        print(f"MinHash, {args.rounds} alternating rounds, medians; datatrove's stages: "
              + ", ".join(f"{name} {p:.1f} s" for name, p in
                          zip(("signatures", "buckets", "clusters", "filter"), parts, strict=True)))
        print()
        print("| | docs/s per core | seconds | duplicates removed |")
        print("| --- | --- | --- | --- |")
        if not args.skip_full:
            print(f"| jielong data clean, all steps | {n / secs:,.0f} | {secs:.1f} | "
                  f"{stats['dedup']['near_duplicate'] + stats['dedup']['exact_duplicate']:,} (after filters) |")
        print(f"| jielong MinHash (zh char 5-grams, en word 5-grams) | {n / ours_s:,.0f} | {ours_s:.1f} | {len(ours):,} |")
        print(f"| datatrove MinHash (defaults, English words) | {n / dt_s:,.0f} | {dt_s:.1f} | {len(theirs):,} |")
        print(f"| **ratio (jielong / datatrove MinHash)** | **{dt_s / ours_s:.2f}** | | |")
        both = ours & theirs
        print(f"\nduplicates removed by both: {len(both):,}; only jielong: {len(ours - theirs):,}; "
              f"only datatrove: {len(theirs - ours):,}")
        for name in counts:
            key = name.split(" ")[0]
            a = sum(1 for i in ours if i.startswith(key))
            b = sum(1 for i in theirs if i.startswith(key))
            print(f"  {name}: jielong {a:,}, datatrove {b:,}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
