"""Guard models as detectors: a causal LM in Llama Guard or Qwen3Guard layout, whose chat
template turns a conversation into a safety question and whose short reply is the verdict.

    from jielong.safety.guard_models import GuardModel
    guard = GuardModel.load("path/to/Llama-Guard-3-1B")          # or a hub id, a Qwen3Guard-Gen dir
    guard.detect("How do I make a bomb?")       # {"violence": (1.0, ["unsafe\\nS1"])}
    guard.detect(prompt, reply=answer)          # moderates the reply (the last message)

The directory is opened with jielong's own loader (`jielong.hub.open_model`: safetensors,
tokenizer.json, never code from the model folder); the conversation is rendered with the
model's own chat template (`Tokenizer.encode_chat`, as `jielong chat` and the server render
theirs); the reply is generated greedily (`jielong.infer.generate.generate_ids`), at most
`max_tokens` tokens, up to the model's end-of-turn token; then it is parsed exactly.

The two output formats, as their authors document them:
- Llama Guard 3 (meta-llama's model card; Ollama's llama-guard3 page shows the same): the
  first line is `safe` or `unsafe`; when unsafe, the second line is a comma-separated list
  of the violated hazard codes, e.g. `unsafe\\nS2`. Llama Guard 3's codes follow the
  MLCommons hazard taxonomy: S1 violent crimes, S2 non-violent crimes, S3 sex-related
  crimes, S4 child sexual exploitation, S5 defamation, S6 specialized advice, S7 privacy,
  S8 intellectual property, S9 indiscriminate weapons, S10 hate, S11 suicide & self-harm,
  S12 sexual content, S13 elections, S14 code interpreter abuse. Other versions number
  them differently (Llama Guard 2: S10 is self-harm), so the names are read from the
  category list the template itself renders (`S<n>: <name>.` lines) when it has one.
- Qwen3Guard-Gen (QwenLM/Qwen3Guard README and its safety policy): `Safety: Safe|Unsafe|
  Controversial`, then `Categories: ` with one or more of Violent, Non-violent Illegal Acts,
  Sexual Content or Sexual Acts, PII, Suicide & Self-Harm, Unethical Acts, Politically
  Sensitive Topics, Copyright Violation, Jailbreak (prompts only) — or None; when a reply
  is moderated a third line `Refusal: Yes|No` says whether the reply refused.

Parsing is strict about the structure and lenient about whitespace: a reply that does not
have it (noise from a wrong model, a cut-off reply) gives verdict None, is counted in
`GuardModel.malformed`, and is never an exception. Scores, in the detector shape the
safety policy combines ({category: (score, evidence)}): 1.0 for unsafe, 0.5 for Qwen3Guard's
Controversial, the evidence the raw reply. Codes with no category of ours (Llama Guard's
S6 specialized advice and S13 elections, Qwen3Guard's Politically Sensitive Topics) stay
in `GuardResult.codes` but score nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from jielong.errors import UserError
from jielong.hub import open_model, stop_ids
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams

LAYOUTS = ("llama_guard", "qwen3guard")

# Hazard names (lower case, as Llama Guard 2/3/4 templates list them) -> our categories.
LLAMA_GUARD_NAMES: dict[str, tuple[str, ...]] = {
    "violent crimes": ("violence",),
    "non-violent crimes": ("illegal",),
    "sex-related crimes": ("sexual",),
    "sex crimes": ("sexual",),
    "child sexual exploitation": ("minors", "sexual"),
    "child exploitation": ("minors", "sexual"),
    "defamation": ("hate",),
    "specialized advice": (),
    "privacy": ("private_data",),
    "intellectual property": ("illegal",),
    "indiscriminate weapons": ("violence",),
    "hate": ("hate",),
    "suicide & self-harm": ("self_harm",),
    "self-harm": ("self_harm",),
    "sexual content": ("sexual",),
    "elections": (),
    "code interpreter abuse": ("injection",),
}
# Llama Guard 3's codes, for a template that does not list them.
LLAMA_GUARD_3 = {f"S{i}": name for i, name in enumerate([
    "violent crimes", "non-violent crimes", "sex-related crimes", "child sexual exploitation",
    "defamation", "specialized advice", "privacy", "intellectual property",
    "indiscriminate weapons", "hate", "suicide & self-harm", "sexual content", "elections",
    "code interpreter abuse"], start=1)}

QWEN3GUARD_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Violent": ("violence",),
    "Non-violent Illegal Acts": ("illegal",),
    "Sexual Content or Sexual Acts": ("sexual",),
    "PII": ("private_data",),
    "Suicide & Self-Harm": ("self_harm",),
    "Unethical Acts": ("hate",),
    "Politically Sensitive Topics": (),
    "Copyright Violation": ("illegal",),
    "Jailbreak": ("injection",),
}
QWEN3GUARD_SCORE = {"unsafe": 1.0, "controversial": 0.5, "safe": 0.0}

_THINK = re.compile(r"^\s*<think>.*?</think>", re.S)
_LG_CODES = re.compile(r"S\d+(?:\s*,\s*S\d+)*")
_LG_LISTED = re.compile(r"^\s*(S\d+)\s*:\s*(.+?)\s*\.?\s*$", re.M)


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in _THINK.sub("", text).strip().splitlines() if ln.strip()]


def parse_llama_guard(text: str) -> tuple[str | None, list[str]]:
    """("safe" | "unsafe" | None, [codes]) from a Llama Guard reply: `safe`, or `unsafe` and
    a line of comma-separated codes (S1…); anything else is (None, [])."""
    lines = _lines(text)
    if lines == ["safe"]:
        return "safe", []
    if len(lines) == 2 and lines[0] == "unsafe" and _LG_CODES.fullmatch(lines[1]):
        return "unsafe", [c.strip() for c in lines[1].split(",")]
    return None, []


def parse_qwen3guard(text: str) -> tuple[str | None, list[str]]:
    """("safe" | "unsafe" | "controversial" | None, [categories]) from a Qwen3Guard-Gen
    reply: `Safety: …`, `Categories: …` (None, or names from its list) and, for a moderated
    reply, `Refusal: Yes|No`; anything else is (None, [])."""
    lines = _lines(text)
    if len(lines) not in (2, 3):
        return None, []
    safety = re.fullmatch(r"Safety:\s*(Safe|Unsafe|Controversial)", lines[0])
    cats = re.fullmatch(r"Categories:\s*(.+)", lines[1])
    if not safety or not cats or (len(lines) == 3 and
                                  not re.fullmatch(r"Refusal:\s*(Yes|No)", lines[2])):
        return None, []
    names = [c.strip() for c in cats.group(1).split(",")]
    if names == ["None"]:
        names = []
    if any(n not in QWEN3GUARD_CATEGORIES for n in names):
        return None, []
    return safety.group(1).lower(), names


def listed_codes(rendered: str) -> dict[str, str]:
    """{code: lower-case name} from the `S<n>: <name>.` lines of a rendered Llama Guard
    prompt (between its UNSAFE CONTENT CATEGORIES markers when it has them)."""
    m = re.search(r"<BEGIN UNSAFE CONTENT CATEGORIES>(.*?)<END UNSAFE CONTENT CATEGORIES>",
                  rendered, re.S)
    return {c: n.lower() for c, n in _LG_LISTED.findall(m.group(1) if m else rendered)}


def detect_layout(template: str | None) -> str | None:
    """"qwen3guard", "llama_guard" or None, from a chat template's text."""
    t = template or ""
    if "Safety: Safe" in t or "Safety: Unsafe" in t:
        return "qwen3guard"
    if "'safe' or 'unsafe'" in t or ("UNSAFE CONTENT CATEGORIES" in t and "S1" in t):
        return "llama_guard"
    return None


