"""tokenizer.json (+ tokenizer_config.json, chat_template.jinja) as llama.cpp's vocabulary:
byte-level BPE as its "gpt2" model, SentencePiece-style BPE as its "llama" one."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from jielong.errors import UserError
from jielong.export.jsonfile import optional_json, read_json

# Tokens that end a chat turn (as opposed to the end of a document), in the families we know.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# llama.cpp's token types (gguf.TokenType), written as plain ints.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _first(*values):
    """The first value that is not None (0 is a fine token id)."""
    return next((v for v in values if v is not None), None)


@dataclass
class Vocab:
    """The tokenizer as llama.cpp's metadata wants it."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    pre: str | None  # llama.cpp's pre-tokenizer name ("gpt2" model only)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str]
    special: dict[str, int]  # bos / eos / pad / unk / eot -> id
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None
    chat_template: str | list | None


def _components(node) -> list[dict]:
    """A normalizer / pre-tokenizer / decoder / post-processor and everything nested in it."""
    if not isinstance(node, dict):
        return []
    out = [node]
    for key in ("normalizers", "pretokenizers", "decoders", "processors"):
        for sub in node.get(key) or []:
            out += _components(sub)
    return out


def _template_specials(post_processor) -> tuple[list[str], list[str]]:
    """Special tokens a TemplateProcessing post-processor puts before and after a single
    sequence ($A), e.g. (["<s>"], []) for Llama 2."""
    for c in _components(post_processor):
        if c.get("type") == "TemplateProcessing":
            before, after, seen_a = [], [], False
            for item in c.get("single") or []:
                if "Sequence" in item:
                    seen_a = True
                elif "SpecialToken" in item:
                    (after if seen_a else before).append(item["SpecialToken"].get("id"))
            return before, after
    return [], []


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    pairs = []
    for m in model.get("merges") or []:
        if isinstance(m, str):  # "a b" (older tokenizer.json)
            a, _, b = m.partition(" ")
        else:  # ["a", "b"]
            a, b = m
        pairs.append((a, b))
    return pairs


def _end_of_turn_order(template) -> list[str]:
    """END_OF_TURN, those the chat template uses first (a vocabulary may hold several)."""
    text = json.dumps(template, ensure_ascii=False) if template else ""
    return sorted(END_OF_TURN, key=lambda t: t not in text)


def _pre_tokenizer_name(ids: dict[str, int], text_side: list[dict]) -> str:
    """llama.cpp's name for how a byte-level BPE cuts text into chunks before merging.
    llama.cpp cannot run an arbitrary pre-tokenizer regex: it re-implements known ones under
    names, so we pick the nearest."""
    if "<|begin_of_text|>" in ids:
        return "llama-bpe"  # Llama 3
    regexes = [c["pattern"].get("Regex", "") for c in text_side
               if c.get("type") == "Split" and isinstance(c.get("pattern"), dict)]
    if any(r"\p{Han}" in r for r in regexes):
        # jielong's own pattern (jielong.tokenizer.PATTERN: Han runs apart from other letters,
        # single digits, punctuation with its line breaks) has no exact llama.cpp counterpart.
        # "qwen2" is the nearest: measured with llama.cpp on Tang poems, Song ci and
        # Shakespeare, it gives jielong's exact tokens for all but rare English contractions
        # ('tis, know'st), where "default" differs on almost every text.
        return "qwen2"
    if "<|im_start|>" in ids and len(ids) >= 100_000:
        return "qwen2"  # Qwen's own vocabulary
    if not regexes and any(c.get("type") == "ByteLevel" and c.get("use_regex", True)
                           for c in text_side):
        return "gpt-2"  # ByteLevel with its built-in GPT-2 regex
    return "default"


