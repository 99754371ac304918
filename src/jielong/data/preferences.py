"""Preference data: which of two replies people prefer, or a 👍/👎 on one reply.

    from jielong.data.preferences import read_pairs, read_ratings
    pairs = read_pairs(["prefs.jsonl"])      # reward, dpo, rlhf
    ratings = read_ratings(["feedback.jsonl"])  # kto

JSONL, one row a line, each recognised by its keys (so a file may mix them):

    {"prompt": P, "chosen": R, "rejected": R}             a pair: chosen preferred
    {"chosen": C, "rejected": C}                          a pair with an implicit prompt
    {"prompt": P, "responses": [R_best, …, R_worst]}      a ranking: every (better, worse) pair
    {"prompt": P, "completion": R, "label": true}         a rating: 👍 (true) or 👎 (false)

P is a string (one user message) or a list of OpenAI-style messages ({"role", "content"})
ending with a user message; R is a string (one assistant message) or a list of messages
ending with an assistant message. With an implicit prompt (TRL's conversational form), C
are whole conversations that share the prompt and differ in their final reply; the longest
common prefix of messages is the prompt. A rating's label may also be 1/0, "👍"/"👎",
"up"/"down" or "good"/"bad"; an optional "weight" (a number ≥ 0, default 1) says how much
it counts (`jielong feedback export --implicit` writes 0.5 for a regeneration). `system` is added as the first message of a prompt that has
no system message. Every malformed row is a one-line `UserError` naming file:line.

The record types below are what every alignment stage (reward, dpo, kto, rlhf) consumes;
`encode_response` turns a prompt and a reply into token ids with labels on the reply only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from jielong.data.chat import IGNORE, encode
from jielong.data.formats import ROLES
from jielong.data.readers import iter_records
from jielong.errors import UserError

LIKE = {"👍": True, "👎": False, "up": True, "down": False, "good": True, "bad": False,
        "true": True, "false": False}
FORMATS_HELP = ('{"prompt", "chosen", "rejected"}, {"prompt", "responses": [best, …, worst]} '
                'or {"prompt", "completion", "label"}')


@dataclass
class PrefPair:
    """A prompt (messages up to the reply) and two replies (assistant messages), chosen
    preferred to rejected. `where` is the source, e.g. "prefs.jsonl:12"."""

    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    where: str = ""


@dataclass
class Rating:
    """A prompt, one reply, whether people liked it (👍 True, 👎 False), and how much the
    rating counts (1 unless the row says otherwise)."""

    prompt: list[dict]
    completion: list[dict]
    label: bool
    where: str = ""
    weight: float = 1.0


# ------------------------------------------------------------------------------- reading


def read_pairs(paths: str | Path | Sequence[str | Path], system: str | None = None) -> list[PrefPair]:
    """Every (chosen, rejected) pair of the JSONL files, in order: pair rows as they are,
    each ranking as all its (better, worse) pairs. A rating row is an error (unpaired data
    is for `jielong train kto`)."""
    out = []
    for where, obj in read_rows(paths):
        kind = row_kind(obj, where)
        if kind == "rating":
            raise UserError(f"{where}: a rating (prompt, completion, label) is unpaired data, "
                            "for `jielong train kto`; this command needs pairs "
                            '({"prompt", "chosen", "rejected"}) or rankings ("responses")')
        out += [parse_pair(obj, where, system)] if kind == "pair" else parse_ranking(obj, where, system)
    return out


def read_ratings(paths: str | Path | Sequence[str | Path], system: str | None = None) -> list[Rating]:
    """Every rated reply of the JSONL files, in order. Pairs count too, as TRL does for KTO
    on paired data: chosen is liked, rejected disliked; of a ranking, the best reply is
    liked and the worst disliked (the ones between are left out: neither is clear)."""
    out = []
    for where, obj in read_rows(paths):
        kind = row_kind(obj, where)
        if kind == "rating":
            out.append(parse_rating(obj, where, system))
            continue
        if kind == "pair":
            p = parse_pair(obj, where, system)
            prompt, best, worst = p.prompt, p.chosen, p.rejected
        else:
            prompt, replies = parse_responses(obj, where, system)
            best, worst = replies[0], replies[-1]
        out += [Rating(prompt, best, True, where), Rating(prompt, worst, False, where)]
    return out


def read_rows(paths: str | Path | Sequence[str | Path]) -> Iterator[tuple[str, object]]:
    """(where, row) of every JSONL file in turn; a file without rows is an error."""
    for path in [paths] if isinstance(paths, str | Path) else paths:
        if Path(path).suffix.lower() not in (".jsonl", ".json"):
            raise UserError(f"{path}: preference data must be a .jsonl file (one JSON row a line)")
        empty = True
        for where, obj in iter_records(path):
            empty = False
            yield where, obj
        if empty:
            raise UserError(f"{path}: no rows; each line must be a JSON object like {FORMATS_HELP}")


def row_kind(obj: object, where: str) -> str:
    """"pair", "ranking" or "rating", by the row's keys."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object like {FORMATS_HELP}, got "
                        f"{type(obj).__name__}")
    if "chosen" in obj or "rejected" in obj:
        return "pair"
    if "responses" in obj:
        return "ranking"
    if "completion" in obj or "label" in obj:
        return "rating"
    keys = ", ".join(map(repr, list(obj)[:8])) or "none"
    raise UserError(f"{where}: not a preference row (keys: {keys}); use {FORMATS_HELP}")