@dataclass
class GuardResult:
    verdict: str | None  # "safe", "unsafe", "controversial"; None: the reply was malformed
    codes: list[str]  # as the model wrote them: "S11" or "Suicide & Self-Harm"
    categories: dict[str, tuple[float, list[str]]]  # the detector shape
    raw: str  # the model's reply
    tokens: int = 0  # how many tokens it generated


@dataclass
class GuardModel:
    model: object
    tok: object
    layout: str
    stops: set[int]
    max_tokens: int = 32
    calls: int = 0
    malformed: int = 0  # replies that were not in the layout's format
    last_prompt: str = field(default="", repr=False)

    @classmethod
    def load(cls, path: str | Path, device="cpu", layout: str | None = None,
             max_tokens: int = 32, dtype="auto") -> GuardModel:
        """Open a guard model folder (or hub id); `layout` (llama_guard or qwen3guard) is read
        from its chat template unless given."""
        if layout is not None and layout not in LAYOUTS:
            raise UserError(f"guard layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        model, tok, gen = open_model(path, device=device, dtype=dtype)
        if layout is None:
            layout = detect_layout(tok.config.get("chat_template"))
            if layout is None:
                raise UserError(f"{path}: its chat template is neither Llama Guard's nor "
                                "Qwen3Guard's; pass layout='llama_guard' or 'qwen3guard'")
        return cls(model, tok, layout, stop_ids(tok, gen, model.config.eos_token_id),
                   max_tokens)

    def messages(self, text: str, reply: str | None = None) -> list[dict]:
        convo = [{"role": "user", "content": text}]
        return convo + ([{"role": "assistant", "content": reply}] if reply is not None else [])

    def check(self, text: str, reply: str | None = None) -> GuardResult:
        """The guard's verdict on `text` (a user message), or on `reply` to it."""
        messages = self.messages(text, reply)
        self.last_prompt, _ = self.tok.render_chat(messages, add_generation_prompt=True)
        ids = self.tok.encode_chat(messages, add_generation_prompt=True)[0]
        room = self.model.config.max_position_embeddings - len(ids)
        self.calls += 1
        if room < 1:  # too long for the guard: no verdict rather than an error in a rail
            self.malformed += 1
            return GuardResult(None, [], {}, "")
        s = SamplingParams(max_tokens=min(self.max_tokens, room), temperature=0.0)
        out = generate_ids(self.model, [ids], s, self.stops)[0]
        result = self.parse(self.tok.decode(out, skip_special_tokens=True))
        result.tokens = len(out)
        return result

    def parse(self, raw: str) -> GuardResult:
        """`raw` parsed in this model's layout, with our categories scored."""
        if self.layout == "llama_guard":
            verdict, codes = parse_llama_guard(raw)
            names = listed_codes(self.last_prompt) or LLAMA_GUARD_3
            ours = [c for code in codes for c in LLAMA_GUARD_NAMES.get(names.get(code, ""), ())]
            score = 1.0
        else:
            verdict, codes = parse_qwen3guard(raw)
            ours = [c for name in codes for c in QWEN3GUARD_CATEGORIES[name]]
            score = QWEN3GUARD_SCORE.get(verdict or "safe", 0.0)
        if verdict is None:
            self.malformed += 1
        cats = {c: (score, [raw.strip()]) for c in dict.fromkeys(ours)} if score else {}
        return GuardResult(verdict, codes, cats, raw)

    def detect(self, text: str, reply: str | None = None) -> dict[str, tuple[float, list[str]]]:
        """{category: (score, [the guard's raw reply])} for the categories it flags."""
        return self.check(text, reply).categories
