"""Constrained decoding: a request's output held to a grammar (any JSON object, a JSON
schema, a tool call) by masking, before each token is sampled, every token that could not
continue a valid output.

    g = json_schema({"type": "object", "properties": {"city": {"type": "string"}}})
    done = engine.complete(prompt, SamplingParams(max_tokens=64, grammar=g))  # always parses
    g = response_format({"type": "json_object"})   # OpenAI's response_format; None for text
    g = tool_call_grammar(tools, "hermes", "required")   # <tool_call>\\n{…}\\n</tool_call>

A `Grammar` is only the description (validated when it is made: a bad schema is a UserError
naming what is wrong); each request gets its own `Matcher` (`grammar.matcher(tok, V)`),
which says which of the V tokens may come next (`allowed()`) and follows the tokens
sampled (`advance`). The engine (jielong.infer.engine) and `generate_ids`
(jielong.infer.generate) mask only the rows of requests that have one, so the others in the
batch sample exactly as they would alone.

The engine underneath is llguidance (Microsoft's, the one behind OpenAI's structured outputs,
llama.cpp's --llguidance and one of vLLM's and SGLang's backends), chosen by measuring it
against xgrammar and outlines-core on this project's byte-level BPE vocabularies
(bench/bench_constrain.py, bench/RESULTS.md): it installs alone (no torch or triton), builds a
schema's grammar lazily in milliseconds, handles any JSON object (outlines-core's regexes
cannot nest arbitrarily), takes Lark grammars with JSON schemas inside them (tool calls),
and its ~30-50 µs per-token mask is a small part of a CPU decoding step. It is imported
only when a grammar is used (`pip install 'jielong[structured]'`).

JSON is written with the separators of Python's json.dumps and OpenAI's replies (", " and
": ") and no other whitespace: free whitespace lets a model pad a reply with blank lines for
ever (a failure vLLM's and xgrammar's users report).
"""

from __future__ import annotations

import json
import weakref

import numpy as np
import torch

from jielong.errors import UserError

# Compact JSON, as json.dumps writes it, applied to every schema (llguidance's "x-guidance").
JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
TOOL_STYLES = ("hermes", "llama3", "mistral")
INSTALL = "pip install llguidance (or jielong[structured])"

_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Tokenizer -> {V: LLTokenizer}


def llguidance():
    """The llguidance module, or a UserError saying how to install it."""
    try:
        import llguidance as llg
    except ImportError:
        raise UserError(f"structured output needs the llguidance package; {INSTALL}") from None
    return llg


class Grammar:
    """A validated llguidance grammar (its serialized form in `.text`); `what` names it in
    messages ("response_format json_schema 'person'")."""

    def __init__(self, text: str, what: str = "grammar"):
        llg = llguidance()
        bad, problems = llg.LLMatcher.validate_grammar_with_warnings(text)
        if bad:
            raise UserError(f"{what}: {' '.join(line.strip() for line in problems[0].splitlines())}")
        self.text, self.what = text, what

    def matcher(self, tok, vocab_size: int | None = None, stop_ids: set[int] = frozenset()) -> Matcher:
        """A fresh matcher for one request over `tok`'s tokens (`vocab_size`: the model's
        logits width when it pads the vocabulary). `stop_ids` may end the output where the
        grammar is complete."""
        return Matcher(self, ll_tokenizer(tok, vocab_size, stop_ids), vocab_size or tok.vocab_size)

    def __repr__(self) -> str:
        return f"Grammar({self.what})"


def ll_tokenizer(tok, vocab_size: int | None, stop_ids: set[int]):
    """llguidance's view of `tok` (built once per tokenizer, width and stop ids: ~0.1 s for a
    32k vocabulary): it reads the tokenizer.json, so byte-level and SentencePiece
    vocabularies both work."""
    llg = llguidance()
    stops = tuple(sorted(set(stop_ids) | tok.end_ids | {tok.eos_id}))
    key = (vocab_size or tok.vocab_size, stops)
    cache = _tokenizers.setdefault(tok, {})
    if key not in cache:
        cache[key] = llg.LLTokenizer(tok.backend.to_str(), n_vocab=key[0], eos_token=list(stops))
    return cache[key]


