"""Byte-level BPE for English and Chinese (Traditional and Simplified), with the ChatML template.

Run as:
    jielong tokenizer train data/ --out runs/tokenizer --vocab_size 4096
    jielong tokenize "今天天氣如何? The weather" --model runs/tokenizer

Training and encoding are the `tokenizers` library's (Rust, fast); this file holds what is
ours: the pre-tokenizer pattern, the special tokens, the chat template, the files a
Hugging Face `AutoTokenizer` loads unchanged, and a view of how a text splits into tokens.

Byte-level means the 256 byte values are the base vocabulary, so no text is ever unknown:
a character the merges never saw (a rare 饕) is spelled as its UTF-8 bytes, 1–4 tokens.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import jinja2.ext
import jinja2.nodes
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers

from jielong.data.readers import find_files, iter_texts
from jielong.errors import UserError, at, json_problem
from jielong.files import write_text

EOS, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (EOS, IM_START, IM_END)  # ids 0, 1, 2

# How text is cut into chunks before BPE; merges never cross a chunk boundary. The rules
# are tried left to right at each position.
PATTERN = "|".join([
    # English contractions as their own chunk (don|'t, it|'s), not a contraction-like start
    # of a word ('tis); ' and ’ alike.
    r"(?i:['’](?:s|t|re|ve|m|ll|d))(?![\p{L}\p{M}&&[^\p{Han}]])",
    # A run of Han characters (Traditional and Simplified, 〇, CJK extensions): BPE may learn
    # multi-character words inside it, never with a Latin letter, digit or punctuation.
    r"\p{Han}+",
    # A word of other letters (Latin, Greek, Cyrillic, kana…, with combining marks) and the
    # space before it, as in GPT-2: " weather" is one chunk.
    r" ?[\p{L}\p{M}&&[^\p{Han}]]+",
    # Every digit alone, so 12345 is always 1|2|3|4|5 and a model can learn arithmetic on
    # digits instead of on arbitrary number chunks.
    r"\p{N}",
    # A run of punctuation and symbols (ASCII and full-width ，。？！「」, emoji) with an
    # optional leading space and the line breaks right after it ("。\n" is common in poems).
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    # Line breaks, with the spaces before them.
    r"\s*[\r\n]+",
    # A run of spaces, except the last one, which goes with the next word (indentation).
    r"\s+(?!\S)",
    r"\s+",
])

# ChatML, and tools in the Hermes style (NousResearch's Hermes 2 Pro, as Qwen2.5 adopted it):
# the tools as JSON lines inside <tools></tools> at the end of the system turn, each call the
# assistant makes as <tool_call>\n{"name": …, "arguments": {…}}\n</tool_call> (OpenAI's
# JSON-text arguments written as the object they hold), each result as a `tool` turn inside
# <tool_response></tool_response>. Without tools it renders what plain ChatML renders, byte
# for byte. Every newline sits inside a {{ '…' }} string: the Jinja settings transformers
# uses (trim_blocks) would eat one written after a tag.
# The instruction is shorter than Qwen2.5's (the demo's model has 512 tokens of context).
TOOLS_PROMPT = "# Tools\n\nYou may call these functions:\n<tools>"
TOOLS_PROMPT_END = ("\n</tools>\n\nTo call one, write <tool_call>\n"
                    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")
CHAT_TEMPLATE = (
    "{% if tools %}"
    "{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ '" + TOOLS_PROMPT.replace("\n", "\\n") + "' }}"
    "{% for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}"
    "{{ '" + TOOLS_PROMPT_END.replace("\n", "\\n") + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% if message['content'] %}{{ message['content'] + '\\n' }}{% endif %}"
    "{% for call in message['tool_calls'] %}"
    "{% set f = call['function'] if call['function'] is defined else call %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>\\n{\"name\": ' + (f['name'] | tojson) + ', \"arguments\": ' }}"
    "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}{{ f['arguments'] | tojson }}{% endif %}"
    "{{ '}\\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>tool\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MODEL_MAX_LENGTH = 2048  # written into tokenizer_config.json; set tok.config to change


def _byte_symbols() -> list[str]:
    """The character ByteLevel uses for each byte value (GPT-2's scheme): printable bytes
    stand for themselves, the other 68 are moved to U+0100 onwards, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out, moved = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + moved))
            moved += 1
    return out


