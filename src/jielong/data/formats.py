"""Conversation datasets in the three common JSONL formats, read as one: lists of messages.

    {"messages": [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}]}  OpenAI
    {"conversations": [{"from": "human", "value": "…"}, {"from": "gpt", "value": "…"}]}      ShareGPT
    {"instruction": "…", "input": "…", "output": "…"}                                        alpaca

Each line is recognised by its keys, so files may even mix formats. ShareGPT's roles
(human/user, gpt/assistant/bot/model, system) and a top-level "system" field (ShareGPT and
alpaca), alpaca's optional "input" (appended to the instruction after a blank line) and
"history" ([[question, answer], …] earlier turns) are understood. Every record must end
with an assistant message — the reply the model learns to give.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from jielong.data.readers import iter_records
from jielong.errors import UserError

ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
         "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant"}
FORMATS = ("openai", "sharegpt", "alpaca")


def detect(obj: dict) -> str | None:
    """"openai", "sharegpt" or "alpaca" by the record's keys (None if none fits)."""
    if "messages" in obj:
        return "openai"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    return None


def to_messages(obj: object, where: str, system: str | None = None) -> list[dict]:
    """One record as [{"role", "content"}, …], checked; `system` is used when it has none."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    fmt = detect(obj)
    if fmt is None:
        keys = ", ".join(map(repr, list(obj)[:8])) or "none"
        raise UserError(f"{where}: not a conversation record (keys: {keys}); use \"messages\" "
                        "(OpenAI), \"conversations\" (ShareGPT) or \"instruction\" + \"output\" "
                        "(alpaca)")
    if fmt == "alpaca":
        messages = _alpaca(obj, where)
    else:
        key, role_key, text_key = (("messages", "role", "content") if fmt == "openai"
                                   else ("conversations", "from", "value"))
        turns = obj[key]
        if not isinstance(turns, list) or not turns:
            raise UserError(f"{where}: \"{key}\" must be a non-empty list of messages")
        messages = []
        for i, m in enumerate(turns, 1):
            if not isinstance(m, dict) or role_key not in m or text_key not in m:
                raise UserError(f"{where}: {key}[{i}] needs \"{role_key}\" and \"{text_key}\" "
                                f"({fmt} format)")
            role = ROLES.get(str(m[role_key]).lower())
            if role is None:
                raise UserError(f"{where}: {key}[{i}] has role {m[role_key]!r}; use one of "
                                f"{', '.join(sorted(set(ROLES)))}")
            messages.append({"role": role, "content": _text(m[text_key], where, f"{key}[{i}]")})
        if "system" in obj and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": _text(obj["system"], where, "system")})
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    _check_order(messages, where)
    return messages


def _alpaca(obj: dict, where: str) -> list[dict]:
    prompt = _text(obj["instruction"], where, "instruction")
    if obj.get("input"):
        prompt += "\n\n" + _text(obj["input"], where, "input")
    messages = []
    if obj.get("system"):
        messages.append({"role": "system", "content": _text(obj["system"], where, "system")})
    for i, pair in enumerate(obj.get("history") or [], 1):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise UserError(f"{where}: history[{i}] must be a [question, answer] pair")
        messages += [{"role": "user", "content": _text(pair[0], where, f"history[{i}]")},
                     {"role": "assistant", "content": _text(pair[1], where, f"history[{i}]")}]
    return messages + [{"role": "user", "content": prompt},
                       {"role": "assistant", "content": _text(obj["output"], where, "output")}]


def _text(value: object, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: {what} must be a string, got {type(value).__name__}")
    return value


def _check_order(messages: list[dict], where: str) -> None:
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in body):
        raise UserError(f"{where}: a system message may only come first")
    if not body or body[-1]["role"] != "assistant":
        raise UserError(f"{where}: the conversation must end with an assistant reply to learn from")
    if not body[-1]["content"].strip():
        raise UserError(f"{where}: the last assistant reply is empty")
    for a, b in zip(body, body[1:], strict=False):
        if a["role"] == b["role"]:
            raise UserError(f"{where}: two {a['role']} messages in a row; user and assistant "
                            "turns must alternate")
    if body[0]["role"] != "user":
        raise UserError(f"{where}: the conversation must start with a user message (after an "
                        "optional system message)")


def read_conversations(paths: str | Path | Sequence[str | Path],
                       system: str | None = None) -> Iterator[tuple[str, list[dict]]]:
    """(where, messages) for every record of the JSONL files, in order."""
    for path in [paths] if isinstance(paths, str | Path) else paths:
        if Path(path).suffix.lower() not in (".jsonl", ".json"):
            raise UserError(f"{path}: conversation data must be a .jsonl file (one record a line)")
        for where, obj in iter_records(path):
            yield where, to_messages(obj, where, system)
