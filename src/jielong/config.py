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

from jielong.errors import UserError, json_problem

# model_type -> the transformers class that runs it (written into config.json).
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
FULL, SLIDING = "full_attention", "sliding_attention"
LAYER_TYPES = (FULL, SLIDING)


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
    # Which layers the window applies to: one of LAYER_TYPES per layer (transformers 5's
    # field; Qwen2/Qwen3 window only the layers from max_window_layers on). None: every layer
    # alike, windowed when sliding_window is set.
    layer_types: list[str] | None = None
    attention_bias: bool = False  # q/k/v bias (Qwen2 always; Llama/Qwen3 also bias o_proj)
    qk_norm: bool = False  # Qwen3 RMS-normalises q and k per head
    tie_word_embeddings: bool = True
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | None = 0
    pad_token_id: int | None = 0
    initializer_range: float = 0.02
    torch_dtype: str = "float32"  # the dtype the weights are stored in
    # Weight-only int8/int4 linear layers (jielong.quant); None: plain float weights.
    quantization_config: dict | None = None

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.model_type == "qwen2":
            self.attention_bias = True  # Qwen2 has q/k/v biases whatever the config says
        if self.model_type == "qwen3":
            self.qk_norm = True
        if self.rope_scaling is not None:
            self.rope_scaling = _rope_scaling(self.rope_scaling)
        types = self.layer_types
        if (isinstance(types, list | tuple) and len(types) == self.num_hidden_layers
                and all(t == types[0] for t in types) and types and types[0] in LAYER_TYPES):
            if types[0] == FULL:  # no layer is windowed: the window means nothing
                self.sliding_window = None
            self.layer_types = None  # every layer alike: the plain form
        elif isinstance(types, tuple):
            self.layer_types = list(types)
        self.validate()

    def layer_windows(self) -> list[int | None]:
        """Each layer's attention window in tokens; None where a layer sees the whole past."""
        types = self.layer_types or [SLIDING] * self.num_hidden_layers
        return [self.sliding_window if t == SLIDING else None for t in types]

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
        if self.sliding_window is not None and self.model_type == "llama":
            raise bad("Llama has no sliding-window attention (transformers would ignore it); "
                      "use model_type mistral for a windowed model, or set sliding_window null")
        if self.layer_types is not None:
            L = self.num_hidden_layers
            if (not isinstance(self.layer_types, list | tuple) or len(self.layer_types) != L
                    or any(t not in LAYER_TYPES for t in self.layer_types)):
                raise bad(f"layer_types must list {FULL!r} or {SLIDING!r} for each of the {L} "
                          f"layers, not {self.layer_types!r}")
            if self.sliding_window is None:
                raise bad("layer_types has sliding_attention layers but sliding_window is null")

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
        d.pop("layer_types")
        if self.quantization_config is None:
            d.pop("quantization_config")
        if self.model_type == "qwen2":
            d.pop("attention_bias")  # not a Qwen2 option
        if self.model_type in ("qwen2", "qwen3"):
            windowed = [w is not None for w in self.layer_windows()]
            d.update(use_sliding_window=any(windowed))
            if any(windowed):
                # transformers 5 reads layer_types; older versions (and 5 when it is absent)
                # window the layers from max_window_layers on, which is exact when the
                # windowed layers are the last ones, as Qwen's own configs have them.
                d.update(max_window_layers=windowed.index(True),
                         layer_types=[SLIDING if w else FULL for w in windowed])
        if self.model_type == "mistral" and self.layer_types is not None:
            d.update(layer_types=self.layer_types)  # transformers then runs it as Ministral
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
        try:
            d["sliding_window"], d["layer_types"] = _windows(d, model_type)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        except TypeError:
            raise UserError(f"{where}: sliding_window={d.get('sliding_window')!r}, "
                            f"num_hidden_layers={d.get('num_hidden_layers')!r} and "
                            f"max_position_embeddings={d.get('max_position_embeddings')!r} "
                            "must be whole numbers") from None
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
            raise UserError(f"{path}:{e.lineno}: config.json is not valid JSON ({json_problem(e)})") from None


def _windows(d: dict, model_type: str) -> tuple[int | None, list | None]:
    """(sliding_window, layer_types) as transformers 5's AutoModelForCausalLM reads a
    config.json: Llama has no window; Mistral windows the layers layer_types marks (Auto
    then runs it as Ministral), else every layer; Qwen2/Qwen3 only with use_sliding_window,
    on the layers layer_types marks, else on those from max_window_layers (default 28) on."""
    window = d.get("sliding_window")
    if model_type == "llama" or (model_type in ("qwen2", "qwen3")
                                 and not d.get("use_sliding_window")):
        window = None
    if window is not None and window >= d.get("max_position_embeddings", 0):
        window = None  # a window as long as the context changes nothing
    types = d.get("layer_types")
    if window is None or (model_type == "mistral" and types is None):
        return window, None
    if types is None:
        first = d.get("max_window_layers", 28)  # Qwen2Config's and Qwen3Config's default
        if isinstance(first, bool) or not isinstance(first, int):
            raise UserError(f"impossible model config: max_window_layers={first!r} must be a "
                            "whole number")
        types = [SLIDING if i >= first else FULL for i in range(d.get("num_hidden_layers", 0))]
    return window, types


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
