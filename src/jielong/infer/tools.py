"""Tool calling: the tools a request offers, rendered by the model's own chat template, and
the calls read back out of what the model writes, as OpenAI's `tool_calls`.

    style = tool_style(tok)                       # "hermes" | "llama3" | "mistral"
    text = tok.render_chat(messages, True, tools=tools)[0] + prefill(style, choice)
    content, calls = parse_tool_calls(reply, style)
    p = StreamParser(style); deltas = p.feed(piece) ... + p.finish()

The three formats (each family's model card and chat template):

- **hermes** (NousResearch's Hermes 2 Pro, adopted by Qwen2.5/Qwen3 and jielong's own default
  template): each call is `<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`, several
  in a row for parallel calls, text may come before them.
- **llama3** (Llama 3.1+ "JSON based tool calling"): the reply is the call itself,
  `{"name": …, "parameters": {…}}`, optionally after `<|python_tag|>`, several joined by `;`.
- **mistral** (Mistral's v3 tokenizer templates): `[TOOL_CALLS] [{"name": …, "arguments": {…}},
  …]`. `[TOOL_CALLS]` is a control token that decoding drops, so a reply that *starts* with a
  JSON list of `{"name": …}` objects is read as the calls too (as is a Llama reply starting with
  `{"name"`).

One parser does both jobs: `parse_tool_calls` runs the `StreamParser` over the whole text, so
a streamed reply and the same reply returned whole always agree. The stream parser scans the
call's JSON as it arrives (strings, escapes, nesting) and sends, in OpenAI's delta shape, the
call's id and name once the name is whole, then the `arguments` value's own JSON text piece by
piece. Text pieces are Python strings (whole characters, the engine holds back a character
whose bytes are incomplete), and tags are never sent: a text tail that may be the start of
`<tool_call>` is held back until it is known not to be one.

A call that is not well formed — a dropped closing brace, text where JSON should be, a
`</tool_call>` inside the JSON — is never passed off as a call: it is reported in `errors`
(`{"index", "error", "text"}`; index is the delta index already sent for it, if any) and left
out of the calls (BFCL counts such an output as not well formed). Only a missing
`</tool_call>` at the very end of a reply is forgiven, when the JSON before it is complete (a
stop string or the length limit can cut it). Arguments are the model's own JSON text (so the
streamed pieces join to exactly the whole reply's arguments); arguments written as a JSON
string holding an object (`"arguments": "{\\"x\\": 1}"`) are unwrapped.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field

STYLES = ("hermes", "llama3", "mistral")
OPEN = {"hermes": "<tool_call>", "llama3": "<|python_tag|>", "mistral": "[TOOL_CALLS]"}
CLOSE = "</tool_call>"
ARGUMENT_KEYS = ("arguments", "parameters")
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule for function names (plus ".")


class ToolCallError(ValueError):
    """A reply with a call that is not well formed (parse_tool_calls); `errors` lists them."""

    def __init__(self, errors: list[dict]):
        self.errors = errors
        super().__init__("; ".join(e["error"] for e in errors))


def tool_style(tok) -> str:
    """Which call format the tokenizer's chat template speaks: Mistral's `[TOOL_CALLS]`,
    Llama 3.1's `"parameters"` JSON with the ipython role, else Hermes `<tool_call>` (Qwen2.5,
    Qwen3, Hermes and jielong's own template)."""
    source = tok if isinstance(tok, str) else (getattr(tok, "config", None) or {}).get("chat_template")
    source = source if isinstance(source, str) else ""
    if "[TOOL_CALLS]" in source or "[AVAILABLE_TOOLS]" in source:
        return "mistral"
    if "<tool_call>" in source:
        return "hermes"
    if "<|python_tag|>" in source or "ipython" in source or "<|start_header_id|>" in source:
        return "llama3"
    return "hermes"


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def mistral_id(cid: str) -> str:
    """Mistral's templates take 9-character alphanumeric call ids: other ids are mapped to one
    (the same every time, so a tool message's id still matches its call's)."""
    if len(cid) == 9 and cid.isalnum():
        return cid
    return hashlib.sha256(cid.encode()).hexdigest()[:9]


def check_tools(tools: list) -> list[dict]:
    """OpenAI's tools list, checked; ValueError("tools[i]…: what is wrong") otherwise."""
    seen = set()
    for i, t in enumerate(tools):
        f = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(f, dict):
            raise ValueError(f"tools[{i}]: must be {{\"type\": \"function\", \"function\": {{\"name\", "
                             "\"description\", \"parameters\"}}}")
        name = f.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"tools[{i}].function.name: {name!r} must be 1-64 letters, digits, _ or -")
        if name in seen:
            raise ValueError(f"tools[{i}].function.name: {name!r} is offered twice")
        seen.add(name)
        if not isinstance(f.get("parameters", {}), dict):
            raise ValueError(f"tools[{i}].function.parameters: must be a JSON schema object")
    return tools


