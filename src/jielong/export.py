"""`jielong export gguf`: a model directory as one GGUF file for llama.cpp and Ollama.

    jielong export gguf runs/demo/model                    # -> runs/demo/model/gguf/model-f16.gguf
    jielong export gguf runs/demo/model --outtype q8_0 --out exports/
    ollama create demo -f runs/demo/model/gguf/Modelfile

GGUF is llama.cpp's one-file format: the hyperparameters and the tokenizer as key/value
metadata, then every tensor under llama.cpp's own name (`blk.0.attn_q.weight`, …). The key
names, the tensor-name map, the writer and the quantisers are the `gguf` package's (it is
llama.cpp's own Python library); what goes in is decided here:

- Architecture: Llama and Mistral run on llama.cpp's "llama" graph, Qwen2 on "qwen2",
  Qwen3 on "qwen3".
- Rotary layout: a Hugging Face checkpoint rotates the first half of each head against the
  second half (x[i] with x[i + d/2]); llama.cpp's "llama" graph rotates neighbours (x[2i]
  with x[2i+1]). So for "llama" the rows of q_proj and k_proj are reordered within each
  head (`permute_qk`); the Qwen graphs use the half-split ("NEOX") layout and take the rows
  as they are. A reordering of q and k rows by the same permutation leaves every q·k, and
  so the attention, unchanged.
- Precision: norms and biases stay f32 (as llama.cpp's converter keeps them); matrices are
  written in the chosen type: f32, f16, bf16, or q8_0 (8-bit blocks of 32 values with one
  f16 scale; a matrix whose rows are not a multiple of 32 falls back to f16).
- Tokenizer: tokenizer.json becomes llama.cpp's "gpt2" vocabulary (byte-level BPE: tokens,
  types and merges) or its "llama" one (SentencePiece-style: tokens, scores, types with
  the <0xNN> byte tokens), plus the special-token ids and the chat template.

Beside the .gguf goes an Ollama `Modelfile`: a Go-template TEMPLATE for the chat formats we
recognise (ChatML, Llama 3, Mistral [INST]), stop sequences and the sampling defaults of
generation_config.json. Tensors are read one at a time from the safetensors files and
written straight out, so the export needs memory for one tensor, not for the model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from jielong.config import ModelConfig
from jielong.errors import UserError, at, json_problem
from jielong.files import atomic_path, write_text
from jielong.model import rope_frequencies

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# HF model_type -> the llama.cpp architecture that runs it.
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# Tokens that end a chat turn (as opposed to the end of a document), in the families we know.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# llama.cpp's token types (gguf.TokenType), written as plain ints.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF export needs the `gguf` package, which is not installed; "
                        "install it with: pip install 'jielong[export]'") from None
    return gguf


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{at(path, e.lineno)}: not valid JSON ({json_problem(e)}); fix or re-save the file") \
            from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid UTF-8; re-save the file as UTF-8") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object ({{...}}) at the top level")
    return data


def _optional_json(path: Path) -> dict:
    return _read_json(path) if path.is_file() else {}


def _first(*values):
    """The first value that is not None (0 is a fine token id)."""
    return next((v for v in values if v is not None), None)


# -- hyperparameters -------------------------------------------------------------------


@dataclass
class Hparams:
    """What llama.cpp needs from config.json, with Hugging Face's defaults filled in."""

    model_type: str
    arch: str  # llama.cpp architecture
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    n_head: int
    n_kv_head: int
    head_dim: int
    context_length: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # {"rope_type": "linear" | "yarn" | "llama3", ...}; None: plain RoPE
    tied: bool
    config: dict  # config.json as read
    model_config: ModelConfig


def read_hparams(model_dir: str | Path) -> Hparams:
    """Read `config.json` of a Llama / Mistral / Qwen2 / Qwen3 directory (through
    `ModelConfig`, so export accepts exactly what jielong loads)."""
    path = Path(model_dir) / "config.json"
    raw = _read_json(path)
    cfg = ModelConfig.from_hf(raw, where=str(path))
    return Hparams(
        model_type=cfg.model_type,
        arch=GGUF_ARCH[cfg.model_type],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_layers=cfg.num_hidden_layers,
        n_head=cfg.num_attention_heads,
        n_kv_head=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        context_length=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        rope_scaling=cfg.rope_scaling,
        tied=cfg.tie_word_embeddings,
        config=raw,
        model_config=cfg,
    )