# ------------------------------------------------------------------------------- one row


def parse_pair(obj: dict, where: str, system: str | None = None) -> PrefPair:
    """A pair row, with an explicit prompt or (conversations) an implicit one."""
    for name in ("chosen", "rejected"):
        if name not in obj:
            raise UserError(f"{where}: a pair needs both \"chosen\" and \"rejected\"; \"{name}\" "
                            "is missing")
    if "prompt" in obj:
        prompt = parse_prompt(obj["prompt"], where, system)
        chosen = parse_reply(obj["chosen"], where, "chosen")
        rejected = parse_reply(obj["rejected"], where, "rejected")
    else:
        prompt, chosen, rejected = _split_shared_prompt(obj["chosen"], obj["rejected"], where, system)
    if chosen == rejected:
        raise UserError(f"{where}: chosen and rejected are the same reply; a pair needs two "
                        "different replies (fix or remove the row)")
    return PrefPair(prompt, chosen, rejected, where)


def parse_ranking(obj: dict, where: str, system: str | None = None) -> list[PrefPair]:
    """A ranking row as its pairs (i, j), i < j: response i preferred to response j."""
    prompt, replies = parse_responses(obj, where, system)
    return [PrefPair(prompt, replies[i], replies[j], where)
            for i in range(len(replies)) for j in range(i + 1, len(replies))]


def parse_responses(obj: dict, where: str,
                    system: str | None = None) -> tuple[list[dict], list[list[dict]]]:
    """(prompt, replies best first) of a ranking row."""
    if "prompt" not in obj:
        raise UserError(f"{where}: a ranking needs a \"prompt\" beside \"responses\"")
    prompt = parse_prompt(obj["prompt"], where, system)
    responses = obj["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        n = len(responses) if isinstance(responses, list) else type(responses).__name__
        raise UserError(f"{where}: \"responses\" must be a list of at least two replies, best "
                        f"first (got {n}); a single reply has nothing to be preferred to")
    replies = [parse_reply(r, where, f"responses[{i}]") for i, r in enumerate(responses)]
    for i, a in enumerate(replies):
        for j in range(i + 1, len(replies)):
            if a == replies[j]:
                raise UserError(f"{where}: responses[{i}] and responses[{j}] are the same reply; "
                                "a ranking needs different replies (remove the duplicate)")
    return prompt, replies


def parse_rating(obj: dict, where: str, system: str | None = None) -> Rating:
    for name in ("prompt", "completion", "label"):
        if name not in obj:
            raise UserError(f"{where}: a rating needs \"prompt\", \"completion\" and \"label\"; "
                            f"\"{name}\" is missing")
    return Rating(parse_prompt(obj["prompt"], where, system),
                  parse_reply(obj["completion"], where, "completion"),
                  parse_label(obj["label"], where), where,
                  parse_weight(obj.get("weight", 1.0), where))


def parse_weight(value: object, where: str) -> float:
    """A rating's weight: a finite number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or value < 0:
        shown = json.dumps(value, ensure_ascii=False)[:40]
        raise UserError(f"{where}: weight {shown} is not a number ≥ 0; give how much the rating "
                        "counts (1 when absent, 0.5 for half) or remove the key")
    return float(value)


def parse_label(value: object, where: str) -> bool:
    """True (liked) or False (disliked) from true/false, 1/0, 👍/👎, up/down, good/bad."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LIKE:
        return LIKE[value.strip().lower()]
    shown = json.dumps(value, ensure_ascii=False)[:40]
    raise UserError(f"{where}: label {shown} is not a rating; use true/false (or 1/0, 👍/👎, "
                    "up/down, good/bad)")


def parse_prompt(value: object, where: str, system: str | None = None,
                 what: str = "prompt") -> list[dict]:
    """A prompt as messages ending with a user message; `system` first when it has none."""
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{where}: {what} is empty; give the question the replies answer")
        messages = [{"role": "user", "content": value}]
    else:
        messages = _messages(value, where, what)
        if messages[-1]["role"] != "user":
            raise UserError(f"{where}: {what} must end with a user message (the replies answer "
                            f"it), not {messages[-1]['role']}")
        _check_turns(messages, where, what, first="user")
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def parse_reply(value: object, where: str, what: str) -> list[dict]:
    """A reply as assistant-first messages ending with a non-empty assistant message."""
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{where}: {what} is an empty reply; give it text or remove the row")
        return [{"role": "assistant", "content": value}]
    messages = _messages(value, where, what)
    if messages[-1]["role"] != "assistant":
        raise UserError(f"{where}: {what} must end with an assistant message (the reply), not "
                        f"{messages[-1]['role']}")
    if not messages[-1]["content"].strip():
        raise UserError(f"{where}: {what} is an empty reply; give it text or remove the row")
    if any(m["role"] == "system" for m in messages):
        raise UserError(f"{where}: {what} holds a system message; a system message belongs at "
                        "the start of the prompt")
    _check_turns(messages, where, what, first="assistant")
    return messages


def _messages(value: object, where: str, what: str) -> list[dict]:
    """OpenAI-style messages as [{"role", "content"}], roles normalised (human → user, …)."""
    if not isinstance(value, list):
        raise UserError(f"{where}: {what} must be a string or a list of messages, got "
                        f"{type(value).__name__}")
    if not value:
        raise UserError(f"{where}: {what} is an empty list; give at least one message")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"{where}: {what}[{i}] must be a message like "
                            '{"role": "user", "content": "…"}')
        role = ROLES.get(str(m["role"]).lower())
        if role is None:
            raise UserError(f"{where}: {what}[{i}] has role {m['role']!r}; use system, user or "
                            "assistant")
        if not isinstance(m["content"], str):
            raise UserError(f"{where}: {what}[{i}] content must be a string, got "
                            f"{type(m['content']).__name__}")
        out.append({"role": role, "content": m["content"]})
    return out