def check_tool_choice(choice, tools: list[dict] | None) -> str | None:
    """tool_choice as "none" | "auto" | "required" | the function's name; None without tools
    (unless "none"). ValueError for a choice that names no offered tool."""
    if choice is None:
        return "auto" if tools else None
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise ValueError(f"tool_choice: {choice!r} must be \"none\", \"auto\", \"required\" or "
                             "{\"type\": \"function\", \"function\": {\"name\": …}}")
        if choice != "none" and not tools:
            raise ValueError(f"tool_choice: {choice!r} needs tools")
        return choice
    f = choice.get("function") if isinstance(choice, dict) else None
    name = f.get("name") if isinstance(f, dict) else None
    offered = [t["function"]["name"] for t in tools or []]
    if not isinstance(name, str) or name not in offered:
        raise ValueError(f"tool_choice: names {name!r}, not one of the tools offered ({offered})")
    return name


def template_messages(messages: list[dict], style: str) -> list[dict]:
    """OpenAI history as chat templates take it: an assistant call's `arguments` as an object
    (Qwen's and Llama's templates `tojson` it), ids Mistral's way for Mistral templates."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                f = c["function"]
                args = json.loads(f["arguments"]) if isinstance(f["arguments"], str) else f["arguments"]
                cid = mistral_id(c["id"]) if style == "mistral" else c["id"]
                calls.append({"id": cid, "type": "function",
                              "function": {"name": f["name"], "arguments": args}})
            m["tool_calls"] = calls
        if m.get("tool_call_id") and style == "mistral":
            m["tool_call_id"] = mistral_id(m["tool_call_id"])
        out.append(m)
    return out


def prefill(style: str, choice: str | None) -> str:
    """The start of the reply written for the model when a call is required (the opening of a
    call) or named (the call up to its arguments), so it cannot answer in prose. The json
    helper's grammar (jielong.infer.constrain) holds the rest to the schema once wired."""
    if choice in (None, "none", "auto"):
        return ""
    head = {"hermes": "<tool_call>\n{", "llama3": "{", "mistral": "[TOOL_CALLS] [{"}[style]
    if choice == "required":
        return head + '"name": "'
    key = "parameters" if style == "llama3" else "arguments"
    return head + f'"name": {json.dumps(choice, ensure_ascii=False)}, "{key}": '


# ----------------------------------------------------------------------------- scanning


