"""`jielong feedback export`: what people said in the web chat, as training data; `jielong
feedback purge`: what they deleted, and what is past its retention period, removed for good.

Run as:
    jielong feedback export --db runs/serve/feedback.db --format dpo --out prefs.jsonl
    jielong train dpo prefs.jsonl --model runs/sft/model
    jielong feedback export --db runs/serve/feedback.db --format kto --implicit
    jielong feedback purge --db runs/serve/feedback.db --older_than_days 90

The chat store (jielong.serve.store) keeps every conversation as a tree: regenerated and
edited messages are siblings of the ones they replace, and each reply carries its ratings
(the latest is current). From it:

- dpo: {"prompt", "chosen", "rejected"} pairs, for `jielong train dpo` (and `train reward`):
  every 👍 reply against every 👎 reply to the same user message (siblings), and every
  edited reply (chosen) against the reply it corrects (rejected) — unless that original was
  itself rated 👍, or the edit 👎. A regeneration nobody rated says nothing: no pair.
- kto: {"prompt", "completion", "label"} rows, for `jielong train kto`: each reply rated 👍
  (label true) or 👎 (false).
- sft: {"messages"} conversations, for `jielong train sft`: each 👍 reply after its prompt.
- with --implicit (kto): what people did rather than rated — a regenerated reply (a weak
  👎), an edited one (the edit 👍, the original 👎), one a follow-up complains about (👎,
  weighted by the complaint classifier) — as weighted KTO rows in a file of their own
  (<out>-implicit.jsonl), and a report of how often each signal agrees with the explicit
  👍/👎 where both exist (<out>-implicit.agreement.json and .md); see jielong.serve.implicit.

A prompt is the branch the reply answers: the conversation's system prompt (when it has
one) as a system message, then the messages from the first one down to the user message.
Messages are OpenAI-style {"role", "content"} lists (TRL's conversational format). Rows
come in a fixed order (conversations oldest first, messages in the order they were made),
so exporting the same database twice gives the same file. Replies with no text (stopped
before the first token) are left out, and so are conversations the user deleted in the chat
(`--include_deleted` exports them too: a deletion is a user's wish, not an accident).

Retention (`purge`): conversations deleted in the chat (hidden, not yet removed) and, with
--older_than_days N, every conversation not active in the last N days, are removed with their
messages, ratings, safety events and arena votes, and the file is VACUUMed, so their text is
no longer in its bytes (jielong.serve.store.Store.purge). Run it from cron to keep a retention
period; a running server may keep its database open meanwhile (SQLite locks the file).

Turns a safety rail flagged are left out too (`--flagged drop`, the default): a message with
any rail decision in the store (refused, answered with crisis lines, redacted or flagged
only) or a reply the rail stopped (finish_reason content_filter), and every message after it
on its branch, so no prompt carries it. `--flagged keep` exports them (e.g. to review them,
or to tune on the rails' own replies on purpose).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from jielong.errors import UserError
from jielong.files import atomic_path, write_json, write_text
from jielong.serve.complaints import THRESHOLD
from jielong.serve.implicit import (
    EDIT_WEIGHT,
    REGENERATE_WEIGHT,
    agreement,
    agreement_table,
    branch_prompt,
    signals,
    weighted_rows,
)
from jielong.serve.store import Store

FORMATS = ("dpo", "kto", "sft")


def rows(conversations: list[dict], fmt: str) -> tuple[list[dict], dict[str, int]]:
    """(rows, counts) of the format `fmt` from Store.dump()'s conversations."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    out: list[dict] = []
    counts = {"conversations": 0, "siblings": 0, "edits": 0, "up": 0, "down": 0}
    for c in conversations:
        before = len(out)
        out += _conversation_rows(c, fmt, counts)
        counts["conversations"] += len(out) > before
    counts["rows"] = len(out)
    return out, counts


