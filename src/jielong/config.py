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
    # Longer context by rescaling rotary frequencies: None, or HF's dict, e.g. Llama 3.1's
    # {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    #  "original_max_position_embeddings": 8192}; also "linear" and "yarn".
    rope_scaling: dict | None = None
    sliding_window: int | None = None  # Mistral v0.1: each token sees this many tokens back
    attention_bias: bool = False  # q/k/v bias (Qwen2 always; Llama/Qwen3 also bias o_proj)
    qk_norm: bool = False  # Qwen3 RMS-normalises q and k per head
    tie_word_embeddings: bool = True
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | None = 0
    pad_token_id: int | None = 0
    initializer_range: float = 0.02
    torch_dtype: str = "float32"  # the dtype the weights are stored in

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.model_type == "qwen2":
            self.attention_bias = True  # Qwen2 has q/k/v biases whatever the config says
        if self.model_type == "qwen3":
            self.qk_norm = True
        if self.rope_scaling is not None:
            self.rope_scaling = _rope_scaling(self.rope_scaling)
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
        if self.model_type == "mistral" and self.attention_bias:
            raise bad("Mistral has no attention bias; set attention_bias false")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise bad(f"sliding_window={self.sliding_window} must be positive or null")

    @property
    def num_params(self) -> int:
        h, i, L, v = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h
        if self.attention_bias:
            attn += q + 2 * kv + (h if self.model_type != "qwen2" else 0)
        layer = attn + 3 * h * i + 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return v * h * (1 if self.tie_word_embeddings else 2) + L * layer + h

    def to_hf(self) -> dict:
        """config.json in the layout both transformers 4 and 5 read (5 converts
        rope_theta + rope_scaling into its rope_parameters)."""
        d = asdict(self)
        d.pop("qk_norm")  # implied by model_type qwen3
        d.update(architectures=[ARCHITECTURES[self.model_type]], hidden_act="silu", use_cache=True)
        if self.model_type == "qwen2":
            d.pop("attention_bias")  # not a Qwen2 option
            d.update(use_sliding_window=self.sliding_window is not None)
        if self.model_type == "qwen3":
            d.update(use_sliding_window=False)
        if self.model_type == "llama":
            d.update(mlp_bias=False)
            d.pop("sliding_window")
        return d

    @classmethod
    def from_hf(cls, d: dict, where: str = "config.json") -> ModelConfig:
        """Read a transformers config.json (4.x or 5.x layout); `where` names it in errors."""
        d = dict(d)
        model_type = d.get("model_type")
        if model_type not in ARCHITECTURES:
            arch = ", ".join(d.get("architectures") or []) or "unknown architecture"
            raise UserError(f"{where}: model_type {model_type!r} ({arch}) is not supported; jielong "
                            f"runs the {', '.join(ARCHITECTURES)} families (Llama 2/3, Mistral, "
                            "Qwen2/2.5, Qwen3)")
        if d.get("hidden_act", "silu") != "silu" or d.get("mlp_bias"):
            raise UserError(f"{where}: hidden_act={d.get('hidden_act')!r}, mlp_bias="
                            f"{d.get('mlp_bias')} is not the SwiGLU MLP jielong implements")
        rope = d.get("rope_parameters")  # transformers >= 5: theta and scaling together
        if isinstance(rope, dict):
            d.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
            d.setdefault("rope_scaling", rope)
        if (d.get("rope_scaling") or {}).get("partial_rotary_factor", 1.0) != 1.0:
            raise UserError(f"{where}: partial rotary embeddings are not supported")
        if model_type == "qwen2":
            if not d.get("use_sliding_window"):
                d["sliding_window"] = None
            elif d.get("max_window_layers", 0) < d.get("num_hidden_layers", 0):
                raise UserError(f"{where}: Qwen2 sliding-window attention on only some layers "
                                "(max_window_layers) is not supported; set use_sliding_window false")
        if d.get("sliding_window") is not None and d["sliding_window"] >= d.get(
                "max_position_embeddings", 0):
            d["sliding_window"] = None  # a window longer than the context changes nothing
        if "dtype" in d and "torch_dtype" not in d:
            d["torch_dtype"] = d["dtype"]
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["torch_dtype"] = str(kw.get("torch_dtype") or "float32").removeprefix("torch.")
        if isinstance(kw.get("eos_token_id"), list):  # Llama-3 style: several EOS ids
            kw["eos_token_id"] = kw["eos_token_id"][0] if kw["eos_token_id"] else None
        try:
            return cls(**kw)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        except TypeError as e:
            raise UserError(f"{where}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            return cls.from_hf(json.loads(path.read_text(encoding="utf-8")), where=str(path))
        except FileNotFoundError:
            raise UserError(f"{path}: not found; a model directory needs a config.json") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: config.json is not valid JSON ({e.msg})") from None


ROPE_TYPES = ("linear", "llama3", "yarn")
_ROPE_REQUIRED = {"linear": ("factor",), "yarn": ("factor", "original_max_position_embeddings"),
                  "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                             "original_max_position_embeddings")}


def _rope_scaling(r: dict) -> dict | None:
    """Check a rope-scaling dict; None for plain RoPE. Old configs say "type" for "rope_type"."""
    r = {k: v for k, v in r.items() if k not in ("rope_theta", "type")} | {
        "rope_type": r.get("rope_type", r.get("type", "default"))}
    kind = r["rope_type"]
    if kind == "default":
        return None
    if kind not in ROPE_TYPES:
        raise UserError(f"impossible model config: rope_scaling type {kind!r} is not supported; "
                        f"jielong implements {', '.join(ROPE_TYPES)}")
    missing = [k for k in _ROPE_REQUIRED[kind] if r.get(k) is None]
    if missing:
        raise UserError(f"impossible model config: {kind} rope_scaling needs {', '.join(missing)}")
    return r


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
