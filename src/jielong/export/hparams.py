"""config.json as llama.cpp's hyperparameters, and the context a GGUF file may declare."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jielong.config import ModelConfig
from jielong.errors import UserError
from jielong.export.jsonfile import read_json
from jielong.model import rope_frequencies

# HF model_type -> the llama.cpp architecture that runs it.
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


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
    raw = read_json(path)
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


def declared_context(hp: Hparams, where: Path, asked: int | None) -> int:
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