class CallScanner:
    """One call's JSON object, scanned a character at a time from its `{`: where the name and
    the arguments value are, and whether the object has closed. Only the structure is checked
    here (brackets, strings, key/value order); json.loads checks the whole when it closes."""

    def __init__(self):
        self.raw: list[str] = []
        self.stack: list[str] = []
        self.in_str = self.esc = False
        self.state = "open"  # at the top level: open, key, colon, value, scalar, after
        self.key = self.name = None
        self.str_start = 0
        self.args_start = self.args_end = None
        self.args_str = False
        self.done = False
        self.bad: str | None = None

    def push(self, c: str) -> None:
        i = len(self.raw)
        self.raw.append(c)
        if self.in_str:
            if self.esc:
                self.esc = False
            elif c == "\\":
                self.esc = True
            elif c == '"':
                self.in_str = False
                if len(self.stack) == 1:
                    self.string_ended(i)
            return
        top = len(self.stack) == 1
        if top and self.state == "scalar" and c in ",}":
            if self.key in ARGUMENT_KEYS:
                self.args_end = len("".join(self.raw[:i]).rstrip())
            self.state = "after"
        if c.isspace():
            return
        if not self.stack:
            if c != "{":
                self.bad = f"expected '{{' to open the call, found {c!r}"
                return
            self.stack.append("{")
            self.state = "key"
        elif top and self.state == "key":
            if c == '"':
                self.in_str, self.str_start = True, i
            elif c == "}" and self.key is None:
                self.close()
            else:
                self.bad = f"expected a key in the call's JSON, found {c!r}"
        elif top and self.state == "colon":
            if c == ":":
                self.state = "value"
            else:
                self.bad = f"expected ':' after the key {self.key!r}, found {c!r}"
        elif top and self.state == "value":
            if self.key in ARGUMENT_KEYS:
                self.args_start, self.args_str = i, c == '"'
            if c == '"':
                self.in_str, self.str_start = True, i
            elif c in "{[":
                self.stack.append(c)
            else:
                self.state = "scalar"
        elif top and self.state == "scalar":
            pass
        elif top and self.state == "after":
            if c == ",":
                self.state = "key"
            elif c == "}":
                self.close()
            else:
                self.bad = f"expected ',' or '}}' in the call's JSON, found {c!r}"
        elif c == '"':
            self.in_str = True
        elif c in "{[":
            self.stack.append(c)
        elif c in "}]":
            if {"}": "{", "]": "["}[c] != self.stack[-1]:
                self.bad = f"{c!r} closes a {self.stack[-1]!r}"
                return
            self.stack.pop()
            if len(self.stack) == 1:
                if self.key in ARGUMENT_KEYS:
                    self.args_end = i + 1
                self.state = "after"

    def string_ended(self, i: int) -> None:
        try:
            s = json.loads("".join(self.raw[self.str_start:i + 1]))
        except json.JSONDecodeError as e:  # a bad escape (\x, a lone \u)
            self.bad = f"a string in the call's JSON does not parse ({e.msg})"
            return
        if self.state == "key":
            self.key, self.state = s, "colon"
        else:
            if self.key == "name":
                self.name = s
            if self.key in ARGUMENT_KEYS:
                self.args_end = i + 1
            self.state = "after"

    def close(self) -> None:
        self.stack.pop()
        self.done = True

    def args_so_far(self) -> str:
        """The arguments' JSON text scanned so far (an object or list still open: safe to send
        as it grows; a string or scalar value only once whole)."""
        if self.args_start is None:
            return ""
        if self.args_str or (self.args_end is None and self.state == "scalar"):
            return ""
        return "".join(self.raw[self.args_start:self.args_end])

    def result(self) -> tuple[str, str] | str:
        """(name, arguments JSON text) of the closed object, or why it is not a call."""
        text = "".join(self.raw)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            return f"the call's JSON does not parse ({e.msg} at character {e.pos})"
        name = obj.get("name")
        if obj.get("type") == "function" and isinstance(obj.get("function"), dict):
            obj = obj["function"]  # {"type": "function", "function": {…}}
            name = obj.get("name")
        if not isinstance(name, str) or not name:
            return "the call has no \"name\""
        key = next((k for k in ARGUMENT_KEYS if k in obj), None)
        args = obj.get(key, {}) if key else {}
        if isinstance(args, str):
            try:
                inner = json.loads(args)
            except json.JSONDecodeError:
                return f"{name}: the arguments string is not JSON"
            if not isinstance(inner, dict):
                return f"{name}: the arguments are not a JSON object"
            return name, args
        if not isinstance(args, dict):
            return f"{name}: the arguments are not a JSON object"
        if key is None or self.args_start is None:
            return name, "{}"
        return name, "".join(self.raw[self.args_start:self.args_end]).strip()


def bare_start(text: str, style: str) -> bool | None:
    """Whether a reply that begins with `text` is a call written without its marker (True),
    is not (False), or cannot tell yet (None): Llama's `{"name"`, Mistral's `[{"name"`."""
    heads = [["{", '"name"'], ["{", '"type"']] if style == "llama3" else [["[", "{", '"name"']]
    seen = {starts(text, want) for want in heads}
    return True if True in seen else None if None in seen else False


def starts(text: str, want: list[str]) -> bool | None:
    i = 0
    for tok in want:
        while i < len(text) and text[i].isspace():
            i += 1
        piece = text[i:i + len(tok)]
        if piece != tok[:len(piece)]:
            return False
        if len(piece) < len(tok):
            return None
        i += len(tok)
    return True


def held_tail(text: str, tag: str) -> int:
    """How many characters at the end of `text` may be the start of `tag`."""
    return max((k for k in range(1, len(tag)) if text.endswith(tag[:k])), default=0)


@dataclass
class Parsed:
    content: str
    calls: list[dict]
    errors: list[dict] = field(default_factory=list)


