"""Tools in the web chat: a conversation whose settings have "tools": true lets the model
call the safe built-in tools while it writes a reply, the loop of `jielong agent`
(jielong.agent.loop) run by the server.

    tools = chat_tools(served, settings, library)        # None when the setting is off
    loop = ToolLoop(served, tools, messages, params, adapter)
    loop.prompt()                                        # the branch with the tools rendered
    records = await loop.call(content, calls)            # run them; results join the messages

The tools are only the ones that touch nothing of the server's: `calculator` (a safe
evaluator, never eval), `date`, and `search` over the conversation's document collection
when the server has one (`jielong serve --rag`; none when the settings say "rag": false).
Never the Python sandbox (`jielong agent --tools python`): whoever runs the agent chooses to
run code on their own machine, a web page's visitor does not get to run it on the server.

A reply with tools is generated in steps (jielong.serve.chat_routes.Reply): the prompt is the
branch rendered with the tools by the model's own chat template, or the Hermes way when the
template ignores them (jielong.agent.loop.render_with_tools); the calls are read out of what
the model writes by jielong.infer.tools' stream parser, in the format the template speaks
(Hermes <tool_call> blocks, Llama 3.1 JSON, Mistral [TOOL_CALLS]; Hermes for the Hermes
rendering), run, and their results put back into the conversation as `tool` messages, and
the model writes again, until it answers without a call or MAX_STEPS turns of the model
have been spent. The page sees the text outside the calls as it is written (`StepText`:
never a call's tags or JSON), each call with its result as an event `tool`, and the reply
keeps them (the store's `tools`). A call that is not well formed is not run; its text goes
back to the model with the step's, as the agent does.
"""

from __future__ import annotations

import dataclasses
import json

import jinja2
from starlette.concurrency import run_in_threadpool

from jielong.agent.loop import render_with_tools
from jielong.agent.toolbox import Tool, builtin_tools, search_tool
from jielong.errors import UserError
from jielong.infer.sampling import SamplingParams
from jielong.infer.tools import StreamParser, assemble, call_id, tool_style
from jielong.serve.documents import Library
from jielong.serve.errors import ApiError
from jielong.serve.served import Served

SAFE = ("calculator", "date")  # and search, over the conversation's documents
MAX_STEPS = 4  # turns of the model in one reply


def available(s: Served, library: Library | None) -> list[str]:
    """The tools this server's web chat offers (none with an upstream engine)."""
    if s.upstream:
        return []
    return [*SAFE, *(["search"] if library is not None and library.collections else [])]


def chat_tools(s: Served, settings: dict, library: Library | None) -> list[Tool] | None:
    """The tools a reply may call under the conversation's `settings` (None: the setting
    is off); a 400 when the server cannot run them."""
    if settings.get("tools") is not True:
        return None
    if s.upstream:
        raise ApiError(400, "settings.tools: the web chat runs tools with a local model, and "
                            "this server passes the chat to an upstream engine; turn tools off",
                       param="settings")
    tools = builtin_tools(list(SAFE))
    collection = library.pick(settings.get("rag"), "settings.rag") if library else None
    if collection is not None and collection.index is not None:
        tools.append(search_tool(collection.index))
    return tools


def tool_prompt(s: Served, messages: list[dict], tools: list[Tool]) -> list[int]:
    """The token ids of `messages` with `tools`, ready for the reply; a conversation the
    template refuses is a 400 (as Served.chat_prompt answers it)."""
    try:
        return s.tok.encode(render_with_tools(s.tok, messages, [t.spec() for t in tools]))
    except UserError as e:
        raise ApiError(400, f"content: {e}", param="content") from None
    except jinja2.TemplateError as e:
        raise ApiError(400, f"content: the model's chat template cannot render this "
                            f"conversation with tools ({type(e).__name__}: {e})",
                       param="content") from None


class ToolLoop:
    """The tool calls of one reply: the conversation so far (`messages`, the branch as the
    first step's prompt read it), growing by each step's calls and their results."""

    def __init__(self, s: Served, tools: list[Tool], messages: list[dict],
                 params: SamplingParams, adapter: str | None, max_steps: int = MAX_STEPS):
        self.s, self.tools, self.messages = s, tools, list(messages)
        self.by_name = {t.name: t for t in tools}
        self.params, self.adapter, self.max_steps = params, adapter, max_steps
        self.step = 1
        self.records: list[dict] = []  # every call with its result, as the store keeps them
        tok, probe = s.tok, [{"role": "user", "content": "hi"}]
        own = tok.render_chat(probe, True, tools=[t.spec() for t in tools])[0] != \
            tok.render_chat(probe, True)[0]
        self.style = tool_style(tok) if own else "hermes"  # the Hermes rendering otherwise

    def prompt(self) -> list[int]:
        return tool_prompt(self.s, self.messages, self.tools)

    async def call(self, content: str, calls: list[dict]) -> list[dict]:
        """Run the calls the model made in this step (with its text `content`); their
        records, also kept in `records`. A tool's error is its result, as in the agent."""
        self.messages.append({"role": "assistant", "content": content or None,
                              "tool_calls": calls})
        out = []
        for c in calls:
            fn, cid = c.get("function", {}), c.get("id") or call_id()
            name, arguments = fn.get("name", ""), fn.get("arguments", "")
            if name in self.by_name:
                result, error = await run_in_threadpool(self.by_name[name].call, arguments)
            else:
                result, error = (f"error: there is no tool {name!r}; the tools are "
                                 f"{', '.join(self.by_name)}"), True
            self.messages.append({"role": "tool", "tool_call_id": cid,
                                  "name": name, "content": result})
            out.append({"id": cid, "name": name,
                        "arguments": arguments if isinstance(arguments, str) else
                        json.dumps(arguments, ensure_ascii=False),
                        "result": result, "error": error, "step": self.step})
        self.records += out
        self.step += 1
        return out

    def next_job(self) -> tuple | None:
        """The engine job of the next step: (prompt, params, adapter), its max_tokens cut to
        the room the context leaves; None when no room is left."""
        prompt = self.prompt()
        room = self.s.engine.context - len(prompt)
        if room < 1:
            return None
        given = self.params.max_tokens
        params = dataclasses.replace(self.params, max_tokens=min(given, room) if given else room)
        return prompt, params, self.adapter


class StepText:
    """One step's text through jielong.infer.tools.StreamParser: `feed` and `finish` give
    what the page may see (never a call's tags or JSON), `result` the step's content and
    calls once it has ended."""

    def __init__(self, style: str):
        self.parser, self.deltas = StreamParser(style), []

    def shown(self, deltas: list[dict]) -> str:
        self.deltas += deltas
        return "".join(d["content"] for d in deltas if "content" in d)

    def feed(self, text: str) -> str:
        return self.shown(self.parser.feed(text))

    def finish(self) -> str:
        return self.shown(self.parser.finish())

    def result(self) -> tuple[str, list[dict]]:
        """(the text the model reads back, with any call that was not well formed; the
        well-formed calls)."""
        got = assemble(self.deltas, self.parser.errors)
        return (got.content + "".join("\n" + e["text"] for e in got.errors)).strip(), got.calls
