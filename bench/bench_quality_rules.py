"""The quality and repetition rules on Chinese: each rule's precision on a labelled keep/drop
set, and the keep rates on the shared corpora, for the rules in the working tree and (with
--before REV) the rules as they were at a git revision, side by side.

    python bench/bench_quality_rules.py                      # this tree's rules
    python bench/bench_quality_rules.py --before 0e501a0     # and the rules at 0e501a0
    python bench/bench_quality_rules.py --limit 300          # documents per corpus (default 1000)

The labelled set is tests/prep/quality_labelled.jsonl: hand-written Markdown lecture notes
and blog posts (繁 and 简, Chinese mixed with English terms, lists, numbers, links) and junk
(boilerplate, navigation menus, spam, SEO keyword lists, link farms, machine-garbled text),
plus poems, classics and Wikipedia paragraphs named by file and index in ../shared/data (left
out when that folder is absent). Every document is normalised (`normalize_text`) and its
language detected, as `jielong data clean` does.

For each rule alone (every other rule off) it counts the documents it would drop, and of
those how many are junk (precision) and what share of the junk it catches (recall); then the
whole preset: which documents it drops, first failing rule named, as `dropped/<reason>.jsonl`
would. Keep rates are per corpus, the first --limit documents of each in a fixed shuffle.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from jielong.prep import thresholds
from jielong.prep.language import detect_lang
from jielong.prep.normalize import normalize_text
from jielong.prep.quality_rules import quality_reason, strip_boilerplate
from jielong.prep.repetition import repetition_reason

ROOT = Path(__file__).resolve().parents[1]
LABELLED = ROOT / "tests" / "prep" / "quality_labelled.jsonl"
SHARED = ROOT.parent / "shared" / "data"


# ------------------------------------------------------------------------------ the texts


def squad_paragraphs(path: Path) -> list[str]:
    """The paragraphs ("context") of a SQuAD-layout file (DRCD, CMRC 2018), in file order."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return [p["context"] for article in data["data"] for p in article["paragraphs"]]