def llama3_rope_factors(cfg: ModelConfig) -> np.ndarray:
    """Llama 3.1's rope scaling as llama.cpp reads it (`rope_freqs.weight`): for each of the
    head_dim/2 rotary frequencies, the number it is divided by — the plain frequency over
    the scaled one that `model.rope_frequencies` computes."""
    scaled, _ = rope_frequencies(cfg)
    plain, _ = rope_frequencies(dataclasses.replace(cfg, rope_scaling=None))
    return (plain / scaled).numpy().astype(np.float32)


# -- rotary layout -----------------------------------------------------------------------


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q_proj / k_proj weight (or bias) from Hugging Face's rotary
    layout to llama.cpp's "llama" one, within each head of d rows: HF pairs row i with row
    i + d/2, llama.cpp pairs rows 2i and 2i+1, so new row 2i = old row i and new row 2i+1 =
    old row i + d/2. Seen as (head, half, i): swap the half and i axes."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_qk`: llama.cpp's row order back to Hugging Face's."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# -- tensors ------------------------------------------------------------------------------


@dataclass
class _Tensor:
    name: str  # llama.cpp's name
    shape: tuple[int, ...]  # numpy order: (rows, columns)
    qtype: object  # gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]  # float32 values in llama.cpp's layout


def _read(sf, key: str, heads: int | None) -> np.ndarray:
    import torch

    x = sf.get_tensor(key).to(torch.float32).numpy()
    return permute_qk(x, heads) if heads else x


def _qtype(gguf, shape: tuple[int, ...], outtype: str):
    T = gguf.GGMLQuantizationType
    if len(shape) < 2 or outtype == "f32":
        return T.F32  # norms, biases, rope factors: tiny, and precision matters
    if outtype == "q8_0":
        block, _ = gguf.GGML_QUANT_SIZES[T.Q8_0]
        return T.Q8_0 if shape[-1] % block == 0 else T.F16
    return T.BF16 if outtype == "bf16" else T.F16


def _order(name: str) -> tuple:
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return (0 if name.startswith(("token_embd", "rope_freqs")) else 2, 0, name)


def _plan(gguf, hp: Hparams, shards: list[tuple[Path, object]], outtype: str) -> list[_Tensor]:
    """Every tensor to write, with its GGUF name, shape, type and a loader: checked
    against config.json before anything is written."""
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
            "qwen3": gguf.MODEL_ARCH.QWEN3}[hp.arch]
    names = gguf.get_tensor_name_map(arch, hp.num_layers)
    plan: dict[str, _Tensor] = {}
    for f, sf in shards:
        for key in sf.keys():
            if key.endswith("rotary_emb.inv_freq"):
                continue  # a buffer some old checkpoints kept; llama.cpp computes it
            if key == "lm_head.weight" and hp.tied:
                continue  # llama.cpp uses token_embd when there is no output.weight
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise UserError(f"{f}: tensor {key!r} has no counterpart in llama.cpp's "
                                f"{hp.arch} architecture; check model_type ({hp.model_type}) "
                                "in config.json")
            shape = tuple(sf.get_slice(key).get_shape())
            heads = None
            if hp.arch == "llama" and re.search(r"\.self_attn\.[qk]_proj\.", key):
                heads = hp.n_head if ".q_proj." in key else hp.n_kv_head
                if shape[0] != heads * hp.head_dim:
                    raise UserError(f"{f}: {key} has {shape[0]} rows, but config.json says "
                                    f"{heads} heads of head_dim {hp.head_dim}; the weights do "
                                    "not match config.json")
            if hp.arch != "llama" and name.endswith("attn_output.bias"):
                raise UserError(f"{f}: {key}: llama.cpp's {hp.arch} architecture has no bias on "
                                "the attention output projection, so this model cannot run there; "
                                "export a model trained without it (attention_bias false)")
            if name == "token_embd.weight" and shape[0] != hp.vocab_size:
                raise UserError(f"{f}: {key} has {shape[0]} rows but config.json's vocab_size "
                                f"is {hp.vocab_size}; the weights do not match config.json")
            plan[name] = _Tensor(name, shape, _qtype(gguf, shape, outtype),
                                 functools.partial(_read, sf, key, heads))

    def extra(name: str, values: np.ndarray) -> None:
        plan[name] = _Tensor(name, values.shape, gguf.GGMLQuantizationType.F32, lambda: values)

    rope = hp.rope_scaling or {}
    if rope.get("rope_type") == "llama3":
        extra("rope_freqs.weight", llama3_rope_factors(hp.model_config))
    if hp.arch == "qwen2":
        # llama.cpp's qwen2 graph requires the q/k/v biases; a Qwen2-shaped model trained
        # without them gets zeros, which is the same model.
        for b in range(hp.num_layers):
            for part, heads in (("q", hp.n_head), ("k", hp.n_kv_head), ("v", hp.n_kv_head)):
                if f"blk.{b}.attn_{part}.bias" not in plan:
                    extra(f"blk.{b}.attn_{part}.bias", np.zeros(heads * hp.head_dim, np.float32))

    required = ["token_embd.weight", "output_norm.weight"] + ([] if hp.tied else ["output.weight"])
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                 "ffn_gate", "ffn_up", "ffn_down"]
    if hp.arch == "qwen3":
        per_block += ["attn_q_norm", "attn_k_norm"]
    required += [f"blk.{b}.{p}.weight" for b in range(hp.num_layers) for p in per_block]
    missing = [n for n in required if n not in plan]
    if missing:
        hint = (" (lm_head.weight: set tie_word_embeddings to true in config.json if the model "
                "shares it with embed_tokens)" if missing == ["output.weight"] else "")
        raise UserError(f"{shards[0][0].parent}: the weights lack {len(missing)} tensor(s) a "
                        f"{hp.model_type} model with this config.json needs, e.g. llama.cpp's "
                        f"{missing[0]!r}{hint}")
    return sorted(plan.values(), key=lambda t: _order(t.name))


