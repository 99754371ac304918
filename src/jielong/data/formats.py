"""Conversation datasets in the three common JSONL formats, read as one: lists of messages.

    {"messages": [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}]}  OpenAI
    {"conversations": [{"from": "human", "value": "…"}, {"from": "gpt", "value": "…"}]}      ShareGPT
    {"instruction": "…", "input": "…", "output": "…"}                                        alpaca

Each line is recognised by its keys, so files may even mix formats. ShareGPT's roles
(human/user, gpt/assistant/bot/model, system) and a top-level "system" field (ShareGPT and
alpaca), alpaca's optional "input" (appended to the instruction after a blank line) and
"history" ([[question, answer], …] earlier turns) are understood. Every record must end
with an assistant message — the reply the model learns to give.

Tool use, in OpenAI's shape (the OpenAI format only), as Chat Completions takes it:

    {"tools": [{"type": "function", "function": {"name": "calculator", "parameters": {…}}}],
     "messages": [{"role": "user", "content": "7 加 5 是多少？"},
                  {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                   "type": "function", "function": {"name": "calculator",
                   "arguments": "{\"expression\": \"7 + 5\"}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "12"},
                  {"role": "assistant", "content": "7 + 5 = 12。"}]}

An assistant message with `tool_calls` is answered by one `tool` message per call, then
the conversation goes on with the assistant (another call, or the reply); a record may
also end on the calls. `arguments` (JSON text, or an object) is checked to hold a JSON
object and rewritten as canonical JSON text, so every example writes it alike; the
optional per-record `tools` (a list, or that list as JSON text, as some datasets store
it) is checked and passed to the chat template (`read_chats`), and a call must name one
of them. What the model learns (`data.chat.encode`): the calls and the replies, not the
tool list nor the tools' results.
"""

from __future__ import annotations

import json
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
            if fmt == "openai" and isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")):
                messages.append(_tool_message(m, where, f"{key}[{i}]"))
                continue
            if not isinstance(m, dict) or role_key not in m or text_key not in m:
                raise UserError(f"{where}: {key}[{i}] needs \"{role_key}\" and \"{text_key}\" "
                                f"({fmt} format)")
            role = ROLES.get(str(m[role_key]).lower())
            if role is None:
                tool = ', or "tool" (OpenAI format)' if fmt == "openai" else ""
                raise UserError(f"{where}: {key}[{i}] has role {m[role_key]!r}; use one of "
                                f"{', '.join(sorted(set(ROLES)))}{tool}")
            messages.append({"role": role, "content": _text(m[text_key], where, f"{key}[{i}]")})
        if "system" in obj and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": _text(obj["system"], where, "system")})
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    _check_order(messages, where)
    tools = tools_of(obj, where)
    if tools:
        _check_names(messages, tools, where)
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
    if not body[-1]["content"].strip() and not body[-1].get("tool_calls"):
        raise UserError(f"{where}: the last assistant reply is empty")
    if body[0]["role"] != "user":
        raise UserError(f"{where}: the conversation must start with a user message (after an "
                        "optional system message)")
    n0 = len(messages) - len(body) + 1  # body[i] is message n0 + i, counted from 1
    for i, m in enumerate(body):
        if m.get("tool_calls"):
            results = 0
            while i + 1 + results < len(body) and body[i + 1 + results]["role"] == "tool":
                results += 1
            if i + 1 + results < len(body) and results != len(m["tool_calls"]):
                raise UserError(f"{where}: message {n0 + i} (assistant) makes {len(m['tool_calls'])} "
                                f"tool call(s) but {results} tool message(s) follow; answer each "
                                "call with one {\"role\": \"tool\", \"content\": …} message")
            ids = {c["id"] for c in m["tool_calls"] if "id" in c}
            for k in range(i + 1, i + 1 + results):
                got = body[k].get("tool_call_id")
                if ids and got is not None and got not in ids:
                    raise UserError(f"{where}: message {n0 + k} (tool) answers tool_call_id {got!r}, "
                                    f"which message {n0 + i} does not make (its ids: "
                                    f"{', '.join(sorted(ids))})")
            if i + 1 + results < len(body) and body[i + 1 + results]["role"] != "assistant":
                raise UserError(f"{where}: message {n0 + i + 1 + results} follows tool results "
                                "but is not the assistant's; the assistant answers (or calls "
                                "again) after the tools")
        elif m["role"] == "tool" and (i == 0 or not (body[i - 1].get("tool_calls")
                                                   or body[i - 1]["role"] == "tool")):
            raise UserError(f"{where}: message {n0 + i} is a tool result without an assistant "
                            "message with tool_calls before it")
    for i, (a, b) in enumerate(zip(body, body[1:], strict=False)):
        if a["role"] == b["role"] and a["role"] != "tool":
            raise UserError(f"{where}: two {a['role']} messages in a row (messages {n0 + i} and "
                            f"{n0 + i + 1}); user and assistant turns must alternate")