class StreamParser:
    """Feed it the reply as it comes (`feed(text)`), then `finish()`; both return OpenAI
    chat-completion deltas: {"content": …} or {"tool_calls": [{"index", "id", "type",
    "function": {"name", "arguments"}}]} then {"tool_calls": [{"index", "function":
    {"arguments": piece}}]}. With `parallel=False` the calls after the first are dropped (as
    OpenAI's parallel_tool_calls false). `errors` lists the calls that were not well formed."""

    def __init__(self, style: str, parallel: bool = True):
        if style not in STYLES:
            raise ValueError(f"unknown tool call style {style!r}; expected one of {STYLES}")
        self.style, self.parallel = style, parallel
        self.buf = ""
        self.mode = "start" if style != "hermes" else "text"
        self.scan: CallScanner | None = None
        self.region = ""  # the raw text of the call being read (for its error)
        self.in_list = False
        self.index = -1  # the index of the call whose name was sent last
        self.sent_name = False
        self.sent_args = 0
        self.calls_seen = 0
        self.hold_ws = ""  # whitespace before what may be a call
        self.after_call = False
        self.errors: list[dict] = []
        self.why = ""
        self.current: int | None = None  # the index of the call being read, once sent

    # ----------------------------------------------------------------- feeding

    def feed(self, text: str) -> list[dict]:
        self.buf += text
        out: list[dict] = []
        self.run(out, final=False)
        return merged(out)

    def finish(self) -> list[dict]:
        out: list[dict] = []
        self.run(out, final=True)
        if self.mode == "call":
            self.fail("the call's JSON ends before its closing brace")
        elif self.mode == "open":
            self.fail("a call was opened but nothing followed")
        elif self.mode == "after" and self.in_list:
            self.fail("the [TOOL_CALLS] list is not closed with ']'")
        elif self.mode == "dead":
            self.fail(self.why)
        if self.mode == "text" and self.hold_ws and not self.after_call:
            out.append({"content": self.hold_ws})
        self.hold_ws = ""
        self.mode = "done"
        return merged(out)

    def content(self, out: list[dict], text: str) -> None:
        if not text:
            return
        if self.after_call:  # whitespace after a call is layout, not content
            text = text.lstrip()
            if not text:
                return
            self.after_call = False
        stripped = text.rstrip()
        if stripped:
            out.append({"content": self.hold_ws + stripped})
            self.hold_ws = ""
        self.hold_ws += text[len(stripped):]

    def run(self, out: list[dict], final: bool) -> None:
        tag = OPEN[self.style]
        while self.buf:
            if self.mode == "start":  # a reply that is the call itself, marker dropped
                seen = bare_start(self.buf, self.style)
                if seen is None and not final:
                    return
                self.mode = "open" if seen else "text"
                if seen:
                    self.region = ""
                continue
            if self.mode == "text":
                at = self.buf.find(tag)
                if at < 0:
                    keep = 0 if final else held_tail(self.buf, tag)
                    self.content(out, self.buf[:len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                    return
                self.content(out, self.buf[:at])
                self.buf, self.region, self.mode = self.buf[at + len(tag):], tag, "open"
                continue
            if self.mode == "dead":
                self.dead(out, final)
                return
            if self.mode in ("open", "after"):
                if not self.between(out, final):
                    return
                continue
            if self.mode == "call":
                if not self.call(out, final):
                    return

    def between(self, out: list[dict], final: bool) -> bool:
        """Outside a call's object, inside the call region: what opens or closes calls.
        False when more text is needed."""
        stripped = self.buf.lstrip()
        self.region += self.buf[:len(self.buf) - len(stripped)]
        self.buf = stripped
        if not stripped:
            return False
        c = stripped[0]
        if self.mode == "open":
            if c == "[" and self.style == "mistral" and not self.in_list:
                self.in_list, self.region, self.buf = True, self.region + c, stripped[1:]
                return True
            if c == "{":
                self.scan, self.sent_name, self.sent_args = CallScanner(), False, 0
                self.current = None
                self.mode = "call"
                return True
            return self.die(f"expected a call's JSON object, found {c!r}")
        if self.style == "hermes":  # after a call's object: its closing tag
            if stripped.startswith(CLOSE) or (final and CLOSE.startswith(stripped)):
                self.buf, self.mode, self.region = stripped[len(CLOSE):], "text", ""
                self.after_call = True
                return True
            if CLOSE.startswith(stripped):
                return False
            return self.die(f"text after the call's JSON, before </tool_call>: {c!r}")
        if self.in_list:
            if c == ",":
                self.buf, self.mode, self.region = stripped[1:], "open", ""
                return True
            if c == "]":
                self.buf, self.mode, self.region, self.in_list = stripped[1:], "text", "", False
                self.after_call = True
                return True
            return self.die(f"expected ',' or ']' after a call, found {c!r}")
        if c == ";" and self.style == "llama3":
            self.buf, self.mode, self.region = stripped[1:], "open", ""
            return True
        self.mode, self.region, self.after_call = "text", "", True  # text after the call
        return True

    def call(self, out: list[dict], final: bool) -> bool:
        """Scan the call's JSON as far as the buffer goes; send its name and arguments."""
        s = self.scan
        text = self.buf
        if self.style == "hermes":  # a </tool_call> always ends the call, even mid-string
            at = text.find(CLOSE)
            text = text[:at] if at >= 0 else text[:len(text) - (0 if final else held_tail(text, CLOSE))]
        used = 0
        for c in text:
            s.push(c)
            used += 1
            if s.bad or s.done:
                break
        self.region += text[:used]
        self.buf = self.buf[used:]
        if s.bad:
            return self.die(s.bad)
        self.send(out)
        if s.done:
            got = s.result()
            if isinstance(got, str):  # closed, but not a call: reported, then on as after one
                self.fail(got)
            else:
                self.send(out, whole=got[1])
                self.sent_name = False
            self.mode = "after"
            return True
        if self.style == "hermes" and self.buf.startswith(CLOSE):
            return self.die("</tool_call> came before the call's JSON closed (a dropped '}'?)")
        return False

    def send(self, out: list[dict], whole: str | None = None) -> None:
        s = self.scan
        if not self.sent_name and s.name is not None and whole is None:
            self.calls_seen += 1
            if self.parallel or self.calls_seen == 1:
                self.index += 1
                self.sent_name, self.current = True, self.index
                out.append({"tool_calls": [{"index": self.index, "id": call_id(), "type": "function",
                                            "function": {"name": s.name, "arguments": ""}}]})
        if not self.sent_name:
            return
        args = s.args_so_far() if whole is None else whole
        if len(args) > self.sent_args:
            out.append({"tool_calls": [{"index": self.index,
                                        "function": {"arguments": args[self.sent_args:]}}]})
            self.sent_args = len(args)

    def die(self, why: str) -> bool:
        """The call being read is not well formed: skip to its end (for Hermes its closing tag,
        otherwise the rest of the reply), then report it."""
        self.why, self.mode = why, "dead"
        return True

    def dead(self, out: list[dict], final: bool) -> None:
        at = self.buf.find(CLOSE) if self.style == "hermes" else -1
        if at < 0:
            keep = held_tail(self.buf, CLOSE) if self.style == "hermes" and not final else 0
            self.region += self.buf[:len(self.buf) - keep]
            self.buf = self.buf[len(self.buf) - keep:]
            return
        self.region += self.buf[:at + len(CLOSE)]
        self.buf = self.buf[at + len(CLOSE):]
        self.fail(self.why)
        self.mode, self.after_call = "text", True
        self.run(out, final)

    def fail(self, why: str) -> None:
        """Report the call being read (`current`: its delta index, None if none was sent)."""
        if self.parallel or self.calls_seen <= 1 or self.current is not None:
            self.errors.append({"index": self.current, "error": why, "text": self.region})
        self.region, self.sent_name, self.current = "", False, None


def merged(deltas: list[dict]) -> list[dict]:
    """Neighbouring deltas of the same kind joined (fewer, larger chunks)."""
    out: list[dict] = []
    for d in deltas:
        last = out[-1] if out else None
        if last and "content" in d and "content" in last:
            last["content"] += d["content"]
        elif last and "tool_calls" in d and "tool_calls" in last and "id" not in d["tool_calls"][0] \
                and last["tool_calls"][0]["index"] == d["tool_calls"][0]["index"]:
            last["tool_calls"][0]["function"]["arguments"] += d["tool_calls"][0]["function"]["arguments"]
        else:
            out.append(d)
    return out


def assemble(deltas: list[dict], errors: list[dict]) -> Parsed:
    """The deltas of a whole reply as one message's content and well-formed calls."""
    content, calls = [], {}
    for d in deltas:
        if "content" in d:
            content.append(d["content"])
        for c in d.get("tool_calls", []):
            if "id" in c:
                calls[c["index"]] = {"id": c["id"], "type": "function",
                                     "function": {"name": c["function"]["name"], "arguments": ""}}
            calls[c["index"]]["function"]["arguments"] += c["function"]["arguments"]
    broken = {e["index"] for e in errors}
    return Parsed("".join(content), [c for i, c in sorted(calls.items()) if i not in broken], errors)


def parse(text: str, style: str, parallel: bool = True) -> Parsed:
    """A whole reply's content, well-formed calls and errors (the stream parser's verdict)."""
    p = StreamParser(style, parallel)
    deltas = p.feed(text) + p.finish()
    return assemble(deltas, p.errors)


def parse_tool_calls(text: str, style: str) -> tuple[str, list[dict]]:
    """(content, calls) of a whole reply; ToolCallError when a call is not well formed."""
    got = parse(text, style)
    if got.errors:
        raise ToolCallError(got.errors)
    return got.content, got.calls