def read_vocab(model_dir: str | Path, vocab_size: int, config: dict | None = None,
               generation: dict | None = None) -> Vocab:
    """Read tokenizer.json (+ tokenizer_config.json, chat_template.jinja) into llama.cpp's
    vocabulary, padded to the model's `vocab_size` (its embedding rows)."""
    d = Path(model_dir)
    path = d / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{d}: no tokenizer.json; GGUF export needs the model's fast tokenizer "
                        "(train one with `jielong tokenizer train`, or save a Hugging Face "
                        "tokenizer with save_pretrained)")
    tj = read_json(path)
    tc = optional_json(d / "tokenizer_config.json")
    config, generation = config or {}, generation or {}
    model = tj.get("model") or {}
    kind = model.get("type") or ("BPE" if "merges" in model else None)
    text_side = _components(tj.get("normalizer")) + _components(tj.get("pre_tokenizer"))
    all_types = {c.get("type") for c in text_side + _components(tj.get("decoder"))}
    metaspace = "Metaspace" in all_types or any(
        c.get("type") in ("Replace", "Prepend") and "▁" in json.dumps(c, ensure_ascii=False)
        for c in text_side)
    if kind == "BPE" and "ByteLevel" in all_types:
        style = "gpt2"
    elif kind == "BPE" and (model.get("byte_fallback") or metaspace):
        style = "llama"
    else:
        raise UserError(f"{path}: a {kind or 'unknown'} tokenizer that is neither byte-level nor "
                        "SentencePiece-style BPE; GGUF export supports byte-level BPE (GPT-2, "
                        "Llama 3, Qwen, jielong) and SentencePiece-style BPE with byte fallback "
                        "(Llama 2, Mistral)")

    # Tokens by id: the model's vocabulary, then the added tokens (which may overlap it).
    vocab = dict(model.get("vocab") or {})
    if style == "llama":
        missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab]
        if missing:
            raise UserError(f"{path}: this SentencePiece-style tokenizer lacks {len(missing)} of "
                            f"the 256 byte tokens (e.g. {missing[0]}); llama.cpp spells any "
                            "character outside the vocabulary with them and cannot run without; "
                            "train the tokenizer with byte_fallback=True")
    added = [a for a in tj.get("added_tokens") or [] if isinstance(a.get("id"), int)]
    n = max([*vocab.values(), *(a["id"] for a in added)], default=-1) + 1
    if n > vocab_size:
        raise UserError(f"{path}: the tokenizer has {n} tokens but config.json's vocab_size is "
                        f"{vocab_size}; this tokenizer does not belong to this model")
    tokens: list[str | None] = [None] * vocab_size
    types = [NORMAL] * vocab_size
    for t, i in vocab.items():
        tokens[i] = t
        if style == "llama" and BYTE_TOKEN.fullmatch(t):
            types[i] = BYTE
    for a in added:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = CONTROL if a.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:  # ids the tokenizer never uses (an embedding padded to a round size)
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    ids = {t: i for i, t in enumerate(tokens)}
    for a in added:
        ids[a["content"]] = a["id"]

    template = tc.get("chat_template")
    if not template and (d / "chat_template.jinja").is_file():
        template = (d / "chat_template.jinja").read_text(encoding="utf-8")
    if not template and (d / "chat_template.json").is_file():
        template = read_json(d / "chat_template.json").get("chat_template")

    def token_id(value) -> int | None:  # a tokenizer_config entry: "<s>" or {"content": "<s>"}
        if isinstance(value, dict):
            value = value.get("content")
        return ids.get(value) if isinstance(value, str) else None

    def config_id(value) -> int | None:  # an id, or a list of ids (the first counts)
        if isinstance(value, list):
            value = value[0] if value else None
        return value if isinstance(value, int) and 0 <= value < vocab_size else None

    special = {
        "bos": _first(token_id(tc.get("bos_token")), config_id(generation.get("bos_token_id")),
                      config_id(config.get("bos_token_id"))),
        "eos": _first(config_id(generation.get("eos_token_id")), token_id(tc.get("eos_token")),
                      config_id(config.get("eos_token_id"))),
        "pad": _first(token_id(tc.get("pad_token")), config_id(generation.get("pad_token_id")),
                      config_id(config.get("pad_token_id"))),
        "unk": _first(token_id(tc.get("unk_token")), token_id(model.get("unk_token"))),
        "eot": next((ids[t] for t in _end_of_turn_order(template) if t in ids), None),
    }
    special = {k: v for k, v in special.items() if v is not None}
    if style == "llama" and "unk" in special:
        types[special["unk"]] = UNKNOWN

    before, after = _template_specials(tj.get("post_processor"))
    bos_str = tokens[special["bos"]] if "bos" in special else None
    eos_str = tokens[special["eos"]] if "eos" in special else None
    add_bos = tc["add_bos_token"] if isinstance(tc.get("add_bos_token"), bool) \
        else bos_str is not None and bos_str in before
    add_eos = tc["add_eos_token"] if isinstance(tc.get("add_eos_token"), bool) \
        else eos_str is not None and eos_str in after

    pairs = _merge_pairs(model)
    scores = add_space_prefix = None
    if style == "llama":
        # llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined text is
        # the token with the highest score: for a BPE that is the earliest merge, so a
        # token's score is minus the rank of the merge that makes it.
        rank: dict[str, int] = {}
        for r, (a, b) in enumerate(pairs):
            rank.setdefault(a + b, r)
        scores = []
        for i, t in enumerate(tokens):
            if types[i] != NORMAL:
                scores.append(0.0)
            else:
                scores.append(-float(rank[t]) if t in rank else -float(len(pairs) + i))
        add_space_prefix = False
        for c in text_side:
            if c.get("type") == "Metaspace":
                add_space_prefix = (c["prepend_scheme"] != "never" if "prepend_scheme" in c
                                    else bool(c.get("add_prefix_space", True)))
            elif c.get("type") == "Prepend" and c.get("prepend") == "▁":
                add_space_prefix = True

    return Vocab(
        model=style,
        pre=_pre_tokenizer_name(ids, text_side) if style == "gpt2" else None,
        tokens=tokens,  # type: ignore[arg-type]  # no None left
        types=types,
        scores=scores,
        merges=[f"{a} {b}" for a, b in pairs] if style == "gpt2" else [],
        special=special,
        add_bos=bool(add_bos),
        add_eos=bool(add_eos),
        add_space_prefix=add_space_prefix,
        chat_template=template or None,
    )
