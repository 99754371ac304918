"""The model against transformers' reference implementations, and its KV cache."""

import pytest
import torch

from jielong.config import ModelConfig, preset
from jielong.errors import UserError
from jielong.model import KVCache, Transformer

transformers = pytest.importorskip("transformers")


def hf_model(cfg: ModelConfig):
    hf_cfg = {k: v for k, v in cfg.to_hf().items() if k not in ("architectures", "model_type")}
    cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
           "qwen3": transformers.Qwen3ForCausalLM, "mistral": transformers.MistralForCausalLM}
    conf = transformers.AutoConfig.for_model(cfg.model_type, **hf_cfg)
    return cls[cfg.model_type](conf).eval()


@pytest.mark.parametrize("model_type, tied", [("llama", False), ("llama", True), ("qwen2", True),
                                              ("qwen3", False), ("mistral", False)])
def test_logits_match_transformers(model_type, tied):
    torch.manual_seed(0)
    cfg = preset("test", vocab_size=320, model_type=model_type, tie_word_embeddings=tied,
                 attention_bias=model_type == "qwen2", qk_norm=model_type == "qwen3")
    ours = Transformer(cfg).eval()
    if cfg.attention_bias:  # non-zero biases, so a missing bias would show
        for n, p in ours.named_parameters():
            if n.endswith("bias"):
                torch.nn.init.normal_(p, std=0.1)
    ref = hf_model(cfg)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randint(0, 320, (2, 37))
    with torch.no_grad():
        diff = (ours(x) - ref(x).logits).abs().max().item()
    assert diff <= 1e-4, f"{model_type}: max abs logit difference {diff}"


def test_parameter_names_are_hf_llama_names():
    names = set(Transformer(preset("test", tie_word_embeddings=False)).state_dict())
    assert "model.embed_tokens.weight" in names
    assert "model.layers.1.self_attn.k_proj.weight" in names
    assert "model.layers.0.mlp.gate_proj.weight" in names
    assert "model.layers.0.post_attention_layernorm.weight" in names
    assert {"model.norm.weight", "lm_head.weight"} <= names
    assert not any("rope" in n for n in names)


def test_kv_cache_chunks_equal_full_forward():
    torch.manual_seed(1)
    cfg = preset("test", vocab_size=200)
    m = Transformer(cfg).eval()
    x = torch.randint(0, 200, (3, 30))
    cache = KVCache(cfg, 3, 40)
    with torch.no_grad():
        full = m(x)
        parts = [m(x[:, :11], cache=cache), m(x[:, 11:20], cache=cache)]
        parts += [m(x[:, t:t + 1], cache=cache) for t in range(20, 30)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    assert cache.pos == 30


def test_impossible_configs_are_user_errors():
    with pytest.raises(UserError, match="multiple of"):
        ModelConfig(num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(UserError, match="unknown model preset"):
        preset("huge")
    with pytest.raises(UserError, match="must be positive"):
        ModelConfig(vocab_size=0)


def test_presets_have_their_advertised_sizes():
    assert 110e6 < preset("124m").num_params < 135e6
    assert 330e6 < preset("350m").num_params < 370e6
    m = Transformer(preset("test"))
    assert sum(p.numel() for p in m.parameters()) == preset("test").num_params


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 16,
     "mscale": 1.0, "mscale_all_dim": 0.5},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
])
def test_rope_scaling_matches_transformers(scaling):
    torch.manual_seed(0)
    cfg = preset("test", vocab_size=320, rope_scaling=scaling, rope_theta=500000.0)
    ours = Transformer(cfg).eval()
    ref = hf_model(cfg)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randint(0, 320, (1, 200))
    with torch.no_grad():
        assert (ours(x) - ref(x).logits).abs().max() <= 1e-4


def test_sliding_window_matches_transformers_with_and_without_cache():
    torch.manual_seed(0)
    cfg = preset("test", vocab_size=320, model_type="mistral", sliding_window=8)
    ours = Transformer(cfg).eval()
    ref = hf_model(cfg)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randint(0, 320, (2, 37))
    cache = KVCache(cfg, 2, 40)
    with torch.no_grad():
        full = ours(x)
        assert (full - ref(x).logits).abs().max() <= 1e-4
        steps = [ours(x[:, :20], cache=cache)] + [ours(x[:, t:t + 1], cache=cache) for t in range(20, 37)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


def test_unsupported_rope_scaling_is_named():
    with pytest.raises(UserError, match="'dynamic' is not supported.*linear, llama3, yarn"):
        preset("test", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(UserError, match="needs low_freq_factor"):
        preset("test", rope_scaling={"rope_type": "llama3", "factor": 8.0})