def _encode(gguf, x: np.ndarray, qtype) -> np.ndarray:
    T = gguf.GGMLQuantizationType
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == T.F32:
        return x
    if qtype == T.F16:
        return x.astype(np.float16)
    return gguf.quants.quantize(x, qtype)  # BF16, Q8_0: raw bytes, one row of blocks per row


# -- tokenizer -----------------------------------------------------------------------------


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
    tj = _read_json(path)
    tc = _optional_json(d / "tokenizer_config.json")
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
        template = _read_json(d / "chat_template.json").get("chat_template")

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


# -- Ollama Modelfile ----------------------------------------------------------------------

# Ollama's chat templates are Go templates. With .Messages Ollama renders the whole
# conversation at once: .System holds the system messages (joined; newer versions keep them
# in .Messages too, so the range skips them). The {{ else }} branch is the one-turn form
# (.System, .Prompt, .Response) of Ollama versions before .Messages; .Response stays inside
# it because some versions pass no Response with .Messages (it would print "<no value>").
_OLLAMA_TEMPLATES = {
    "chatml": """{{- if .Messages }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
{{ else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}{{ if .Response }}<|im_end|>
{{ end }}
{{- end }}""",
    "llama3": """{{- if .Messages }}
{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- end }}<|start_header_id|>assistant<|end_header_id|>

{{ else }}
{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

{{ .Response }}{{ if .Response }}<|eot_id|>{{ end }}
{{- end }}""",
    # Mistral puts the system prompt into the last user turn, as its own templates do.
    "mistral": """{{- if .Messages }}
{{- range $i, $m := .Messages }}
{{- if eq $m.Role "user" }}[INST] {{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}

{{ end }}{{ $m.Content }}[/INST]
{{- else if eq $m.Role "assistant" }} {{ $m.Content }}</s>
{{- end }}
{{- end }}
{{- else }}[INST] {{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}[/INST]{{ if .Response }} {{ .Response }}</s>{{ end }}
{{- end }}""",
}
# A stop string per format besides the end-of-turn token: the start of a next turn.
_FORMAT_STOPS = {"chatml": "<|im_start|>", "llama3": "<|start_header_id|>", "mistral": "[INST]"}


def chat_format(template: str | list | None) -> str | None:
    """"chatml", "llama3" or "mistral" when the Jinja chat template is recognisably one of
    them, else None."""
    if isinstance(template, list):
        template = "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    if not template:
        return None
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "[INST]" in template:
        return "mistral"
    return None


def _param(value) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else f"{value:g}"