def _conversation_rows(c: dict, fmt: str, counts: dict[str, int]) -> list[dict]:
    by_id = {m["id"]: m for m in c["messages"]}
    replies: dict[str, list[dict]] = {}  # user message id → its replies, in order
    for m in c["messages"]:
        if m["role"] == "assistant":
            replies.setdefault(m["parent_id"], []).append(m)

    def value(m: dict) -> int:
        return m["rating"]["value"] if m["rating"] else 0

    def reply(m: dict) -> list[dict]:
        return [{"role": "assistant", "content": m["content"]}]

    out = []
    for user_id, group in replies.items():
        group = [m for m in group if m["content"].strip()]
        if fmt == "dpo":
            pairs, seen = [], set()
            liked = [m for m in group if value(m) == 1]
            disliked = [m for m in group if value(m) == -1]
            for good in liked:
                for bad in disliked:
                    pairs.append((good, bad, "siblings"))
            for edit in group:
                old = by_id.get(edit["edited_from"]) if edit["origin"] == "edit" else None
                if old is None or not old["content"].strip() or value(old) == 1 or \
                        value(edit) == -1:
                    continue
                pairs.append((edit, old, "edits"))
            for good, bad, kind in pairs:
                key = (good["id"], bad["id"])
                if key in seen or good["content"] == bad["content"]:
                    continue
                seen.add(key)
                counts[kind] += 1
                out.append({"prompt": branch_prompt(c, user_id), "chosen": reply(good),
                            "rejected": reply(bad)})
        else:
            for m in group:
                v = value(m)
                if v == 1 or (v == -1 and fmt == "kto"):
                    counts["up" if v == 1 else "down"] += 1
                    if fmt == "kto":
                        out.append({"prompt": branch_prompt(c, user_id), "completion": reply(m),
                                    "label": v == 1})
                    else:
                        out.append({"messages": branch_prompt(c, user_id) + reply(m)})
    return out


def leave_out_flagged(conversations: list[dict]) -> tuple[list[dict], int]:
    """(`conversations` without the messages a safety rail flagged and those after them on
    their branches, how many messages were left out)."""
    out, dropped = [], 0
    for c in conversations:
        bad: set[str] = set()
        for m in c["messages"]:  # in the order they were made: a parent before its children
            if m.get("safety") or m["finish_reason"] == "content_filter" or m["parent_id"] in bad:
                bad.add(m["id"])
        dropped += len(bad)
        out.append({**c, "messages": [m for m in c["messages"] if m["id"] not in bad]})
    return out, dropped


def export(db: str | Path, fmt: str, out: str | Path, include_deleted: bool = False,
           implicit_out: str | Path | None = None, flagged: str = "drop") -> dict:
    """Write the feedback in the database `db` as `fmt` (dpo, kto or sft) rows to the JSONL
    file `out` (atomically); the counts (rows, conversations, and by kind). With
    `implicit_out` (kto only), also the implicit feedback's weighted KTO rows there and the
    agreement report beside it (jielong.serve.implicit); then either file may be left out
    when it would be empty, and the counts hold "implicit" and "agreement". `flagged`:
    "drop" leaves out what a safety rail flagged (counted in "flagged"), "keep" keeps it."""
    out = Path(out)
    for path, flag in ((out, "--out"), (implicit_out, "--implicit_out")):
        if path is not None and Path(path).suffix.lower() != ".jsonl":
            raise UserError(f"{flag} {path}: give a .jsonl file (one JSON row a line), which "
                            "the training commands read")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    if flagged not in ("drop", "keep"):
        raise UserError(f"--flagged {flagged}: use drop (leave out what a safety rail "
                        "flagged) or keep")
    if implicit_out is not None:
        implicit_out = Path(implicit_out)
        if fmt != "kto":
            raise UserError(f"--implicit writes weighted KTO rows; use it with --format kto, "
                            f"not {fmt}")
        if implicit_out.resolve() == out.resolve():
            raise UserError(f"--implicit_out {implicit_out} is the --out file; implicit rows "
                            "are kept apart from the explicit ratings: give another file")
    with Store(db, create=False) as store:
        conversations = store.dump(include_deleted)
    left_out = 0
    if flagged == "drop":
        conversations, left_out = leave_out_flagged(conversations)
    found, counts = rows(conversations, fmt)
    counts["flagged"] = left_out
    if implicit_out is None:
        if not found:
            need = {"dpo": "a 👍 and a 👎 reply to the same message, or an edited reply",
                    "kto": "a reply rated 👍 or 👎", "sft": "a reply rated 👍"}[fmt]
            raise UserError(f"{db}: nothing to export as {fmt} ({len(conversations)} "
                            f"conversations; a row needs {need})")
        write_rows(out, found)
        return counts
    found_signals, signal_counts = signals(conversations)
    weak, weak_counts = weighted_rows(found_signals)
    if not found and not weak:
        raise UserError(f"{db}: nothing to export as kto ({len(conversations)} conversations; "
                        "a row needs a rated reply, a regenerated, edited or complained-about "
                        "one)")
    if found:
        write_rows(out, found)
    if weak:
        write_rows(implicit_out, weak)
    report = {"db": str(db), "rows": {**weak_counts, **signal_counts},
              "weights": {"regenerate": REGENERATE_WEIGHT, "edit": EDIT_WEIGHT,
                          "complaint": "the classifier's probability"},
              "complaint_threshold": THRESHOLD, **agreement(found_signals, conversations)}
    json_path, md_path = agreement_paths(implicit_out)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_path, report)
    write_text(md_path, f"# Implicit feedback against explicit 👍/👎\n\n{db}\n\n"
                        f"{agreement_table(report)}")
    return {**counts, "implicit": report["rows"], "agreement": report}