def corpus(name: str, shared: Path = SHARED) -> list[str]:
    """A shared corpus's documents in file order: JSONL texts, SQuAD paragraphs, or a .txt
    file's blank-line-separated blocks (as `--txt_split paragraph` reads it)."""
    path = shared / name
    if name.endswith(".json"):
        return squad_paragraphs(path)
    if name.endswith(".txt"):
        return [b.strip("\n") for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def load_labelled(path: Path = LABELLED, shared: Path | None = SHARED) -> list[dict]:
    """The labelled rows with their text; rows naming a shared file are resolved by index
    (and left out when `shared` is None or absent)."""
    rows, cache = [], {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "ref" in row:
            if shared is None or not shared.is_dir():
                continue
            f = row["ref"]["file"]
            if f not in cache:
                cache[f] = corpus(f, shared)
            row["text"] = cache[f][row["ref"]["index"]]
        rows.append(row)
    return rows


CORPORA = {"Tang poems 繁": "tang-poems-zh-hant.jsonl", "Song ci 简": "song-ci-zh-hans.jsonl",
           "classics": "classics-zh.jsonl", "DRCD paragraphs 繁": "drcd-dev.json",
           "CMRC paragraphs 简": "cmrc2018-dev.json", "Shakespeare": "tinyshakespeare.txt"}


def sample(docs: list[str], limit: int) -> list[str]:
    docs = list(docs)
    random.Random(0).shuffle(docs)
    return docs[:limit]


# ------------------------------------------------------------------------------ the rules


# Imports of the old clean.py whose modules have moved since, and their new homes.
MOVED = {"from jielong.data import pii": "from jielong.prep import pii"}


def load_rules(rev: str | None):
    """The rules as in the working tree (None: the functions of jielong.prep's language,
    normalize, quality_rules, repetition and thresholds modules, under one name), or the
    module src/jielong/data/clean.py that held them all at a git revision."""
    if rev is None:
        return SimpleNamespace(normalize_text=normalize_text, detect_lang=detect_lang,
                               strip_boilerplate=strip_boilerplate, quality_reason=quality_reason,
                               repetition_reason=repetition_reason,
                               preset_thresholds=thresholds.preset_thresholds)
    src = subprocess.run(["git", "show", f"{rev}:src/jielong/data/clean.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    for old, new in MOVED.items():  # what it imports from modules that have moved since
        src = src.replace(old, new)
    path = Path(tempfile.mkdtemp()) / f"clean_{rev}.py"
    path.write_text(src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"clean_{rev}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def preset_thresholds(clean, preset: str) -> tuple[dict, dict]:
    """({lang: QualityThresholds}, {lang: RepetitionThresholds}) of a preset."""
    if hasattr(clean, "preset_thresholds"):
        return clean.preset_thresholds(preset)
    q = dict(clean.QUALITY_THRESHOLDS)  # before presets were a function: quality overrides only
    if preset == "literature":
        q = clean._merged(q, clean.LITERATURE_THRESHOLDS, clean.QualityThresholds)
    return q, dict(clean.REPETITION_THRESHOLDS)


def _off(t):
    """`t` with every rule off."""
    changes = {f.name: None for f in dataclasses.fields(t)
               if f.name not in ("stop_words",) and not isinstance(getattr(t, f.name), tuple)}
    changes |= {f.name: () for f in dataclasses.fields(t) if f.name in ("top_ngrams", "dup_ngrams")}
    return dataclasses.replace(t, **changes)


def single_rules(q, r) -> dict[str, tuple]:
    """{rule name: (quality thresholds, repetition thresholds)} with only that rule on."""
    out = {}
    for f in dataclasses.fields(q):
        v = getattr(q, f.name)
        if v is not None and not isinstance(v, tuple):
            out[f.name] = (dataclasses.replace(_off(q), **{f.name: v}), _off(r))
    for f in dataclasses.fields(r):
        v = getattr(r, f.name)
        if isinstance(v, tuple):
            for n, limit in v:
                out[f"{f.name[:-1]}_{n}"] = (_off(q), dataclasses.replace(_off(r), **{f.name: ((n, limit),)}))
        elif v is not None:
            out[f.name] = (_off(q), dataclasses.replace(_off(r), **{f.name: v}))
    return out


def prepared(clean, texts: list[str]) -> list[tuple[str, str]]:
    out = []
    for t in texts:
        t = clean.normalize_text(t)
        out.append((t, clean.detect_lang(t)))
    return out


def verdict(clean, text: str, lang: str, q: dict, r: dict) -> str | None:
    """The first failing rule, as the pipeline names it (quality first: C4's boilerplate
    lines are removed before both, as the quality step does)."""
    text = clean.strip_boilerplate(text)[0]
    return clean.quality_reason(text, lang, q[lang]) or clean.repetition_reason(text, lang, r[lang])


def rule_table(clean, preset: str, rows: list[dict]) -> dict:
    """Per rule alone: drops, of them junk (precision), junk caught (recall); and the preset."""
    q, r = preset_thresholds(clean, preset)
    docs = prepared(clean, [row["text"] for row in rows])
    junk = [row["label"] == "drop" for row in rows]
    rules: dict[str, dict] = {}
    for lang in ("zh", "en"):
        for name, (tq, tr) in single_rules(q[lang], r[lang]).items():
            entry = rules.setdefault(name, {"drops": 0, "junk": 0, "good_dropped": []})
            for (text, dl), row, bad in zip(docs, rows, junk, strict=True):
                if dl != lang:
                    continue
                if verdict(clean, text, dl, {dl: tq}, {dl: tr}) is not None:
                    entry["drops"] += 1
                    entry["junk"] += bad
                    if not bad:
                        entry["good_dropped"].append(row["id"])
    n_junk = sum(junk)
    for e in rules.values():
        e["precision"] = e["junk"] / e["drops"] if e["drops"] else None
        e["recall"] = e["junk"] / n_junk if n_junk else None
    reasons = {row["id"]: verdict(clean, t, lang, q, r) for (t, lang), row in zip(docs, rows, strict=True)}
    dropped = [row for row in rows if reasons[row["id"]] is not None]
    caught = sum(row["label"] == "drop" for row in dropped)
    return {"rules": rules, "reasons": reasons, "drops": len(dropped), "junk_dropped": caught,
            "precision": caught / len(dropped) if dropped else 1.0,
            "recall": caught / n_junk if n_junk else 1.0,
            "good_dropped": [row["id"] for row in dropped if row["label"] == "keep"],
            "junk_kept": [row["id"] for row in rows if row["label"] == "drop" and reasons[row["id"]] is None],
            "n": len(rows), "n_junk": n_junk}


def keep_rates(clean, preset: str, limit: int, shared: Path = SHARED) -> dict[str, tuple[float, Counter]]:
    q, r = preset_thresholds(clean, preset)
    out = {}
    for label, name in CORPORA.items():
        docs = prepared(clean, sample(corpus(name, shared), limit))
        why = Counter(verdict(clean, t, lang, q, r) for t, lang in docs)
        out[label] = (why[None] / len(docs), why)
    return out


# ------------------------------------------------------------------------------ the report


def _pct(x):
    return "–" if x is None else f"{100 * x:.0f}%"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="a git revision whose rules to compare with")
    ap.add_argument("--limit", type=int, default=1000, help="documents per shared corpus")
    args = ap.parse_args(argv)
    versions = [("before", load_rules(args.before))] if args.before else []
    versions.append(("after", load_rules(None)))
    rows = load_labelled()
    print(f"labelled set: {len(rows)} documents, {sum(r['label'] == 'drop' for r in rows)} junk "
          f"({dict(Counter(r['kind'] for r in rows))})")
    for preset in ("web", "literature"):
        for tag, clean in versions:
            t = rule_table(clean, preset, rows)
            print(f"\n### {preset}, {tag}: drops {t['drops']}, of them junk {t['junk_dropped']} "
                  f"(precision {_pct(t['precision'])}), junk caught {t['junk_dropped']}/{t['n_junk']} "
                  f"(recall {_pct(t['recall'])})")
            print("| rule alone | drops | junk | precision | recall | good documents it drops |")
            print("|---|---|---|---|---|---|")
            for name, e in sorted(t["rules"].items()):
                if e["drops"]:
                    good = ", ".join(e["good_dropped"][:6]) + (" …" if len(e["good_dropped"]) > 6 else "")
                    print(f"| {name} | {e['drops']} | {e['junk']} | {_pct(e['precision'])} | "
                          f"{_pct(e['recall'])} | {good} |")
            good = ", ".join(f"{i} ({t['reasons'][i]})" for i in t["good_dropped"])
            print(f"good dropped: {good or '-'}")
            print(f"junk kept: {', '.join(t['junk_kept']) or '-'}")
    if not SHARED.is_dir():
        print("\n../shared/data is absent: no keep rates")
        return
    print(f"\n### keep rates on the shared corpora ({args.limit} documents each, or all)")
    head = [f"{preset} {tag}" for preset in ("web", "literature") for tag, _ in versions]
    print("| corpus | " + " | ".join(head) + " |\n|---|" + "---|" * len(head))
    table = {(p, tag): keep_rates(c, p, args.limit) for p in ("web", "literature") for tag, c in versions}
    for label in CORPORA:
        cells = []
        for p in ("web", "literature"):
            for tag, _ in versions:
                rate, why = table[p, tag][label]
                top = ", ".join(f"{k} {v}" for k, v in why.most_common(3) if k)
                cells.append(f"{_pct(rate)}" + (f" ({top})" if top else ""))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