def _check_turns(messages: list[dict], where: str, what: str, first: str) -> None:
    """A system message only first; then `first`, alternating user and assistant."""
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in body):
        raise UserError(f"{where}: {what}: a system message may only come first")
    if not body:
        raise UserError(f"{where}: {what} has only a system message; add the user's message")
    if body[0]["role"] != first:
        raise UserError(f"{where}: {what} must start with a{'n' if first[0] == 'a' else ''} "
                        f"{first} message (after an optional system message)")
    for a, b in zip(body, body[1:], strict=False):
        if a["role"] == b["role"]:
            raise UserError(f"{where}: {what} has two {a['role']} messages in a row; user and "
                            "assistant turns must alternate")


def _split_shared_prompt(chosen: object, rejected: object, where: str,
                         system: str | None) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen reply, rejected reply) of two whole conversations: the prompt is
    their longest common prefix of messages (TRL's implicit prompt)."""
    if isinstance(chosen, str) or isinstance(rejected, str):
        raise UserError(f"{where}: no \"prompt\"; add one, or give chosen and rejected as whole "
                        "conversations (lists of messages) that share the prompt")
    a, b = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == 0 or a[n - 1]["role"] != "user":
        raise UserError(f"{where}: no \"prompt\", and chosen and rejected do not share the "
                        "conversation up to a user message; give a \"prompt\", or make both "
                        "the same conversation with a different final reply")
    if n == len(a) or n == len(b):
        short = "chosen" if n == len(a) else "rejected"
        raise UserError(f"{where}: {short} has no reply after the prompt it shares with the "
                        "other conversation; each must end with its own assistant reply")
    prompt = parse_prompt(a[:n], where, system, what="the shared prompt of chosen and rejected")
    return prompt, parse_reply(a[n:], where, "chosen"), parse_reply(b[n:], where, "rejected")


# ------------------------------------------------------------------------------ encoding


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of labelled positions."""
    runs, start = [], None
    for i, t in enumerate(labels + [IGNORE]):
        if t != IGNORE and start is None:
            start = i
        elif t == IGNORE and start is not None:
            runs.append((start, i))
            start = None
    return runs


def encode_response(tok, prompt: list[dict], reply: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, labels) of prompt + reply rendered with the chat template; labels (aligned
    with ids, not shifted) hold the reply's tokens and its end-of-turn token, IGNORE
    elsewhere — earlier assistant turns of the prompt are context, not learned."""

    ids, labels = encode(tok, prompt + reply)
    n_replies = sum(1 for m in reply if m.get("role") == "assistant")
    keep = _runs(labels)[-n_replies:] if n_replies else []
    out = [IGNORE] * len(ids)
    for a, b in keep:
        out[a:b] = labels[a:b]
    return ids, out