def agreement_paths(implicit_out: str | Path) -> tuple[Path, Path]:
    """The agreement report's JSON and Markdown files, beside the implicit rows."""
    stem = Path(implicit_out).with_suffix("")
    return stem.with_name(f"{stem.name}.agreement.json"), stem.with_name(f"{stem.name}.agreement.md")


def write_rows(path: Path, found: list[dict]) -> None:
    """JSONL rows, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in found:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def export_cmd(db: str = "runs/serve/feedback.db", format: Literal["dpo", "kto", "sft"] = "dpo",
               out: str | None = None, include_deleted: bool = False, implicit: bool = False,
               implicit_out: str | None = None, flagged: Literal["drop", "keep"] = "drop") -> dict:
    """Export the web chat's feedback as training data: DPO pairs, KTO ratings or SFT chats.

    dpo: a 👍 reply against a 👎 reply to the same message, and an edited reply against the
    one it corrects (for `jielong train dpo`); kto: each 👍/👎 reply (`jielong train kto`);
    sft: each 👍 reply with its conversation (`jielong train sft`). With --implicit (kto),
    also regenerations, edits and complaining follow-ups as weighted KTO rows, in a file
    of their own, and how often each agrees with the explicit ratings.

    Args:
        db: The chat database `jielong serve` wrote (see its --db).
        format: dpo, kto or sft.
        out: The JSONL file to write (default: <format>.jsonl beside the database).
        include_deleted: Also export conversations deleted in the chat (left out by default).
        implicit: Also write the implicit feedback (regenerated, edited, complained-about replies) as weighted KTO rows, with --format kto.
        implicit_out: Its JSONL file (default: <out>-implicit.jsonl; giving one implies --implicit); the agreement report goes beside it (.agreement.json, .agreement.md).
        flagged: drop: leave out turns a safety rail flagged (and what follows them on their branch); keep: export them too.
    """
    target = Path(out) if out else Path(db).with_name(f"{format}.jsonl")
    weak_target = None
    if implicit or implicit_out:
        weak_target = Path(implicit_out) if implicit_out else \
            target.with_name(f"{target.with_suffix('').name}-implicit.jsonl")
    counts = export(db, format, target, include_deleted, weak_target, flagged)
    n = counts["rows"]
    if format == "dpo":
        what = (f"{n} DPO pairs ({counts['siblings']} from 👍/👎 siblings, {counts['edits']} "
                "from edits)")
    elif format == "kto":
        what = f"{n} KTO ratings ({counts['up']} 👍, {counts['down']} 👎)"
    else:
        what = f"{n} SFT conversations (👍 replies)"
    where = target if n else "nowhere (no rated replies)"
    print(f"exported {what} from {counts['conversations']} conversations of {db} to {where}")
    if counts["flagged"]:
        print(f"left out {counts['flagged']} messages a safety rail flagged (and those after "
              "them); --flagged keep exports them")
    if weak_target is not None:
        k = counts["implicit"]
        where = weak_target if k["rows"] else "nowhere (no signals on unrated replies)"
        print(f"exported {k['rows']} implicit KTO rows ({k['regenerate']} regenerated, "
              f"{k['edit']} edited, {k['complaint']} complained about; {k['rated']} replies "
              f"with signals are rated and left to their rating) to {where}")
        print(agreement_table(counts["agreement"]).rstrip())
        json_path, md_path = agreement_paths(weak_target)
        print(f"agreement with explicit ratings: {json_path}, {md_path}")
    return counts


def purge_cmd(db: str = "runs/serve/feedback.db", older_than_days: float | None = None) -> dict:
    """Remove deleted conversations (and those past a retention period) from the chat database.

    The web chat's Delete hides a conversation; this removes every hidden one and, with
    --older_than_days, every conversation not active for that many days, with their
    messages, ratings, safety events and arena votes, then VACUUMs the file so their text
    is gone from its bytes.

    Args:
        db: The chat database `jielong serve` wrote (see its --db).
        older_than_days: Also remove conversations whose last activity is older than this many days (the retention period).
    """
    with Store(db, create=False) as store:
        before = _size(store.file)
        counts = store.purge(older_than_days)
        after = _size(store.file)
    what = ", ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in
                     ("messages", "ratings", "safety_events", "votes"))
    scope = "deleted" if older_than_days is None else \
        f"deleted or inactive for {older_than_days:g} days"
    print(f"purged {counts['conversations']} conversations ({scope}) from {db}: {what}; "
          f"{before:,} -> {after:,} bytes")
    return {**counts, "bytes_before": before, "bytes_after": after}


def _size(path: Path) -> int:
    """The database's bytes on disk, its write-ahead log included."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