class Matcher:
    """One request's position in its grammar."""

    def __init__(self, grammar: Grammar, lltok, vocab_size: int):
        llg = llguidance()
        self.m = llg.LLMatcher(lltok, grammar.text, log_level=0)
        if self.m.is_error():
            raise UserError(f"{grammar.what}: {self.m.get_error()}")
        self.vocab_size, self.stops = vocab_size, [t for t in lltok.eos_tokens if t < vocab_size]
        self.bitmask = torch.full((-(-vocab_size // 32),), -1, dtype=torch.int32)

    def words(self) -> torch.Tensor:
        """The allowed tokens as llguidance writes them: bit j of word i is token 32·i + j
        (only the stop tokens once the matcher has failed, so the request ends, not the batch)."""
        self.m.unsafe_compute_mask_ptr(self.bitmask.data_ptr(), self.bitmask.numel() * 4)
        if self.m.is_error() or not bool(self.bitmask.any()):
            self.bitmask.zero_()
            for t in self.stops:
                self.bitmask[t // 32] |= 1 << (t % 32)
        return self.bitmask

    def allowed(self) -> torch.Tensor:
        """(V,) bool: the tokens that may come next (the stop tokens where the output may end)."""
        return unpack(self.words()[None], self.vocab_size)[0]

    def advance(self, token: int) -> None:
        """Follow the sampled `token`; one the grammar refuses leaves the matcher failed
        (`error`), which ends the request."""
        self.m.consume_token(token)

    @property
    def stopped(self) -> bool:
        """Nothing but a stop token can follow: the output is complete (or the grammar failed)."""
        return self.m.is_stopped() or self.m.is_error()

    @property
    def error(self) -> str:
        return self.m.get_error() if self.m.is_error() else ""


def unpack(words: torch.Tensor, width: int) -> torch.Tensor:
    """(R, W) int32 bitmasks → (R, width) bool (tokens past 32·W: False). numpy's unpackbits,
    little-endian: bit j of word i is token 32·i + j on the x86 and ARM hosts torch runs on."""
    bits = np.unpackbits(words.numpy().view(np.uint8), axis=1, bitorder="little")
    ok = torch.from_numpy(bits[:, :width]).bool()
    if ok.shape[1] < width:
        ok = torch.cat([ok, ok.new_zeros(len(words), width - ok.shape[1])], 1)
    return ok


def mask_rows(logits: torch.Tensor, matchers: list[Matcher | None]) -> torch.Tensor:
    """`logits` (B, V) with what each row's matcher forbids set to -inf (rows without one
    untouched; the input itself is left as it was). The rows' masks are unpacked together:
    per row and token, Python's share is what costs, not llguidance's."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return logits
    W = max(matchers[i].bitmask.numel() for i in rows)
    words = torch.zeros((len(rows), W), dtype=torch.int32)
    for j, i in enumerate(rows):
        w = matchers[i].words()
        words[j, :len(w)] = w
    ok = unpack(words, logits.shape[1])
    if len(rows) < len(matchers):
        every = torch.ones(logits.shape, dtype=torch.bool)
        every[rows] = ok
        ok = every
    return logits.masked_fill(~ok.to(logits.device), float("-inf"))


# ----------------------------------------------------------------------------- grammars


def json_schema(schema: dict, strict: bool = True, what: str = "json_schema") -> Grammar:
    """Output that validates against the JSON `schema`. strict: a keyword llguidance does not
    enforce (a `format` it does not know) is an error; otherwise it is ignored."""
    if not isinstance(schema, dict):
        raise UserError(f"{what}: a JSON schema is an object, not {type(schema).__name__}")
    llg = llguidance()
    options = {**JSON_FORMAT, "lenient": not strict}
    try:
        text = llg.LLMatcher.grammar_from_json_schema(schema, overrides=options)
    except ValueError as e:
        raise UserError(f"{what}: {e}") from None
    return Grammar(text, what)


def json_object() -> Grammar:
    """Any JSON object (OpenAI's response_format json_object)."""
    return json_schema({"type": "object"}, what="response_format json_object")


def lark(text: str, what: str = "lark grammar") -> Grammar:
    """A grammar in llguidance's Lark syntax (`%json {schema}` embeds a JSON schema)."""
    return Grammar(llguidance().LLMatcher.grammar_from_lark(text), what)


def response_format(rf: dict | None) -> Grammar | None:
    """The grammar for OpenAI's `response_format` ({"type": "text"} or none: None;
    {"type": "json_object"}; {"type": "json_schema", "json_schema": {"name", "schema",
    "strict"}}); a UserError saying what is wrong with anything else."""
    if rf is None:
        return None
    kind = rf.get("type", "text") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object()
    if kind != "json_schema":
        raise UserError(f"response_format type {kind!r}: use \"text\", \"json_object\" or "
                        "\"json_schema\"")
    spec = rf.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise UserError("response_format json_schema: give {\"json_schema\": {\"name\": …, "
                        "\"schema\": {…}, \"strict\": true}}")
    name = spec.get("name", "")
    return json_schema(spec["schema"], bool(spec.get("strict", False)),
                       f"response_format json_schema {name!r}")


def tool_call_grammar(tools: list[dict], style: str = "hermes",
                      tool_choice: str | dict = "required", parallel: bool = True) -> Grammar | None:
    """Output that is only tool calls, each naming one of `tools` (OpenAI's shape: {"type":
    "function", "function": {"name", "parameters"}}) with arguments held to its parameters
    schema. tool_choice: "required" (any of them), {"type": "function", "function": {"name":
    N}} (that one), "auto" or "none": None (no grammar: the model may answer in text).
    parallel: one call or more; else exactly one.

    style, as the tools' chat templates write calls:
        hermes:  <tool_call>\\n{"name": "f", "arguments": {…}}\\n</tool_call> (one per call, a
                 newline between; Qwen2.5/Qwen3, jielong's template)
        llama3:  {"name": "f", "parameters": {…}} (Llama 3.1's JSON tool calling; "; " between)
        mistral: [TOOL_CALLS][{"name": "f", "arguments": {…}}, …] ([TOOL_CALLS] as text: the
                 special token itself is not in the grammar)"""
    if tool_choice in ("auto", "none", None):
        return None
    if style not in TOOL_STYLES:
        raise UserError(f"tool call style {style!r}: use one of {', '.join(TOOL_STYLES)}")
    functions = [t.get("function", {}) for t in tools or [] if isinstance(t, dict)]
    if isinstance(tool_choice, dict):
        want = (tool_choice.get("function") or {}).get("name")
        functions = [f for f in functions if f.get("name") == want]
        if not functions:
            raise UserError(f"tool_choice names {want!r}, which is not among the tools")
    elif tool_choice != "required":
        raise UserError(f"tool_choice {tool_choice!r}: use \"auto\", \"none\", \"required\" or "
                        "{\"type\": \"function\", \"function\": {\"name\": …}}")
    if not functions:
        raise UserError("tool_choice needs at least one tool in `tools`")
    key = "parameters" if style == "llama3" else "arguments"
    calls = []
    for f in functions:
        if not isinstance(f.get("name"), str) or not f["name"]:
            raise UserError("every tool needs a function name")
        params = f.get("parameters") or {"type": "object"}
        calls.append({"type": "object", "properties": {"name": {"const": f["name"]}, key: params},
                      "required": ["name", key], "additionalProperties": False})
    call = {"x-guidance": JSON_FORMAT, **(calls[0] if len(calls) == 1 else {"anyOf": calls})}
    one = "%json " + json.dumps(call, ensure_ascii=False)
    sep = {"hermes": "\\n", "llama3": "; ", "mistral": ", "}[style]
    calls_rule = f'json ("{sep}" json)*' if parallel else "json"
    if style == "hermes":
        calls_rule = calls_rule.replace("json", "call")
        rules = f'start: {calls_rule}\ncall: "<tool_call>\\n" json "\\n</tool_call>"\n'
    elif style == "llama3":
        rules = f"start: {calls_rule}\n"
    else:
        rules = f'start: "[TOOL_CALLS][" {calls_rule} "]"\n'
    return lark(rules + f"json: {one}\n", f"tool calls ({style}, tool_choice {tool_choice!r})")
