"""`jielong data`: clean, de-duplicate, score and shard raw text, on datatrove.

Run as:
    jielong data clean web/ books.jsonl.zst crawl.warc.gz --out runs/data
    jielong data clean web/ --out runs/data --executor ray                    # a private Ray cluster here
    jielong data clean web/ --out runs/data --executor ray --ray_address auto --cpus_per_task 2
    jielong data clean web/ --out runs/data --executor slurm --slurm_partition cpu --dry_run
    jielong data clean zh/ --out runs/zh --convert t2s --languages zh --quality_model q.json --min_quality 0.3 --upsample_top_fraction 0.1 --upsample_times 3 --tokenizer runs/tok
    jielong data stats runs/data                      # the per-step table, report.md, charts
    jielong data quality-train --good ref.jsonl --bad web.jsonl --out quality.json

Inputs: .txt, .jsonl, .parquet, .html/.htm and .warc files (or folders of them); any but
.parquet may be compressed, .gz or .zst, inferred from the name. A .txt file is one
document, or one per blank-line-separated block with `--txt_split paragraph` (plays,
poems, forum dumps). How the run is built and resumed: `jielong.prep.pipeline`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Literal

from jielong.errors import UserError
from jielong.prep.config import CleanConfig, ClusterConfig, check_cluster, check_options
from jielong.prep.dedup import MinHashConfig
from jielong.prep.quality_model import train_quality
from jielong.prep.report import drop_note, format_table, write_report

HAVE_DATATROVE = importlib.util.find_spec("datatrove") is not None
if HAVE_DATATROVE:  # the `data` extra: without it the CLI still starts, and `data` says why not
    from jielong.prep.pipeline import run_clean
    from jielong.prep.readers import check_parquet, find_inputs, input_kind, read_texts


def _need_datatrove() -> None:
    if not HAVE_DATATROVE:
        raise UserError("`jielong data` needs datatrove and friends: pip install 'jielong[data]'")


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
    cluster: ClusterConfig = ClusterConfig(),  # noqa: B008 (never mutated)
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
        cluster: Ray and Slurm settings.
        verbose: Show datatrove's own logs.
    """
    _need_datatrove()
    cfg = CleanConfig(files=[], out=str(Path(out).resolve()), field=field, txt_split=txt_split,
                      convert=convert, harmful_classifier=harmful_classifier,
                      languages=languages or [], skip=skip or [], minhash=minhash,
                      quality_model=quality_model, min_quality=min_quality,
                      upsample_top_fraction=upsample_top_fraction, upsample_times=upsample_times,
                      format=format, shard_docs=shard_docs, tokenizer=tokenizer,
                      quality_preset=quality_preset)
    check_options(cfg, executor)
    check_cluster(cluster, executor)
    files = find_inputs(inputs)
    for f in files:  # a missing column is a mistake in the command: say so before starting
        if input_kind(f)[0] == "parquet":
            check_parquet(f, field)
    cfg.files = [str(f.resolve()) for f in files]
    t0 = time.time()
    print(f"cleaning {len(files)} file{'s' * (len(files) != 1)} into {out}/", file=sys.stderr)
    stats = run_clean(cfg, executor, workers, tasks, cluster, verbose)
    if stats is None:
        return None
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