def ollama_modelfile(gguf_file: str, vocab: Vocab, generation: dict | None = None,
                     context_length: int | None = None) -> str:
    """An Ollama Modelfile for `gguf_file` (a name beside the Modelfile)."""
    generation = generation or {}
    fmt = chat_format(vocab.chat_template)
    lines = ["# Ollama Modelfile written by `jielong export gguf`.",
             "# Load it with: ollama create NAME -f Modelfile", "",
             f"FROM ./{gguf_file}", ""]
    if fmt:
        lines += [f'TEMPLATE """{_OLLAMA_TEMPLATES[fmt]}"""', ""]
    else:
        lines += ["# No TEMPLATE: jielong does not recognise this model's chat format, so Ollama",
                  "# takes the chat template from the GGUF metadata (tokenizer.chat_template)", ""]
    stops: list[str] = []
    for key in ("eot", "eos"):
        if key in vocab.special:
            stops.append(vocab.tokens[vocab.special[key]])
    eos_ids = generation.get("eos_token_id")  # one id, or several that all end a reply
    for i in eos_ids if isinstance(eos_ids, list) else [eos_ids]:
        if isinstance(i, int) and 0 <= i < len(vocab.tokens):
            stops.append(vocab.tokens[i])
    if fmt:
        stops.append(_FORMAT_STOPS[fmt])
    for s in dict.fromkeys(stops):
        lines.append(f"PARAMETER stop {_param(s)}")
    if generation.get("do_sample") is False:
        lines.append("PARAMETER temperature 0")  # greedy decoding
    elif isinstance(generation.get("temperature"), int | float):
        lines.append(f"PARAMETER temperature {_param(generation['temperature'])}")
    for hf, ollama in (("top_p", "top_p"), ("top_k", "top_k")):
        v = generation.get(hf)
        if isinstance(v, int | float) and not isinstance(v, bool):
            lines.append(f"PARAMETER {ollama} {_param(v)}")
    if context_length and context_length < 8192:
        # Ollama's default context may be longer than the model was trained for.
        lines.append(f"PARAMETER num_ctx {context_length}")
    return "\n".join(lines) + "\n"


# -- export ----------------------------------------------------------------------------------

_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def _output_path(d: Path, out: str | Path | None, outtype: str) -> Path:
    name = f"{d.resolve().name}-{outtype}.gguf"
    if out is None:
        return d / "gguf" / name
    out = Path(out)
    return out if out.suffix.lower() == ".gguf" else out / name


def _add_metadata(w, gguf, hp: Hparams, vocab: Vocab, name: str, outtype: str,
                  generation: dict) -> None:
    w.add_name(name)
    w.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[outtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(hp.vocab_size)
    w.add_context_length(hp.context_length)
    w.add_embedding_length(hp.hidden_size)
    w.add_block_count(hp.num_layers)
    w.add_feed_forward_length(hp.intermediate_size)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_kv_head)
    w.add_key_length(hp.head_dim)
    w.add_value_length(hp.head_dim)
    w.add_layer_norm_rms_eps(hp.rms_norm_eps)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_rope_dimension_count(hp.head_dim)
    rope = hp.rope_scaling
    if rope:
        kind = rope["rope_type"]
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rope.get("factor", 1.0)))
        elif kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(rope.get("factor", 1.0)))
            w.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings")
                                                or hp.context_length))
        # llama3: written as the rope_freqs.weight tensor instead (see _plan).

    w.add_tokenizer_model(vocab.model)
    if vocab.pre:
        w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    adders = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "pad": w.add_pad_token_id,
              "unk": w.add_unk_token_id, "eot": w.add_eot_token_id}
    for key, token_id in vocab.special.items():
        adders[key](token_id)
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)

    # Sampling defaults (llama.cpp reads general.sampling.*; Ollama takes the Modelfile's).
    if isinstance(generation.get("temperature"), int | float) and generation.get("do_sample") is not False:
        w.add_sampling_temp(float(generation["temperature"]))
    if isinstance(generation.get("top_p"), int | float):
        w.add_sampling_top_p(float(generation["top_p"]))
    if isinstance(generation.get("top_k"), int) and not isinstance(generation.get("top_k"), bool):
        w.add_sampling_top_k(generation["top_k"])


def _context_length(hp: Hparams, where: Path, asked: int | None) -> int:
    """The context the GGUF declares: the model's, or `asked` (at most the model's). A model
    with a sliding window is refused past the window: llama.cpp's llama, qwen2 and qwen3
    architectures read no `{arch}.attention.sliding_window` and attend over the whole
    context, so beyond the window their logits are not the model's."""
    limit = hp.context_length
    if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int)
                              or not 0 < asked <= limit):
        raise UserError(f"--context_length {asked}: give a whole number from 1 to the model's "
                        f"context, {limit}")
    context = limit if asked is None else asked
    windows = [w for w in hp.model_config.layer_windows() if w is not None]
    if windows and context > min(windows):
        w = min(windows)
        raise UserError(
            f"{where}: sliding_window={w} on {len(windows)} of {hp.num_layers} layers, but "
            f"llama.cpp's {hp.arch} architecture attends over the whole context, so past {w} "
            f"tokens the GGUF would give other logits; export with --context_length {w} (or "
            "less), where the two agree")
    return context


