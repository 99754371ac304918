"""Model configuration with Hugging Face field names, and named size presets.

A `ModelConfig` round-trips through `config.json`: `to_hf()` writes what transformers'
LlamaForCausalLM (or Qwen2/Qwen3/Mistral) reads, `from_hf()` reads it back. Presets are
the sizes we train from scratch:

    test   2 layers, width 64     unit tests (milliseconds a step)
    demo   4 layers, width 128    `make demo`: trains in minutes on a laptop CPU
    124m   12 layers, width 768   GPT-2-small class, for one GPU
    350m   24 layers, width 1024  GPT-2-medium class
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from jielong.errors import UserError

# model_type -> the transformers class that runs it (written into config.json).
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False  # Qwen2 puts a bias on q/k/v
    qk_norm: bool = False  # Qwen3 RMS-normalises q and k per head
    tie_word_embeddings: bool = True
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | None = 0
    pad_token_id: int | None = 0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    def validate(self) -> None:
        def bad(msg: str) -> UserError:
            return UserError(f"impossible model config: {msg}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise bad(f"{name}={getattr(self, name)} must be positive")
        if self.num_attention_heads % self.num_key_value_heads:
            raise bad(f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                      f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise bad(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.model_type not in ARCHITECTURES:
            raise bad(f"model_type {self.model_type!r} is not one of {', '.join(ARCHITECTURES)}")

    @property
    def num_params(self) -> int:
        h, i, L, v = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.attention_bias else 0)
        layer = attn + 3 * h * i + 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return v * h * (1 if self.tie_word_embeddings else 2) + L * layer + h

    def to_hf(self) -> dict:
        d = asdict(self)
        d.pop("qk_norm")  # implied by model_type qwen3
        d.update(
            architectures=[ARCHITECTURES[self.model_type]],
            hidden_act="silu",
            torch_dtype="float32",
            rope_scaling=None,
            use_cache=True,
        )
        if self.model_type in ("qwen2", "qwen3", "mistral"):
            d.update(use_sliding_window=False, sliding_window=None)
        return d

    @classmethod
    def from_hf(cls, d: dict) -> ModelConfig:
        d = dict(d)
        if "rope_parameters" in d and "rope_theta" not in d:  # transformers >= 5 layout
            d["rope_theta"] = (d["rope_parameters"] or {}).get("rope_theta", 10000.0)
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["qk_norm"] = d.get("model_type") == "qwen3"
        if isinstance(kw.get("eos_token_id"), list):  # Llama-3 style: several EOS ids
            kw["eos_token_id"] = kw["eos_token_id"][0]
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            return cls.from_hf(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UserError(f"{path}: not found; a model directory needs a config.json") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: config.json is not valid JSON ({e.msg})") from None


PRESETS: dict[str, dict] = {
    "test": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "demo": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    # GPT-2's vocabulary size rounded up to a multiple of 128 (faster matmuls).
    "124m": dict(vocab_size=50304, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024),
    "350m": dict(vocab_size=50304, hidden_size=1024, intermediate_size=2688, num_hidden_layers=24,
                 num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=1024),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A named size, with any field overridden (e.g. vocab_size from the tokenizer)."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
