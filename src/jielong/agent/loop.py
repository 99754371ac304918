"""The agent loop: ask the model, run the tools it calls, give it their results, until it
answers without a call or the step limit is reached.

    trace = run_agent(chat, "台北到高雄 350 公里，時速 100 要幾小時？", tools, max_steps=6)
    trace.answer, trace.steps

`chat(messages, tool_specs) -> (content, tool_calls)` is the model: a local one
(`local_chat`, the tools rendered by its own chat template and the calls parsed out of the
text it writes) or an OpenAI-compatible server (jielong.agent.command). Messages and calls
are OpenAI's shapes: an assistant message carries `tool_calls` [{"id", "type": "function",
"function": {"name", "arguments": JSON text}}], and each result is a {"role": "tool",
"tool_call_id", "name", "content"} message after it (the ReAct loop of Yao et al. 2023 in
the function-calling form OpenAI's API and the Hermes/Qwen templates share).

A tool's error (unknown tool, bad arguments, an exception) is the tool's result, marked
as an error, so the model can correct itself. The step limit counts the model's turns: when
the last one allowed still calls tools, the loop ends without an answer, saying so.

A local model's template that ignores `tools` (jielong's default ChatML one before it
learned tools) gets them the Hermes way, as Qwen2.5's template writes them: listed in the
system message inside <tools></tools>, calls as <tool_call>{"name", "arguments"}</tool_call>,
results as a user turn of <tool_response></tool_response>.

The calls are parsed by jielong.infer.tools (Hermes, Llama 3.1 and Mistral formats, as the
template speaks); a call that is not well formed stays in the reply's text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from jielong.agent.toolbox import Tool
from jielong.infer.tools import parse, tool_style

Chat = Callable[[list[dict], list[dict]], tuple[str, list[dict]]]

HERMES_SYSTEM = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@dataclass
class Step:
    """One thing that happened: a tool call with its result, or the final answer."""
    step: int  # the model's turn it came from, from 1
    kind: str  # "call" or "answer"
    name: str = ""
    arguments: str = ""
    result: str = ""
    error: bool = False
    content: str = ""  # the model's text with the call, or the answer


@dataclass
class Trace:
    question: str
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None
    stopped: str | None = None  # why it ended without an answer
    messages: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "stopped": self.stopped,
                "steps": [asdict(s) for s in self.steps], "messages": self.messages}


def run_agent(chat: Chat, question: str, tools: list[Tool], max_steps: int = 8,
              system: str | None = None, history: list[dict] | None = None,
              on_step: Callable[[Step], None] | None = None) -> Trace:
    """Ask `question`, running the tools the model calls, for at most `max_steps` turns of
    the model; `on_step` sees each call (with its result) and the answer as they happen."""
    by_name = {t.name: t for t in tools}
    specs = [t.spec() for t in tools]
    messages = ([{"role": "system", "content": system}] if system else []) + list(history or [])
    messages.append({"role": "user", "content": question})
    trace = Trace(question, messages=messages)
    for step in range(1, max_steps + 1):
        content, calls = chat(messages, specs)
        if not calls:
            trace.answer = content
            messages.append({"role": "assistant", "content": content})
            done = Step(step, "answer", content=content)
            trace.steps.append(done)
            if on_step:
                on_step(done)
            return trace
        messages.append({"role": "assistant", "content": content or None, "tool_calls": calls})
        for call in calls:
            fn = call.get("function", {})
            name, arguments = fn.get("name", ""), fn.get("arguments", "")
            if name in by_name:
                result, error = by_name[name].call(arguments)
            else:
                result, error = (f"error: there is no tool {name!r}; the tools are "
                                 f"{', '.join(by_name) or 'none'}"), True
            messages.append({"role": "tool", "tool_call_id": call.get("id", ""), "name": name,
                             "content": result})
            s = Step(step, "call", name, arguments if isinstance(arguments, str) else
                     json.dumps(arguments, ensure_ascii=False), result, error, content)
            trace.steps.append(s)
            if on_step:
                on_step(s)
    trace.stopped = (f"stopped after {max_steps} steps without a final answer (the model "
                     f"was still calling tools); raise --max_steps to let it go on")
    return trace


# -- a local model -------------------------------------------------------------------------


def template_messages(messages: list[dict]) -> list[dict]:
    """The messages as chat templates read them: a call's arguments as an object (Qwen's
    and Llama's templates write them with |tojson), content never None."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments":
                                                  arguments_object(c["function"].get("arguments"))}}
                               for c in m["tool_calls"]]
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    return out


def arguments_object(arguments) -> dict:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def hermes_messages(messages: list[dict], specs: list[dict]) -> list[dict]:
    """The conversation with the tools written in the Hermes way, for a template that
    ignores `tools`: listed in the system message, calls and results as text."""
    listing = HERMES_SYSTEM.format(tools="\n".join(json.dumps(s, ensure_ascii=False) for s in specs))
    out: list[dict] = []
    if messages and messages[0]["role"] == "system":
        out.append({"role": "system", "content": messages[0]["content"] + "\n\n" + listing})
        messages = messages[1:]
    else:
        out.append({"role": "system", "content": listing})
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = "\n".join("<tool_call>\n" + json.dumps(
                {"name": c["function"]["name"], "arguments": arguments_object(c["function"]["arguments"])},
                ensure_ascii=False) + "\n</tool_call>" for c in m["tool_calls"])
            out.append({"role": "assistant", "content": ((m.get("content") or "") + "\n" + calls).strip()})
        elif m["role"] == "tool":
            text = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_response>"):
                out[-1]["content"] += "\n" + text  # parallel calls: one turn of results
            else:
                out.append({"role": "user", "content": text})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def render_with_tools(tok, messages: list[dict], specs: list[dict]) -> str:
    """The prompt text for the model's reply: the model's own template with `tools=`, or,
    when the template ignores them, the Hermes rendering (`hermes_messages`)."""
    if not specs:
        return tok.render_chat(template_messages(messages), add_generation_prompt=True)[0]
    probe = [{"role": "user", "content": "hi"}]
    if tok.render_chat(probe, True, tools=specs)[0] != tok.render_chat(probe, True)[0]:
        return tok.render_chat(template_messages(messages), add_generation_prompt=True,
                               tools=specs)[0]
    return tok.render_chat(hermes_messages(messages, specs), add_generation_prompt=True)[0]


def local_chat(tok, generate: Callable[[list[int]], str]) -> Chat:
    """A `chat` over a local model: `generate(prompt ids) -> text` writes the reply."""

    probe = [{"role": "user", "content": "hi"}]
    own = tok.render_chat(probe, True, tools=[{"type": "function", "function": {"name": "f"}}])[0] \
        != tok.render_chat(probe, True)[0]
    style = tool_style(tok) if own else "hermes"  # the Hermes rendering when it ignores tools

    def chat(messages: list[dict], specs: list[dict]) -> tuple[str, list[dict]]:
        text = generate(tok.encode(render_with_tools(tok, messages, specs)))
        if not specs:
            return text.strip(), []
        got = parse(text, style)
        # a call that is not well formed stays in the text the model and the trace see
        return (got.content + "".join("\n" + e["text"] for e in got.errors)).strip(), got.calls

    return chat