BYTE_SYMBOLS = _byte_symbols()
_BYTE_OF = {s: b for b, s in enumerate(BYTE_SYMBOLS)}


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def default_config(backend: tokenizers.Tokenizer) -> dict:
    """tokenizer_config.json for a tokenizer we trained: what `AutoTokenizer` needs."""
    added = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                 "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
        for i, t in sorted(backend.get_added_tokens_decoder().items())
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }


class Tokenizer:
    """A `tokenizers.Tokenizer` (`.backend`) plus its tokenizer_config (`.config`)."""

    def __init__(self, backend: tokenizers.Tokenizer, config: dict | None = None):
        self.backend = backend
        self.config = config if config is not None else default_config(backend)
        self._special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        self._template = None
        # GPT-2-style byte-level BPE spells bytes as printable characters; SentencePiece-style
        # vocabularies (Llama 2, Mistral) write "▁" for a space and <0xNN> for a raw byte.
        self.byte_level = "ByteLevel" in repr(backend.decoder)

    # -- files ---------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load tokenizer.json (+ tokenizer_config.json) from a tokenizer or model folder."""
        d = Path(path)
        expected = ("expected a folder with tokenizer.json (from `jielong tokenizer train`, "
                    "`jielong pretrain`, or a Hugging Face model with a fast tokenizer)")
        if not d.is_dir():
            raise UserError(f"{d}: no such directory; {expected}")
        if not (d / "tokenizer.json").is_file():
            raise UserError(f"{d}: no tokenizer.json in this directory; {expected}")
        try:
            backend = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
        except Exception as e:  # the Rust side raises a plain Exception
            raise UserError(f"{d / 'tokenizer.json'}: not a valid tokenizer file ({e}); "
                            "re-save it or train a new one") from None
        config = None
        if (d / "tokenizer_config.json").is_file():
            config = _read_json(d / "tokenizer_config.json")
            template = config.get("chat_template")
            if isinstance(template, list):  # HF allows several named templates
                named = {t.get("name"): t.get("template") for t in template}
                config["chat_template"] = named.get("default", next(iter(named.values()), None))
            if not config.get("chat_template") and (d / "chat_template.jinja").is_file():
                config["chat_template"] = (d / "chat_template.jinja").read_text(encoding="utf-8")
        return cls(backend, config)

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json and tokenizer_config.json into `path` (created), atomically."""
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        write_text(d / "tokenizer.json", self.backend.to_str(pretty=True))
        write_text(d / "tokenizer_config.json",
                      json.dumps(self.config, ensure_ascii=False, indent=2) + "\n")
        return d

    # -- ids -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it (e.g. <|im_end|>) become their ids."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        """<|endoftext|>, the document separator (else the config's eos_token)."""
        if self.backend.token_to_id(EOS) is not None:
            return self.backend.token_to_id(EOS)
        eos = self.config.get("eos_token")
        return self._special_id(eos.get("content") if isinstance(eos, dict) else eos or EOS)

    @property
    def im_start_id(self) -> int:
        return self._special_id(IM_START)

    @property
    def im_end_id(self) -> int:
        return self._special_id(IM_END)

    def _special_id(self, token: str) -> int:
        i = self.backend.token_to_id(token)
        if i is None:
            raise UserError(f"this tokenizer has no {token} token; use a tokenizer trained by "
                            "jielong, or one whose vocabulary has the ChatML tokens")
        return i

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes token `token_id` stands for (maybe part of a UTF-8 character)."""
        token = self.backend.id_to_token(token_id)
        if token is None:
            raise IndexError(f"token id {token_id} is outside the vocabulary ({self.vocab_size})")
        if token_id in self._special:
            return token.encode("utf-8")
        if not self.byte_level:
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                return bytes([int(token[3:5], 16)])
            return token.replace("▁", " ").encode("utf-8")
        if any(c not in _BYTE_OF for c in token):
            return token.encode("utf-8")
        return bytes(_BYTE_OF[c] for c in token)

    @functools.cached_property
    def byte_table(self) -> list[bytes]:
        """Every token's bytes by id (b"" for special tokens), e.g. to find all tokens that
        start with given bytes."""
        return [b"" if self.is_special(i) else self.token_bytes(i) for i in range(self.vocab_size)]

    # -- chat ----------------------------------------------------------------------------

    @property
    def end_ids(self) -> set[int]:
        """Token ids that end a reply: the eos token and any known end-of-turn token in the
        vocabulary (a base model chatting through a template emits those). Add the model's
        generation_config.json eos ids to these (see `jielong.hub.stop_ids`)."""
        ids = {self.backend.token_to_id(t) for t in END_OF_TURN}
        eos = self._token_str("eos_token")
        ids.add(self.backend.token_to_id(eos) if eos else None)
        return {i for i in ids if i is not None and i in self._special}

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            **kwargs) -> str:
        """Render `messages` ([{"role", "content"}, …]) with the stored chat template, as
        transformers does (same Jinja settings), so both give the same string."""
        return self.render_chat(messages, add_generation_prompt, **kwargs)[0]

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False,
                    **kwargs) -> tuple[str, list[tuple[int, int]]]:
        """(text, spans): the rendered conversation, and the character spans the template
        marks with {% generation %}…{% endgeneration %} (empty when it has no such tags)."""
        if self._template is None:
            source = self.config.get("chat_template")
            if not source:
                raise UserError("this tokenizer has no chat_template in tokenizer_config.json; "
                                "add one or use a tokenizer trained by jielong")
            self._template = _template_env().from_string(source)
        messages = _check_messages(messages)
        specials = {k: self._token_str(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        kwargs.setdefault("tools", None)
        kwargs.setdefault("documents", None)
        text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     **{**specials, **kwargs})
        spans, pieces, at = [], [], 0
        for i, piece in enumerate(text.split(_GEN_START)):
            if i == 0:
                pieces.append(piece)
                at = len(piece)
                continue
            inside, _, after = piece.partition(_GEN_END)
            spans.append((at, at + len(inside)))
            pieces += [inside, after]
            at += len(inside) + len(after)
        return "".join(pieces), spans

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = False,
                    **kwargs) -> tuple[list[int], list[bool]]:
        """(ids, mask): the conversation's token ids, exactly as transformers'
        `apply_chat_template` gives them, and True for each token of an assistant reply
        (the tokens an SFT loss trains on), including the end-of-turn token that closes it.

        Templates with {% generation %} tags mark the replies themselves (as transformers'
        `return_assistant_tokens_mask`). For the others, each assistant message's content is
        found in the rendered text in order, and its mask runs on to the end-of-turn token;
        an assistant message with tool calls, or one after a tool's result, is the part the
        message adds to the rendered chat (`_mask_turn`).
        """
        text, spans = self.render_chat(messages, add_generation_prompt, **kwargs)
        enc = self.backend.encode(text, add_special_tokens=False)
        ids, mask = enc.ids, [False] * len(enc.ids)
        if spans:
            for a, b in spans:
                first, last = enc.char_to_token(a), enc.char_to_token(b - 1) if b > a else None
                if first is not None and last is not None:
                    mask[first:last + 1] = [True] * (last + 1 - first)
            return ids, mask
        ends, cursor = self.end_ids, 0
        for n, m in enumerate(messages):
            if m.get("role") == "assistant" and (m.get("tool_calls") or
                                                 (n and messages[n - 1].get("role") == "tool")):
                cursor = self._mask_turn(messages, n, text, enc, mask, kwargs)
                continue
            if m.get("role") != "assistant" or not isinstance(m.get("content"), str):
                continue
            content = m["content"].strip()
            a = text.find(content, cursor)
            if a < 0 and "</think>" in content:  # templates that drop past reasoning
                content = content.rsplit("</think>", 1)[-1].strip()
                a = text.find(content, cursor)
            if not content:  # an empty reply: its end-of-turn token is all there is to learn
                prefix = self.render_chat(messages[:n], True, **kwargs)[0]
                if text.startswith(prefix):
                    cursor = len(prefix)
                    k = next((k for k, (start, _) in enumerate(enc.offsets) if start >= cursor), len(ids))
                    if k < len(ids) and ids[k] in ends:
                        mask[k] = True
                continue
            if a < 0:
                raise UserError(f"message {n + 1} (assistant) does not appear in the rendered chat "
                                "template, so its tokens cannot be masked; use a template with "
                                "{% generation %} tags")
            cursor = a + len(content)
            first, last = enc.char_to_token(a), enc.char_to_token(cursor - 1)
            if first is None or last is None:
                continue
            while last + 1 < len(ids) and enc.offsets[last + 1][0] < cursor:
                last += 1  # the other byte tokens of a character split across tokens (🍜)
            j = last + 1  # run on over whitespace to the end-of-turn token, if one follows
            while j < len(ids) and ids[j] not in ends and not self.decode([ids[j]]).strip():
                j += 1
            if j < len(ids) and ids[j] in ends:
                last = j
            mask[first:last + 1] = [True] * (last + 1 - first)
        return ids, mask

    def _mask_turn(self, messages: list[dict], n: int, text: str, enc, mask: list[bool],
                   kwargs: dict) -> int:
        """Mask assistant message n as the difference between the chat rendered up to it
        (with the generation prompt) and up to and including it: its tool calls as the
        template writes them, or a reply after a tool's result (whose text may repeat in
        the reply, so it is not searched for), through the end-of-turn token. Returns the
        character where the turn ends."""
        prefix = self.render_chat(messages[:n], True, **kwargs)[0]
        upto = self.render_chat(messages[:n + 1], False, **kwargs)[0]
        if not (upto.startswith(prefix) and text.startswith(upto)):
            raise UserError(f"message {n + 1} (assistant): the chat template renders the "
                            "conversation differently when it is cut after this message, so "
                            "its tokens cannot be masked; use a template with {% generation %} tags")
        a, b = len(prefix), len(upto.rstrip())
        for call in messages[n].get("tool_calls") or []:
            name = (call.get("function") or call).get("name", "")
            if name not in upto[a:b]:
                raise UserError(f"message {n + 1} (assistant): the chat template does not write its "
                                f"tool call {name!r}; use a template that takes tools (jielong's "
                                "default, Qwen2.5, Llama 3.1, Mistral)")
        if b > a:
            first, last = enc.char_to_token(a), enc.char_to_token(b - 1)
            if first is not None and last is not None:
                mask[first:last + 1] = [True] * (last + 1 - first)
        return len(upto)

    def _token_str(self, key: str) -> str | None:
        v = self.config.get(key)
        return v.get("content") if isinstance(v, dict) else v


# Tokens that close a turn in the common chat formats (ChatML, Llama 3, Llama 2/Mistral, Gemma).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>",
               "</s>", "<end_of_turn>", "<|end|>")
# Private-use noncharacters that bracket {% generation %} output while rendering.
_GEN_START, _GEN_END = "\ufdd0", "\ufdd1"


class _GenerationTags(jinja2.ext.Extension):
    """{% generation %}…{% endgeneration %}: marks an assistant reply in a chat template (the
    tag transformers defined for assistant masks). We bracket the output with two
    noncharacters and turn them into spans after rendering."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller) -> str:
        return _GEN_START + caller() + _GEN_END


