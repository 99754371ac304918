"""Tools an agent can call: a Python function with its JSON schema, the built-in ones, and a
user's own from FILE.py:FUNCTION.

    tools = builtin_tools(["calculator", "date"]) + [user_tool("my_tools.py:weather")]
    tools[0].spec()          # {"type": "function", "function": {"name", "description", "parameters"}}
    tools[0].call('{"expression": "2+3"}')   # ("5", False)

A function becomes a tool as OpenAI's function-calling schema has it (and as transformers'
`get_json_schema` reads a function): its name; its docstring's first paragraph, the
description; its parameters from the signature's type hints (str → string, int → integer,
float → number, bool → boolean, list[X] → array of X, dict → object, Literal[...] → enum,
X | None → X, not required), each described by its line in the docstring's "Args:" section;
a parameter without a default is required.

A call never raises: arguments that are not a JSON object, a missing or unknown argument,
or an exception inside the tool come back as an error text, which the agent loop gives the
model as the tool's result so that it can try again.

Built-in tools: `calculator` (jielong.agent.calculator, never eval), `date` (today, the time
and the weekday here), `search` (the numbered passages of a RAG index that match a query;
needs --index), `python` (jielong.agent.sandbox: run code in a limited child process).
"""

from __future__ import annotations

import datetime
import importlib.util
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jielong.agent.calculator import CalcError, calculate
from jielong.agent.sandbox import Limits, run_python
from jielong.errors import UserError
from jielong.rag.answer import where
from jielong.rag.index import Index

BUILTIN = ("calculator", "date", "search", "python")
MAX_RESULT = 4000  # characters of a tool's result the model is given


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    fn: Callable

    def spec(self) -> dict:
        """The tool as OpenAI's `tools` list holds it (and chat templates read it)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def call(self, arguments: str | dict | None) -> tuple[str, bool]:
        """(result text, is it an error?) of a call with `arguments` (JSON text or a dict)."""
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                return f"error: the arguments are not JSON ({e.msg}); send a JSON object", True
        arguments = {} if arguments is None else arguments
        if not isinstance(arguments, dict):
            return "error: the arguments must be a JSON object", True
        props, required = self.parameters.get("properties", {}), self.parameters.get("required", [])
        unknown = [k for k in arguments if k not in props]
        missing = [k for k in required if k not in arguments]
        if unknown or missing:
            said = [f"unknown argument {', '.join(unknown)}" if unknown else "",
                    f"missing argument {', '.join(missing)}" if missing else ""]
            return (f"error: {'; '.join(s for s in said if s)}; {self.name} takes "
                    f"{', '.join(props) or 'no arguments'}"), True
        try:
            result = self.fn(**arguments)
        except Exception as e:  # noqa: BLE001 - any failure goes back to the model as text
            return f"error: {type(e).__name__}: {e}", True
        text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False,
                                                                  default=str)
        if len(text) > MAX_RESULT:
            text = text[:MAX_RESULT] + f"… ({len(text):,} characters, cut)"
        return text, False


# -- schemas from functions ----------------------------------------------------------------


def docstring_parts(fn: Callable) -> tuple[str, dict[str, str]]:
    """(description, {argument: its description}) from a Google-style docstring."""
    doc = inspect.getdoc(fn) or ""
    head, _, _ = doc.partition("\nArgs:")
    summary = " ".join(head.split("\n\n")[0].split())
    helps: dict[str, str] = {}
    m = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)+)", doc, re.M)
    if m:
        name, indent = None, None
        for line in m.group(1).splitlines():
            if not line.strip():
                continue
            hit = re.match(r"(\s+)(\w+)(?:\s*\(.*?\))?:\s*(.*)", line)
            if hit and (indent is None or len(hit.group(1)) <= indent):
                name, indent = hit.group(2), len(hit.group(1))
                helps[name] = hit.group(3).strip()
            elif name:
                helps[name] = (helps[name] + " " + line.strip()).strip()
    return summary, helps


def json_type(tp, where_: str) -> dict:
    """The JSON schema of a Python type hint."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or isinstance(tp, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return json_type(inner[0], where_)
        return {"anyOf": [json_type(a, where_) for a in inner]}
    if origin is typing.Literal:
        return {"type": json_type(type(args[0]), where_)["type"], "enum": list(args)}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is list or origin is list:
        return {"type": "array", **({"items": json_type(args[0], where_)} if args else {})}
    if tp is dict or origin is dict:
        return {"type": "object"}
    if tp is inspect.Parameter.empty:
        raise UserError(f"{where_}: has no type hint; write one (e.g. `city: str`), from which "
                        "the model learns what to send")
    raise UserError(f"{where_}: the type {tp!r} has no JSON schema here; use str, int, float, "
                    "bool, list[...], dict or Literal[...]")


