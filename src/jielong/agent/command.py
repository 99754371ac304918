"""`jielong agent`: a model answers a question by calling tools in a loop, each step shown.

Run as:
    jielong agent --help

For example:
    jielong agent "1234 × 5678 再加上 99 是多少？" --model Qwen/Qwen2.5-1.5B-Instruct
    jielong agent "What is in my notes about refunds?" --model runs/demo/model --tools search --index runs/index
    jielong agent "今天星期幾？" --url http://localhost:8000/v1 --tools date
    jielong agent "Weather in Tainan?" --model DIR --tools --tool my_tools.py:weather --json

The model is a local one (`--model`: a folder or hub id; the tools go through its own chat
template, the calls are parsed from what it writes) or any OpenAI-compatible server
(`--url`: tools sent as `tools`, calls read from the reply's `tool_calls`; `--model` then
names the served model, by default the first the server lists; the key from
$OPENAI_API_KEY). The loop is jielong.agent.loop's; the tools jielong.agent.toolbox's:
`--tools` picks built-in ones (calculator, date, search with --index, python: the sandbox
of jielong.agent.sandbox), `--tool FILE.py:FUNCTION` adds a function of yours, its
signature and docstring its schema.

The trace is printed as it happens (in colour on a terminal): each call with its
arguments, its result (cut to a few lines), errors in red, then the answer. `--json` prints
the whole trace instead, as one JSON object (question, answer, stopped, steps, messages).
A step limit (`--max_steps`) ends a model that keeps calling tools, with a message and exit
code 1; a small model that never calls a tool simply answers.
"""

from __future__ import annotations

import json
import os
import sys

from jielong.agent.loop import Chat, Step, Trace, local_chat, run_agent
from jielong.agent.sandbox import Limits, namespaces
from jielong.agent.toolbox import Tool, builtin_tools, user_tool
from jielong.errors import UserError
from jielong.hub import open_model, stop_ids
from jielong.infer.chat import Session
from jielong.infer.context import reply_budget
from jielong.infer.sampling import SamplingParams
from jielong.runtime import decoding_memory, pick_device
from jielong.tokenizer import use_color


def trace_json(trace: Trace) -> str:
    return json.dumps(trace.to_dict(), ensure_ascii=False, indent=2)


SHOWN_LINES, SHOWN_CHARS = 6, 400  # of a tool's result in the terminal trace


def model_chat(model: str, temperature: float, max_tokens: int | None, context: int,
               seed: int | None, device: str, dtype: str) -> Chat:
    """The chat function of a local model (greedy when temperature is 0)."""
    with decoding_memory():
        net, tok, gen = open_model(model, device=pick_device(device), dtype=dtype, pack=1)
    if not tok.config.get("chat_template"):
        raise UserError(f"{model}: the tokenizer has no chat template, so it cannot take tools "
                        "or questions; use a chat model")
    context = min(context, net.config.max_position_embeddings)
    s = SamplingParams(max_tokens=max_tokens or reply_budget(context), temperature=temperature,
                       seed=seed)
    s.validate()
    stops = stop_ids(tok, gen, net.config.eos_token_id)
    session = Session(net, context)

    def generate(prompt: list[int]) -> str:
        if len(prompt) >= context:
            raise UserError(f"the conversation, with the tools' descriptions, is {len(prompt)} "
                            f"tokens, more than the {context}-token context; give fewer tools "
                            "(--tools …), fewer --max_steps, or a model with a longer context")
        return tok.decode(list(session.reply(prompt, s, stops)), skip_special_tokens=True)

    return local_chat(tok, generate)


def server_chat(url: str, model: str | None, temperature: float, max_tokens: int | None) -> Chat:
    """The chat function of an OpenAI-compatible server at `url` (…/v1)."""
    try:
        import openai  # the `agent` extra: only --url needs it
    except ImportError:
        raise UserError("--url needs the openai package: pip install 'jielong[agent]'") from None
    client = openai.OpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY") or "none",
                           max_retries=0)
    try:
        name = model or client.models.list().data[0].id
    except (openai.APIError, IndexError) as e:
        raise UserError(f"--url {url}: could not list its models ({type(e).__name__}: {e}); "
                        "is the server up? name the model with --model") from None

    def chat(messages: list[dict], specs: list[dict]) -> tuple[str, list[dict]]:
        extra = {"tools": specs} if specs else {}
        try:
            r = client.chat.completions.create(model=name, messages=messages, temperature=temperature,
                                               max_tokens=max_tokens, **extra)
        except openai.APIError as e:
            raise UserError(f"--url {url}: the server refused the request: {e}") from None
        m = r.choices[0].message
        calls = [{"id": c.id, "type": "function",
                  "function": {"name": c.function.name, "arguments": c.function.arguments}}
                 for c in m.tool_calls or []]
        return (m.content or "").strip(), calls

    return chat