@functools.cache
def _template_env() -> ImmutableSandboxedEnvironment:
    # The settings transformers renders with, so templates written for it render the same.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTags, jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = _raise_template_error
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, \
        sort_keys=False: json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                                    separators=separators, sort_keys=sort_keys)
    return env


def _check_messages(messages) -> list[dict]:
    """Messages as templates expect them: dicts with a role; keys set to None dropped (as
    transformers does), our bracket characters removed from strings."""
    if not isinstance(messages, list | tuple) or not messages:
        raise UserError("a conversation must be a non-empty list of messages")
    out = []
    for n, m in enumerate(messages, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise UserError(f"message {n}: must be an object with a \"role\" (system, user, "
                            f"assistant) and \"content\"; got {str(m)[:60]}")
        out.append({k: _strip_marks(v) for k, v in m.items() if v is not None})
    return out


def _strip_marks(v):
    if isinstance(v, str):
        return v.replace(_GEN_START, "").replace(_GEN_END, "")
    if isinstance(v, list):
        return [_strip_marks(x) for x in v]
    if isinstance(v, dict):
        return {k: _strip_marks(x) for k, x in v.items()}
    return v


def _raise_template_error(message: str):
    raise UserError(f"chat template: {message}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{at(path, e.lineno)}: not valid JSON: {json_problem(e)}; fix or delete the file") \
            from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid UTF-8; re-save the file as UTF-8") from None


# -- training ---------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2,
                    show_progress: bool | None = None) -> Tokenizer:
    """Train a byte-level BPE on `texts` (streamed). The vocabulary may come out smaller than
    `vocab_size` when the text has too few pairs seen `min_frequency` times. Progress bars
    show by default when stderr is a terminal (the library also prints blank lines then)."""
    _check_options(vocab_size, min_frequency)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    backend.train_from_iterator(texts, trainer)
    backend.add_special_tokens(specials)  # a no-op after training, but says what they are
    return Tokenizer(backend)