def tool_from_function(fn: Callable, name: str | None = None, origin: str = "") -> Tool:
    """A tool from a plain function: its schema from the signature and the docstring."""
    name = name or fn.__name__
    origin = origin or name
    description, helps = docstring_parts(fn)
    if not description:
        raise UserError(f"{origin}: the function has no docstring; its first line is what the "
                        "model reads to decide when to call it")
    hints = typing.get_type_hints(fn)
    props, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        schema = json_type(hints.get(p.name, p.annotation), f"{origin}: argument {p.name!r}")
        if p.name in helps:
            schema["description"] = helps[p.name]
        props[p.name] = schema
        if p.default is p.empty:
            required.append(p.name)
    params = {"type": "object", "properties": props, "required": required}
    return Tool(name, description, params, fn)


def user_tool(spec: str) -> Tool:
    """The function FUNCTION of the Python file FILE.py, given as "FILE.py:FUNCTION"."""
    path, _, fname = spec.rpartition(":")
    if not path or not fname.isidentifier():
        raise UserError(f"--tool {spec!r}: write FILE.py:FUNCTION, e.g. my_tools.py:weather")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--tool {spec!r}: {path} is not a file")
    module_spec = importlib.util.spec_from_file_location(f"jielong_user_tools_{p.stem}", p)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file: say where, not a traceback
        raise UserError(f"--tool {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, fname, None)
    if not callable(fn):
        have = [n for n, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == module.__name__]
        raise UserError(f"--tool {spec!r}: {path} has no function {fname!r}"
                        + (f"; it has {', '.join(have)}" if have else ""))
    line = inspect.getsourcelines(fn)[1] if inspect.isfunction(fn) else None
    return tool_from_function(fn, origin=f"{path}:{line}" if line else path)


# -- the built-in tools --------------------------------------------------------------------


def calculator(expression: str) -> str:
    """Compute an arithmetic expression exactly, e.g. (3 + 4) * 2 ** 10 or sqrt(2) / 2.

    Args:
        expression: Numbers, + - * / // % ** and parentheses; sqrt, log, exp, sin, cos,
            tan, abs, round, floor, ceil, min, max, factorial; pi and e.
    """
    try:
        return calculate(expression)
    except CalcError as e:
        raise ValueError(str(e)) from None


def date() -> str:
    """Today's date, the time and the weekday here (with the time zone)."""
    now = datetime.datetime.now().astimezone()
    return now.strftime("%Y-%m-%d (%A) %H:%M:%S %Z, UTC%z")


def search_tool(index: Index, k: int = 4) -> Tool:
    """The `search` tool over `index`: BM25 (no embedding model to load), the best `k`."""

    def search(query: str) -> str:
        """Search the user's documents; the matching passages come back numbered, with where
        each is from.

        Args:
            query: What to look for, in words the documents would use.
        """
        hits = index.search(query, k)
        if not hits:
            return "no passage matches"
        return "\n\n".join(f"[{n}] ({where(h)})\n{h.chunk.text}" for n, h in enumerate(hits, 1))

    return tool_from_function(search)


def python_tool(limits: Limits | None = None) -> Tool:
    """The `python` tool: the code runs in the sandbox under `limits`."""

    def python(code: str) -> str:
        """Run a Python program in a sandbox (no network, a scratch folder, time and memory
        limits) and see what it prints; print what you want to know.

        Args:
            code: The whole program; only what it prints comes back.
        """
        return run_python(code, limits).report()

    return tool_from_function(python)


def builtin_tools(names: list[str], index: str | None = None,
                  limits: Limits | None = None) -> list[Tool]:
    """The built-in tools `names` (see BUILTIN); `search` needs the RAG `index` folder."""
    tools = []
    for name in names:
        if name == "calculator":
            tools.append(tool_from_function(calculator))
        elif name == "date":
            tools.append(tool_from_function(date))
        elif name == "search":
            if not index:
                raise UserError("--tools search: needs --index DIR (a folder `jielong rag index` "
                                "made), or leave search out")
            tools.append(search_tool(Index.load(index)))
        elif name == "python":
            tools.append(python_tool(limits))
        else:
            raise UserError(f"--tools {name!r}: not a built-in tool; choose from "
                            f"{', '.join(BUILTIN)} (your own: --tool FILE.py:FUNCTION)")
    return tools
