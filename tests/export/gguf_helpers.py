"""What the GGUF export tests share: tiny models of each family, and reading a GGUF back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch

from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.model import Transformer
from jielong.tokenizer import Tokenizer, train_tokenizer

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType

TEXTS = [
    "The weather is nice today, so we walk in the park.",
    "Language models keep choosing the next token.",
    "今天天氣很好，我們去公園散步。",
    "今天天气很好，我们去公园散步。",
    "接龍就是一個接一個地選下一個字。",
] * 10


FAMILIES = {  # name: preset overrides
    "llama": dict(model_type="llama", tie_word_embeddings=False),
    "llama-tied": dict(model_type="llama", tie_word_embeddings=True),
    "llama-bias": dict(model_type="llama", tie_word_embeddings=True, attention_bias=True),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True, attention_bias=True),
    "qwen3": dict(model_type="qwen3", tie_word_embeddings=False, qk_norm=True),
    "mistral": dict(model_type="mistral", tie_word_embeddings=False),
}


ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}


MATRIX_TYPE = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}


def make_tokenizer() -> Tokenizer:
    """The small byte-level tokenizer most tests export (train it once per module)."""
    return train_tokenizer(TEXTS, vocab_size=300)


def fresh_copy(tok: Tokenizer) -> Tokenizer:
    """A copy that a test may change."""
    return Tokenizer(tokenizers.Tokenizer.from_str(tok.backend.to_str()), json.loads(json.dumps(tok.config)))


def make_model(d: Path, tok: Tokenizer | None, seed: int = 0, generation: dict | None = None,
               **overrides) -> Path:
    torch.manual_seed(seed)
    vocab = tok.vocab_size if tok is not None else 300
    cfg = preset("test", **{"vocab_size": vocab, **overrides})
    model = Transformer(cfg)
    with torch.no_grad():  # norms start at 1 and biases at 0: make them worth checking
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    save_model(d, model, tok, generation=generation)
    return d


def read(path: Path) -> tuple[dict, dict]:
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items()}, {t.name: t for t in r.tensors}


def values(t) -> np.ndarray:
    """A tensor's values as float32 in numpy (rows, columns) order."""
    if t.tensor_type in (T.F32, T.F16):
        return np.asarray(t.data, dtype=np.float32)
    return gguf.quants.dequantize(t.data, t.tensor_type)


def hf_to_gguf(n_layers: int, tied: bool, bias: bool, qk_norm: bool,
               out_bias: bool = False) -> dict[str, str]:
    """The names llama.cpp gives Hugging Face's tensors (written out by hand)."""
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight"}
    if not tied:
        names["lm_head.weight"] = "output.weight"
    for b in range(n_layers):
        hf, g = f"model.layers.{b}.", f"blk.{b}."
        names |= {
            hf + "input_layernorm.weight": g + "attn_norm.weight",
            hf + "post_attention_layernorm.weight": g + "ffn_norm.weight",
            hf + "self_attn.q_proj.weight": g + "attn_q.weight",
            hf + "self_attn.k_proj.weight": g + "attn_k.weight",
            hf + "self_attn.v_proj.weight": g + "attn_v.weight",
            hf + "self_attn.o_proj.weight": g + "attn_output.weight",
            hf + "mlp.gate_proj.weight": g + "ffn_gate.weight",
            hf + "mlp.up_proj.weight": g + "ffn_up.weight",
            hf + "mlp.down_proj.weight": g + "ffn_down.weight",
        }
        if bias:
            for p in "qkv":
                names[hf + f"self_attn.{p}_proj.bias"] = g + f"attn_{p}.bias"
            if out_bias:  # Llama and Qwen3 with attention_bias; Qwen2 has none on o_proj
                names[hf + "self_attn.o_proj.bias"] = g + "attn_output.bias"
        if qk_norm:
            names[hf + "self_attn.q_norm.weight"] = g + "attn_q_norm.weight"
            names[hf + "self_attn.k_norm.weight"] = g + "attn_k_norm.weight"
    return names


def patch_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ '[INST] ' + m['content'] + '[/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}"
    "{% endif %}{% endfor %}")


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