def export_gguf(model_dir: str | Path, out: str | Path | None = None, outtype: str = "f16",
                context_length: int | None = None) -> Path:
    """Write `model_dir` (a Llama / Mistral / Qwen2 / Qwen3 Hugging Face directory) as one
    GGUF file for llama.cpp and Ollama, with an Ollama `Modelfile` beside it. `out` is a
    .gguf path or a folder (default: MODEL_DIR/gguf/); `context_length` caps the context the
    file declares (default: the model's); returns the .gguf path."""
    if outtype not in OUTTYPES:
        raise UserError(f"outtype {outtype!r} is not one of {', '.join(OUTTYPES)}; "
                        "pass --outtype f16 (or f32, bf16, q8_0)")
    from jielong.checkpoint import check_model_dir, weight_files

    d = check_model_dir(model_dir)
    gguf = _gguf()
    from safetensors import safe_open
    from tqdm import tqdm

    hp = read_hparams(d)
    hp.context_length = _context_length(hp, d / "config.json", context_length)
    generation = _optional_json(d / "generation_config.json")
    try:
        vocab = read_vocab(d, hp.vocab_size, hp.config, generation)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a hand-edited file
        raise UserError(f"{d / 'tokenizer.json'}: unexpected content ({type(e).__name__}: {e}); "
                        "re-save the tokenizer with `tokenizers` or transformers") from None
    path = _output_path(d, out, outtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = d.resolve().name

    with ExitStack() as stack:
        shards = []
        for f in weight_files(d):
            if f.suffix != ".safetensors":
                raise UserError(f"{f}: GGUF export reads safetensors weights only; convert the "
                                "model first (load it and save it with jielong or "
                                "save_pretrained(safe_serialization=True))")
            try:
                shards.append((f, stack.enter_context(safe_open(str(f), framework="pt"))))
            except Exception as e:  # missing shard, truncated or not safetensors
                raise UserError(f"{f}: cannot read this safetensors file ({e}); re-save the "
                                "model") from None
        plan = _plan(gguf, hp, shards, outtype)
        with atomic_path(path) as tmp:
            w = gguf.GGUFWriter(tmp, hp.arch)
            try:
                _add_metadata(w, gguf, hp, vocab, name, outtype, generation)
                # Two passes: the header lists every tensor's shape and size first, then the
                # data follows one tensor at a time, so only one is ever in memory.
                for t in plan:
                    nbytes = math.prod(gguf.quants.quant_shape_to_byte_shape(t.shape, t.qtype))
                    w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes,
                                      raw_dtype=t.qtype)
                w.write_header_to_file()
                w.write_kv_data_to_file()
                w.write_ti_data_to_file()
                for t in tqdm(plan, desc="export gguf", unit="tensor", disable=None, leave=False):
                    w.write_tensor_data(_encode(gguf, t.load(), t.qtype))
            finally:
                w.close()

    modelfile = path.parent / "Modelfile"
    write_text(modelfile, ollama_modelfile(path.name, vocab, generation, hp.context_length))
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.1f} MB, {len(plan)} tensors, {outtype}) and {modelfile}; "
          f"for Ollama: ollama create {_ollama_name(name)} -f {modelfile}")
    return path


def _ollama_name(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "model"


def gguf_cmd(model: str, out: str | None = None,
             outtype: Literal["f32", "f16", "bf16", "q8_0"] = "f16",
             context_length: int | None = None) -> None:
    """Export a model as one GGUF file for llama.cpp and Ollama, with an Ollama Modelfile.

    Args:
        model: A model folder (config.json, safetensors weights, tokenizer.json) of a Llama,
            Mistral, Qwen2 or Qwen3 model, e.g. one written by `jielong pretrain`.
        out: A .gguf file to write, or a folder for MODEL-OUTTYPE.gguf (default: MODEL/gguf/).
        outtype: Tensor type: f32, f16, bf16, or q8_0 (8-bit, about half the size of f16).
        context_length: The context the file declares (default: the model's). A model with a
            sliding window (Mistral v0.1, some Qwen) needs one no longer than the window:
            llama.cpp attends over the whole context for these architectures.
    """
    export_gguf(model, out, outtype, context_length)

