"""Moderation: scores per category for a text, in OpenAI's moderation shape, and the batch
command for the content-moderation use case.

Run as:
    jielong moderate comments.jsonl --field text --out runs/moderate

    from jielong.safety.moderate import moderate
    moderate("我想自殺")
    # {"flagged": True, "categories": {"self_harm": True, ...},
    #  "category_scores": {"self_harm": 0.6, ...}, "evidence": {"self_harm": ["想自殺"]}}

The shape follows OpenAI's moderation endpoint (`flagged`, `categories`, `category_scores`;
https://platform.openai.com/docs/api-reference/moderations), with jielong's categories
(`jielong.safety.policy.CATEGORIES`) and an `evidence` field naming what matched, so a person
can see why. A category's score is the maximum over the detectors (default: the lexicon
detector); it is flagged when the policy's rule for it is not "allow" and the score reaches
its threshold.

`jielong moderate FILE…` reads JSONL (the `--field` of each row) and plain text (each
non-blank line a row; folders are searched, like every jielong reader), prints the counts by
category, and writes OUT/flagged.jsonl (each flagged row: where, the row, the result) and
OUT/report.json (rows, flagged, counts by category, the policy's source).
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

from tqdm import tqdm

from jielong.data.readers import find_files, iter_records, iter_texts
from jielong.errors import UserError
from jielong.files import atomic_path, write_json
from jielong.safety import injection
from jielong.safety.guard_classifier import ClassifierDetector
from jielong.safety.guard_models import GuardModel
from jielong.safety.lexicon import LexiconDetector
from jielong.safety.policy import CATEGORIES, Policy, load_policy


@lru_cache(maxsize=1)
def default_detectors() -> tuple:
    """The lexicon (every category but injection) and the injection rules (a module whose
    `detect` has the detector shape)."""
    return (LexiconDetector(), injection)


def model_detectors(guard_model: str | None = None, guard_classifier: str | None = None,
                    device: str = "cpu") -> list:
    """The model detectors asked for: a guard model directory (Llama Guard or Qwen3Guard
    layout) and/or a classifier from `jielong train guard`."""
    out = []
    if guard_model:
        out.append(GuardModel.load(guard_model, device=device))
    if guard_classifier:
        out.append(ClassifierDetector(guard_classifier))
    return out


@lru_cache(maxsize=4)
def cached_policy(spec: str) -> Policy:
    return load_policy(spec)


def moderate(text: str, policy: Policy | None = None, detectors=None) -> dict:
    """{"flagged", "categories": {cat: bool}, "category_scores": {cat: float}, "evidence":
    {cat: [matched terms]}} for `text` under `policy` (default: the default policy)."""
    policy = policy if policy is not None else cached_policy("default")
    scores = dict.fromkeys(CATEGORIES, 0.0)
    evidence: dict[str, list[str]] = {}
    if policy.enabled:
        for det in detectors if detectors is not None else default_detectors():
            for cat, (score, ev) in det.detect(text).items():
                if cat not in scores:
                    continue
                scores[cat] = max(scores[cat], float(score))
                if ev:
                    evidence.setdefault(cat, []).extend(e for e in ev if e not in evidence.get(cat, []))
    flags = {c: policy.hit(c, s) for c, s in scores.items()}
    return {"flagged": any(flags.values()), "categories": flags, "category_scores": scores,
            "evidence": evidence}


def iter_rows(files: list[str], field: str):
    """(where, row, text) for each row to moderate: JSONL rows by `field`, text lines."""
    for f in find_files(files):
        if f.suffix.lower() == ".jsonl":
            for where, obj in iter_records(f):
                text = obj.get(field) if isinstance(obj, dict) else None
                if not isinstance(text, str):
                    raise UserError(f"{where}: no text field {field!r} (pass --field NAME)")
                yield where, obj, text
        else:
            for doc in iter_texts([f], field):
                for n, line in enumerate(doc.splitlines(), 1):
                    if line.strip():
                        yield f"{f}:{n}", {field: line}, line


def moderate_cmd(files: list[str], field: str = "text", out: str = "runs/moderate",
                 safety: str = "default", guard_model: str | None = None,
                 guard_classifier: str | None = None) -> dict:
    """Moderate JSONL/text files: counts by category, the flagged rows, a report.

    Args:
        files: JSONL or .txt files (or folders of them); a .txt file's lines are the rows.
        field: the JSONL field holding the text.
        out: folder for flagged.jsonl and report.json.
        safety: the policy: a YAML file, "default" or "off".
        guard_model: a guard model directory (Llama Guard or Qwen3Guard layout) to ask too.
        guard_classifier: a classifier from `jielong train guard` to ask too.
    """
    policy = load_policy(safety)
    extra = model_detectors(guard_model, guard_classifier)
    dets = default_detectors() + tuple(extra) if extra else None
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    counts, rows, flagged = Counter(), 0, 0
    with atomic_path(d / "flagged.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for where, row, text in tqdm(iter_rows(files, field), desc="moderate", unit=" rows"):
            rows += 1
            result = moderate(text, policy, dets)
            if result["flagged"]:
                flagged += 1
                counts.update(c for c, hit in result["categories"].items() if hit)
                fh.write(json.dumps({"where": where, "row": row, "result": result},
                                    ensure_ascii=False) + "\n")
    report = {"rows": rows, "flagged": flagged,
              "categories": {c: counts.get(c, 0) for c in CATEGORIES}, "policy": policy.source}
    write_json(d / "report.json", report)
    print(f"moderate: {flagged} of {rows} rows flagged")
    for c in CATEGORIES:
        print(f"  {c:<13} {counts.get(c, 0)}")
    print(f"flagged rows: {d / 'flagged.jsonl'}  report: {d / 'report.json'}")
    return report