def printer(color: bool):
    """The terminal trace: `on_step` for run_agent."""
    paint = (lambda code, t: f"\033[{code}m{t}\033[0m") if color else (lambda code, t: t)

    def show(s: Step) -> None:
        if s.kind == "answer":
            print(paint("1", "answer: ") + s.content, flush=True)
            return
        if s.content:
            print(paint("2", f"({s.content})"))
        print(paint("36", f"step {s.step} · {s.name}") + paint("2", f"({s.arguments})"))
        lines = s.result.splitlines() or [""]
        shown = "\n   ".join(lines[:SHOWN_LINES])
        if len(shown) > SHOWN_CHARS:
            shown = shown[:SHOWN_CHARS] + "…"
        if len(lines) > SHOWN_LINES:
            shown += paint("2", f"\n   … ({len(lines) - SHOWN_LINES} more lines)")
        print(" → " + (paint("31", shown) if s.error else shown), flush=True)

    return show


def agent_cmd(
    question: str,
    model: str | None = None,
    url: str | None = None,
    tools: list[str] | None = None,
    tool: list[str] | None = None,
    index: str | None = None,
    max_steps: int = 8,
    system: str | None = None,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    context: int = 4096,
    seed: int | None = None,
    timeout: float = 10.0,
    json: bool = False,
    device: str = "auto",
    dtype: str = "auto",
) -> Trace:
    """Answer a question with a model that calls tools in a loop; each step is shown.

    Args:
        question: The question or task.
        model: A local model (folder or hub id); with --url, the served model's name.
        url: An OpenAI-compatible server (e.g. http://localhost:8000/v1) instead of a local model.
        tools: Built-in tools: calculator, date, search (needs --index), python (a sandbox).
            --tools alone: none of them (default: calculator and date, and search with --index).
        tool: Your own tools, FILE.py:FUNCTION (repeat or list several); the signature and
            docstring become the schema.
        index: A RAG index folder (`jielong rag index`) for the search tool.
        max_steps: Most turns of the model; one still calling tools then ends the run.
        system: A system prompt.
        temperature: Sampling temperature; 0 is greedy (the same answer every time).
        max_tokens: Most tokens of one turn of the model (default: a quarter of the context).
        context: Most tokens the conversation may hold (a local model).
        seed: Random seed for sampling.
        timeout: Wall-clock seconds a python tool run may take (CPU: half of it).
        json: Print the whole trace as JSON (and nothing else).
        device: auto, cpu, cuda, mps (a local model).
        dtype: auto, float32, bfloat16, float16 (a local model).
    """
    if model is None and url is None:
        raise UserError("name a model: --model DIR (or a hub id), or --url URL of an "
                        "OpenAI-compatible server")
    if max_steps < 1:
        raise UserError(f"--max_steps {max_steps}: at least 1 (one turn of the model)")
    if timeout <= 0:
        raise UserError(f"--timeout {timeout}: must be more than 0 seconds")
    names = (["calculator", "date"] + (["search"] if index else [])) if tools is None else tools
    names = [n for part in names for n in part.split(",") if n]
    limits = Limits(timeout=timeout, cpu=max(1, int(timeout / 2)))
    toolset: list[Tool] = builtin_tools(names, index, limits) + [user_tool(t) for t in tool or []]
    seen = [t.name for t in toolset]
    if len(set(seen)) < len(seen):
        raise UserError(f"two tools share a name ({', '.join(seen)}); rename one function")
    chat = server_chat(url, model, temperature, max_tokens) if url else \
        model_chat(model, temperature, max_tokens, context, seed, device, dtype)
    color = use_color() and not json
    if not json:
        dim = (lambda t: f"\033[2m{t}\033[0m") if color else (lambda t: t)
        net = "" if "python" not in names else (
            " · sandbox: network namespace" if namespaces() else
            " · sandbox: socket guard only (not a security boundary)")
        print(dim(f"agent · {url or model} · tools: {', '.join(seen) or 'none'}{net}"), flush=True)
    trace = run_agent(chat, question, toolset, max_steps, system,
                      on_step=None if json else printer(color))
    if json:
        print(trace_json(trace))
    elif trace.stopped:
        print(f"\033[33m{trace.stopped}\033[0m" if color else trace.stopped, file=sys.stderr)
    if trace.stopped:
        raise SystemExit(1)
    return trace