def _check_options(vocab_size: int, min_frequency: int) -> None:
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise UserError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least "
                        f"{minimum} (256 bytes + {len(SPECIAL_TOKENS)} special tokens); "
                        f"pass --vocab_size {minimum} or more (4096+ is typical)")
    if min_frequency < 1:
        raise UserError(f"min_frequency {min_frequency} must be at least 1")


def bytes_per_token(tok: Tokenizer, texts: Iterable[str]) -> float:
    """UTF-8 bytes per token over `texts`: higher means the tokenizer compresses better."""
    texts = list(texts)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    return sum(len(t.encode("utf-8")) for t in texts) / max(n_tokens, 1)


# -- looking at tokens --------------------------------------------------------------------

_BACKGROUNDS = (153, 187, 224, 230, 194, 225)  # pale blue, green, pink, yellow, mint, lilac
_VISIBLE = {"\n": "↵", "\t": "→", "\r": "␍"}


def _pieces(data: bytes) -> Iterator[tuple[bool, str]]:
    """Split a token's bytes into (is_text, shown) pieces: whole UTF-8 characters as text,
    any bytes that are only part of a character as hex, e.g. ⟨e9 a5⟩."""
    while data:
        try:
            yield True, data.decode("utf-8")
            return
        except UnicodeDecodeError as e:
            if e.start:
                yield True, data[: e.start].decode("utf-8")
            bad = data[e.start: max(e.end, e.start + 1)]
            yield False, "⟨" + " ".join(f"{b:02x}" for b in bad) + "⟩"
            data = data[e.start + len(bad):]


