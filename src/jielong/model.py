"""The transformer: a Llama-family decoder, whole, in one file.

RoPE, RMSNorm, SwiGLU, grouped-query attention through `scaled_dot_product_attention`,
optional q/k/v bias (Qwen2) and per-head QK-norm (Qwen3), tied or untied embeddings, and a
KV cache for decoding. Parameter names are exactly Hugging Face's Llama names
(`model.layers.0.self_attn.q_proj.weight`, …), so a checkpoint is a plain state dict that
transformers' LlamaForCausalLM loads as is, and vice versa.

    from jielong.config import preset
    from jielong.model import Transformer
    model = Transformer(preset("test"))
    logits = model(torch.randint(0, 4096, (1, 16)))   # (batch, time, vocab)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from jielong.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and cast back before the weight, as Llama does: under bf16 this
        # rounding order matters for matching reference logits.
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def rope_frequencies(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, float]:
    """Rotary inverse frequencies (head_dim/2,) and the factor cos/sin are scaled by.

    Plain RoPE: theta^(-2i/d). With `rope_scaling` (for contexts longer than pretraining):
    linear divides every frequency by `factor`; llama3 (Llama 3.1) divides only the low
    frequencies, whose wavelength exceeds the original context, blending smoothly in between;
    yarn (Peng et al. 2023) blends per dimension by how many rotations it makes over the
    original context, and scales attention by 0.1·ln(factor) + 1.
    """
    d = cfg.head_dim
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2, device=device).float() / d)
    r = cfg.rope_scaling
    if r is None:
        return inv_freq, 1.0
    factor = float(r["factor"])
    if r["rope_type"] == "linear":
        return inv_freq / factor, 1.0
    if r["rope_type"] == "llama3":
        old = r["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / r["low_freq_factor"], old / r["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old / wavelen - r["low_freq_factor"]) / (r["high_freq_factor"] - r["low_freq_factor"])
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        middle = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(middle, blended, scaled), 1.0
    # yarn
    old, theta = r["original_max_position_embeddings"], cfg.rope_theta

    def dim_for(rotations: float) -> float:  # the dimension that turns `rotations` times
        return d * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_for(r.get("beta_fast") or 32), dim_for(r.get("beta_slow") or 1)
    if r.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    ramp = ((torch.arange(d // 2, device=device).float() - low) / max(high - low, 1e-3)).clamp(0, 1)
    inv_freq = inv_freq / factor * ramp + inv_freq * (1 - ramp)
    scale = r.get("attention_factor")
    if scale is None:
        def mscale(m: float) -> float:
            return 0.1 * m * math.log(factor) + 1.0 if factor > 1 else 1.0

        m, m_all = r.get("mscale"), r.get("mscale_all_dim")
        scale = mscale(m) / mscale(m_all) if m and m_all else mscale(1.0)
    return inv_freq, float(scale)


def rope_cos_sin(inv_freq: torch.Tensor, scale: float, positions: torch.Tensor):
    """cos and sin for `positions` ((T,) or (B, T)), in HF's half layout: (..., head_dim)."""
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)  # rotate the first and second halves together
    return emb.cos() * scale, emb.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Preallocated keys and values for every layer; `pos` is how many positions are filled."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        shape = (cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(h, self.n_head * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=bias)
        # Llama/Qwen3 with attention_bias put one on the output too; Qwen2 does not.
        self.o_proj = nn.Linear(self.n_head * self.head_dim, h, bias=bias and cfg.model_type != "qwen2")
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache: KVCache | None, mask: torch.Tensor | None, causal: bool):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        if self.n_kv != self.n_head:  # grouped-query attention: share each k/v head
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        # a cache may hand back float32 keys for a bf16 model (jielong.infer.kv.pool_dtype)
        y = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask, is_causal=causal)
        return self.o_proj(y.to(x.dtype).transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, mask, causal):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, mask, causal)
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_mask(window: int | None, T: int, start: int, given: torch.Tensor | None,
                   queries: torch.Tensor | None) -> tuple[torch.Tensor | None, bool]:
    """(mask, causal) for the layers with attention `window` (None: the whole past), for T
    queries at positions start… when no mask is `given`. A given mask (…, T, keys) is
    narrowed to the window, measured from each query's key index `queries` ((T,) or (B, T))."""
    if given is None:
        S = start + T
        windowed = window is not None and S > window
        if T == 1 and not windowed:
            return None, False  # one query that sees every key
        if start == 0 and not (window is not None and T > window):
            return None, True  # SDPA's fast causal path
        q = torch.arange(start, S, device=queries.device)[:, None]
        k = torch.arange(S, device=queries.device)[None, :]
        return (k <= q) & ((k > q - window) if windowed else True), False
    S = given.shape[-1]
    if window is None or S <= window:
        return given, False
    near = torch.arange(S, device=given.device) > queries[..., None] - window  # (B,) T, S
    return given & (near[:, None] if near.dim() == 3 else near), False


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
            layers=nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)),
            norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        inv_freq, self.rope_scale = rope_frequencies(cfg, device="cpu")  # tiny; .to() moves it
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.apply(self._init_weights)
        # Residual projections start smaller so the residual stream's variance does not grow
        # with depth (GPT-2 paper, section 2.3).
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=cfg.initializer_range / math.sqrt(2 * cfg.num_hidden_layers))

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=self.config.initializer_range)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
        last_only: bool = False,
        hidden_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab), or (B, 1, vocab) with `last_only`.

        positions: (T,) or (B, T) rotary positions; default: continue from the cache.
        attn_mask: boolean (B, 1, T, keys), True where a query may look; default: causal.
        hidden_only: return the final hidden states instead (for fused losses).
        """
        x = self.hidden_states(input_ids, positions, cache, attn_mask)
        if hidden_only:
            return x
        return self.lm_head(x[:, -1:] if last_only else x)

    def hidden_states(self, input_ids, positions=None, cache=None, attn_mask=None,
                      collect: list | None = None) -> torch.Tensor:
        """The final normalised hidden states (B, T, hidden), before the output projection.

        collect: a list that receives the residual stream before the final norm: the
        embeddings, then each layer's output (num_hidden_layers + 1 tensors), for looking
        inside (jielong.inspect). The return value is the same with or without it."""
        B, T = input_ids.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {start + T} tokens is longer than the model's "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        if positions is None:
            positions = torch.arange(start, start + T, device=input_ids.device)
        cos, sin = rope_cos_sin(self.inv_freq, self.rope_scale, positions)
        if cos.dim() == 3:  # per-row positions: broadcast over heads
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        # Each query's key index: the cache's own rule (the engine's rows hold position i at
        # key i), else the queries are the last T of the keys.
        if attn_mask is not None and not getattr(cache, "keys_at_positions", False):
            S = attn_mask.shape[-1]
            queries = torch.arange(S - T, S, device=input_ids.device)
        else:
            queries = positions
        windows = self.config.layer_windows()
        masks = {w: attention_mask(w, T, start, attn_mask, queries) for w in set(windows)}
        x = self.model.embed_tokens(input_ids)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # as HF does, for matching low-precision logits
        if collect is not None:
            collect.append(x)
        for layer, w in zip(self.model.layers, windows, strict=True):
            x = layer(x, cos, sin, cache, *masks[w])
            if collect is not None:
                collect.append(x)
        if cache is not None:
            cache.pos += T
        return self.model.norm(x)


def mean_pooled(model: Transformer, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, hidden) float32 text embeddings from a decoder: the final hidden states averaged
    over each row's `lengths` real tokens, L2-normalised. input_ids is right-padded (any pad
    id: causal attention keeps the padding out of the real tokens' states). What
    /v1/embeddings returns and `jielong.rag.embed.DecoderEmbedder` and `jielong train embed`
    use; differentiable (no inference mode here)."""
    h = model(input_ids, hidden_only=True).float()
    real = (torch.arange(h.shape[1], device=h.device) < lengths.to(h.device)[:, None]).float()
    v = (h * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
    return F.normalize(v, dim=-1)