def _tool_message(m: dict, where: str, what: str) -> dict:
    """An OpenAI `tool` message, or an assistant message with `tool_calls`, checked; the
    calls' arguments as canonical JSON text."""
    if m.get("role") == "tool":
        out = {"role": "tool", "content": _text(m.get("content"), where, f"{what} (tool) content")}
        for k in ("tool_call_id", "name"):
            if m.get(k) is not None:
                out[k] = _text(m[k], where, f"{what} {k}")
        return out
    if m.get("role") != "assistant":
        raise UserError(f"{where}: {what} has tool_calls but role {m.get('role')!r}; only an "
                        "assistant message makes tool calls")
    calls = m["tool_calls"]
    if not isinstance(calls, list):
        raise UserError(f"{where}: {what} tool_calls must be a list of "
                        "{\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}")
    content = m.get("content")
    out = {"role": "assistant", "content": "" if content is None else _text(content, where, f"{what} content"),
           "tool_calls": []}
    for j, c in enumerate(calls, 1):
        here = f"{what} tool_calls[{j}]"
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise UserError(f"{where}: {here} needs \"function\": {{\"name\": …, \"arguments\": …}} "
                            "(OpenAI's tool call shape)")
        if c.get("type", "function") != "function":
            raise UserError(f"{where}: {here} has type {c['type']!r}; only \"function\" calls exist")
        args = f.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: {here} arguments are not valid JSON ({e.msg} at character "
                                f"{e.pos}): {f['arguments'][:60]!r}") from None
        if not isinstance(args, dict):
            raise UserError(f"{where}: {here} arguments must be a JSON object ({{\"name\": value}}), "
                            f"got {type(args).__name__}")
        call = {"type": "function", "function": {"name": f["name"],
                                                 "arguments": json.dumps(args, ensure_ascii=False)}}
        if c.get("id") is not None:
            call = {"id": _text(c["id"], where, f"{here} id"), **call}
        out["tool_calls"].append(call)
    return out


def tools_of(obj: dict, where: str) -> list[dict] | None:
    """A record's "tools", checked (OpenAI's [{"type": "function", "function": {"name", …}}],
    or that list as JSON text); None when it has none."""
    tools = obj.get("tools") if isinstance(obj, dict) else None
    if tools is None or tools == []:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: \"tools\" is text but not valid JSON ({e.msg}); give the "
                            "list of tools itself") from None
    if not isinstance(tools, list):
        raise UserError(f"{where}: \"tools\" must be a list of {{\"type\": \"function\", "
                        "\"function\": {\"name\", \"description\", \"parameters\"}}")
    for j, t in enumerate(tools, 1):
        f = t.get("function") if isinstance(t, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise UserError(f"{where}: tools[{j}] needs \"function\": {{\"name\": …, \"parameters\": "
                            "{…}} (OpenAI's tool shape)")
        if not isinstance(f.get("parameters", {}), dict):
            raise UserError(f"{where}: tools[{j}] ({f['name']}) parameters must be a JSON schema object")
    return tools


def _check_names(messages: list[dict], tools: list[dict], where: str) -> None:
    names = {t["function"]["name"] for t in tools}
    for n, m in enumerate(messages, 1):
        for c in m.get("tool_calls", []):
            if c["function"]["name"] not in names:
                raise UserError(f"{where}: message {n} calls {c['function']['name']!r}, which is not "
                                f"in the record's tools ({', '.join(sorted(names))})")


def read_chats(paths: str | Path | Sequence[str | Path], system: str | None = None
               ) -> Iterator[tuple[str, list[dict], list[dict] | None]]:
    """(where, messages, tools) for every record of the JSONL files, in order; tools is
    None for a record without any."""
    for path in [paths] if isinstance(paths, str | Path) else paths:
        if Path(path).suffix.lower() not in (".jsonl", ".json"):
            raise UserError(f"{path}: conversation data must be a .jsonl file (one record a line)")
        for where, obj in iter_records(path):
            yield where, to_messages(obj, where, system), tools_of(obj, where)


def read_conversations(paths: str | Path | Sequence[str | Path],
                       system: str | None = None) -> Iterator[tuple[str, list[dict]]]:
    """(where, messages) for every record of the JSONL files, in order; a record with
    "tools" is refused (its tools would be lost: `read_chats` keeps them)."""
    for where, messages, tools in read_chats(paths, system):
        if tools:
            raise UserError(f"{where}: this command does not read a record's \"tools\" yet; "
                            "`jielong train sft` does")
        yield where, messages