def render_tokens(tok: Tokenizer, text: str, color: bool = True) -> str:
    """Show how `text` splits into tokens: each token on its own alternating background
    (or in [brackets] with color=False); bytes that are part of a character, not a whole
    one, are shown as hex ⟨e9 a5⟩ (red, underlined); ↵ and → mark line breaks and tabs."""
    out = []
    for n, token_id in enumerate(tok.encode(text)):
        raw = tok.token_bytes(token_id)
        shown = []
        for is_text, s in _pieces(raw):
            if is_text:
                s = "".join(_VISIBLE.get(c, c) for c in s)
            if color:
                style = "1;30" if tok.is_special(token_id) else ("4;31" if not is_text else "30")
                s = f"\x1b[{style};48;5;{_BACKGROUNDS[n % len(_BACKGROUNDS)]}m{s}\x1b[0m"
            shown.append(s)
        piece = "".join(shown)
        if not color:
            piece = f"[{piece}]"
        elif raw.endswith(b"\n"):
            piece += "\n"  # keep the text's line layout in the coloured view
        out.append(piece)
    return "".join(out)


def use_color(stream=None) -> bool:
    """Colour for a terminal or when FORCE_COLOR is set; never when NO_COLOR is set."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


# -- commands ------------------------------------------------------------------------------

# Characters written differently in the two scripts, same order: a cheap way to tell a
# Traditional document from a Simplified one (no converter needed).
_HANT = "們這個來說時國會為對學過與無長開見東風飛馬門間聽歸萬書愛氣錢車語話點頭樂問關發當經電紅綠離葉鳥龍樓淚陽應處還邊夢聲歲燈橋蘭憶興舊斷鄉調塵劍戰羅雙獨寶"
_HANS = "们这个来说时国会为对学过与无长开见东风飞马门间听归万书爱气钱车语话点头乐问关发当经电红绿离叶鸟龙楼泪阳应处还边梦声岁灯桥兰忆兴旧断乡调尘剑战罗双独宝"
_HANT_SET, _HANS_SET = set(_HANT), set(_HANS)
_SAMPLE_PIECES, _PIECE_CHARS = 300, 2000  # compression is measured on ≤ 300 pieces per kind


def _is_han(c: str) -> bool:
    o = ord(c)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF
            or 0x20000 <= o <= 0x3FFFF or o == 0x3007)


def doc_kind(text: str) -> str | None:
    """"en", "zh-Hant", "zh-Hans" or "zh" (script unclear) by the share of Han characters
    among letters; None for a text without letters."""
    letters = han = hant = hans = 0
    for c in text:
        if c.isalpha():
            letters += 1
            if _is_han(c):
                han += 1
                hant += c in _HANT_SET
                hans += c in _HANS_SET
    if not letters:
        return None
    if han < 0.3 * letters:
        return "en"
    return "zh-Hant" if hant > hans else "zh-Hans" if hans > hant else "zh"


class _Sampler:
    """Passes documents through while keeping a uniform sample of English and of Chinese
    pieces (one reservoir each; a long document, e.g. a whole .txt file, is cut first)."""

    def __init__(self, size: int = _SAMPLE_PIECES, seed: int = 0):
        self.size, self.rng = size, random.Random(seed)
        self.kept: dict[str, list[str]] = {"en": [], "zh": []}
        self.seen = {"en": 0, "zh": 0}
        self.docs = self.chars = 0

    def watch(self, texts: Iterable[str]) -> Iterator[str]:
        for t in texts:
            self.docs += 1
            self.chars += len(t)
            for i in range(0, len(t), _PIECE_CHARS):
                kind = doc_kind(t[i: i + 200])  # the start of a piece is enough to tell
                if kind is None:
                    continue
                kind = "en" if kind == "en" else "zh"
                n = self.seen[kind] = self.seen[kind] + 1
                kept = self.kept[kind]
                if len(kept) < self.size:
                    kept.append(t[i: i + _PIECE_CHARS])
                elif (j := self.rng.randrange(n)) < self.size:
                    kept[j] = t[i: i + _PIECE_CHARS]
            yield t

    def rows(self) -> list[tuple[str, list[str]]]:
        """(name, pieces): English, Chinese, and its Traditional and Simplified parts."""
        by_script: dict[str, list[str]] = {}
        for t in self.kept["zh"]:
            by_script.setdefault(doc_kind(t) or "zh", []).append(t)
        rows = [("English", self.kept["en"]), ("Chinese", self.kept["zh"])]
        if by_script.get("zh-Hant") and by_script.get("zh-Hans"):
            rows += [("  Traditional", by_script["zh-Hant"]), ("  Simplified", by_script["zh-Hans"])]
        return [(name, texts) for name, texts in rows if texts]


def train_cmd(data: list[str], out: str = "runs/tokenizer", vocab_size: int = 4096,
              field: str = "text", min_frequency: int = 2) -> None:
    """Train a byte-level BPE tokenizer on text files and save it.

    Args:
        data: Corpus files or folders (.txt whole-file documents, .jsonl, .parquet).
        out: Folder to write tokenizer.json and tokenizer_config.json to.
        vocab_size: Vocabulary size, counting the 256 byte tokens and 3 special tokens.
        field: The text field of .jsonl lines and the text column of .parquet files.
        min_frequency: Merge only pairs seen at least this many times.
    """

    _check_options(vocab_size, min_frequency)
    files = find_files(data)  # fail on a bad path before any work
    t0 = time.time()
    sampler = _Sampler()
    print(f"training a {vocab_size}-token BPE on {len(files)} file{'s' * (len(files) != 1)}",
          file=sys.stderr)
    tok = train_tokenizer(sampler.watch(iter_texts(files, field)), vocab_size, min_frequency)
    path = tok.save(out)
    print(f"saved a {tok.vocab_size}-token tokenizer to {path}/ (tokenizer.json, "
          f"tokenizer_config.json) · {sampler.docs:,} documents, {sampler.chars:,} characters "
          f"in {time.time() - t0:.1f} s")
    if tok.vocab_size < vocab_size:
        print(f"note: the corpus supports only {tok.vocab_size} tokens at min_frequency "
              f"{min_frequency} (asked for {vocab_size})")
    print("compression, UTF-8 bytes per token (higher = fewer tokens for the same text):")
    for name, texts in sampler.rows():
        print(f"  {name:<14}{bytes_per_token(tok, texts):5.2f}   ({len(texts)} sampled pieces)")


def tokenize_cmd(text: str, model: str = "runs/demo/model") -> None:
    """Show how a text splits into tokens: coloured pieces, their ids and the compression.

    Args:
        text: The text to tokenize.
        model: A model or tokenizer folder (with tokenizer.json).
    """
    tok = Tokenizer.from_dir(model)
    ids = tok.encode(text)
    n_bytes = len(text.encode("utf-8"))
    print(render_tokens(tok, text, color=use_color()))
    print(f"ids: {ids}")
    print(f"{len(ids)} tokens · {n_bytes} bytes · {n_bytes / max(len(ids), 1):.2f} bytes/token")
