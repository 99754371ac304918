"""Sanity checks of tests/hf_families.py: the tiny Hugging Face directories it writes load
with transformers and look like each family's real downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hf_families import FAMILIES, SAMPLE_CHATS, make_hf_dir
from safetensors import safe_open

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

# One example rendering per family: SAMPLE_CHATS[3] (system + user + assistant with
# reasoning_content), then the generation prompt.
RENDERED = {
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n你是一个有帮助的助手。<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n法国的首都是哪里？<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n法国的首都是巴黎。<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "qwen2": (
        "<|im_start|>system\n你是一个有帮助的助手。<|im_end|>\n"
        "<|im_start|>user\n法国的首都是哪里？<|im_end|>\n"
        "<|im_start|>assistant\n法国的首都是巴黎。<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "qwen3": (
        "<|im_start|>system\n你是一个有帮助的助手。<|im_end|>\n"
        "<|im_start|>user\n法国的首都是哪里？<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n用户问法国的首都。我们一步一步地思考：首都是巴黎。\n</think>\n\n"
        "法国的首都是巴黎。<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "mistral": "<s>[INST] 你是一个有帮助的助手。\n\n法国的首都是哪里？[/INST] 法国的首都是巴黎。</s>",
}

END_OF_TURN = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>",
               "mistral": "</s>"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {f: make_hf_dir(root, f) for f in FAMILIES}


@pytest.fixture(scope="module")
def tokenizers_(dirs):
    return {f: AutoTokenizer.from_pretrained(d) for f, d in dirs.items()}


def _load(path: Path):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_dir_loads_and_sizes_agree(family, dirs, tokenizers_):
    d = dirs[family]
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    tok = tokenizers_[family]
    model = _load(d)
    assert 300 <= len(tok) <= 650
    assert model.config.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]
    assert json.loads((d / "config.json").read_text())["vocab_size"] == len(tok)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 2
    ids = tok.apply_chat_template(SAMPLE_CHATS[1], return_dict=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_noised_and_seeded(family, dirs, tmp_path):
    def tensors(d):
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    w = tensors(dirs[family])
    norm = w["model.layers.0.input_layernorm.weight"]
    assert not torch.allclose(norm, torch.ones_like(norm))
    if family == "qwen2":
        assert w["model.layers.0.self_attn.q_proj.bias"].abs().sum() > 0
    if family == "qwen3":
        assert "model.layers.0.self_attn.q_norm.weight" in w
        assert w["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)
    assert "lm_head.weight" in w
    again = tensors(make_hf_dir(tmp_path / "same", family))
    other = tensors(make_hf_dir(tmp_path / "other", family, seed=1))
    assert all(torch.equal(w[k], again[k]) for k in w)
    assert not torch.equal(w["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_tied_and_sharded(family, dirs, tmp_path):
    d = make_hf_dir(tmp_path, family, tied=True, sharded=True)
    assert d.name == f"{family}-tied-sharded"
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(d.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and not (d / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert "lm_head.weight" not in index["weight_map"]
    assert json.loads((d / "config.json").read_text())["tie_word_embeddings"] is True
    model = _load(d)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # Sharding changes the files only, not the weights.
    plain = _load(make_hf_dir(tmp_path, family, tied=True))
    for (k, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    untied = _load(dirs[family])
    assert not torch.equal(untied.lm_head.weight, untied.get_input_embeddings().weight)


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_templates_render_every_sample(family, dirs, tokenizers_):
    tok = tokenizers_[family]
    assert (dirs[family] / "chat_template.jinja").exists() or tok.chat_template
    for chat in SAMPLE_CHATS:
        for gen_prompt in (False, True):
            text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen_prompt)
            ids = tok.apply_chat_template(chat, add_generation_prompt=gen_prompt, return_dict=True)
            assert text and ids["input_ids"]
            # Text and ids agree; unseen characters survive the round trip.
            assert tok.decode(ids["input_ids"]) == text
            assert chat[-1]["content"].split("</think>")[-1].strip() in text
    rendered = tok.apply_chat_template(SAMPLE_CHATS[3], tokenize=False, add_generation_prompt=True)
    assert rendered == RENDERED[family]


def test_family_specific_template_behaviour(tokenizers_):
    user = [{"role": "user", "content": "Hello!"}]
    assert tokenizers_["qwen2"].apply_chat_template(user, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n")
    q3 = tokenizers_["qwen3"]
    assert q3.apply_chat_template(user, tokenize=False, add_generation_prompt=True,
                                  enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # A <think> prefix is stripped from assistant turns before the last user message.
    text = q3.apply_chat_template(SAMPLE_CHATS[4], tokenize=False)
    assert "<think>" not in text and "<|im_start|>assistant\n饕餮是古代" in text
    with pytest.raises(Exception, match="alternate"):
        tokenizers_["mistral"].apply_chat_template(user + user, tokenize=False)
    mis = tokenizers_["mistral"]
    ids = mis("饕餮")["input_ids"]
    assert ids[0] == mis.bos_token_id and "<0xE9>" in mis.convert_ids_to_tokens(ids)
    # Llama 3 and Mistral prepend BOS when tokenizing plain text; Qwen has none.
    assert tokenizers_["llama3"]("hi")["input_ids"][0] == tokenizers_["llama3"].bos_token_id
    assert tokenizers_["qwen2"].bos_token is None
    assert {"<think>", "</think>"} <= set(q3.get_vocab())


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_template_gives_assistant_mask(family, tmp_path):
    tok = AutoTokenizer.from_pretrained(make_hf_dir(tmp_path, family, generation_template=True))
    out = tok.apply_chat_template(SAMPLE_CHATS[1], return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(mask) == len(ids) and 0 < sum(mask) < len(ids)
    masked = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert "I am fine, thank you." in masked and "colours." in masked
    assert masked.count(END_OF_TURN[family]) == 2
    assert "Hello!" not in masked and "rainbow" not in masked


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_config(family, dirs, tokenizers_):
    tok = tokenizers_[family]
    gen = json.loads((dirs[family] / "generation_config.json").read_text())
    cfg = json.loads((dirs[family] / "config.json").read_text())
    expected = {"llama3": ["<|end_of_text|>", "<|eot_id|>"],
                "qwen2": ["<|im_end|>", "<|endoftext|>"],
                "qwen3": ["<|im_end|>", "<|endoftext|>"],
                "mistral": "</s>"}[family]
    # A list where the family stops on several tokens, a plain id otherwise.
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids(expected)
    assert isinstance(gen["eos_token_id"], list) == isinstance(expected, list)
    assert cfg["eos_token_id"] == gen["eos_token_id"] and cfg["bos_token_id"] == gen["bos_token_id"]
    assert gen["pad_token_id"] == tok.pad_token_id
    assert gen["do_sample"] is True and gen["temperature"] == 0.7 and gen["top_p"] == 0.8
    assert tok.eos_token == END_OF_TURN[family]


def test_llama3_rope_scaling(dirs):
    cfg = json.loads((dirs["llama3"] / "config.json").read_text())
    rope = cfg.get("rope_parameters") or {**cfg["rope_scaling"], "rope_theta": cfg["rope_theta"]}
    assert rope["rope_type"] == "llama3" and rope["rope_theta"] == 500000.0
    assert (rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]) == (8.0, 1.0, 4.0)
    assert rope["original_max_position_embeddings"] == 64
    model = _load(dirs["llama3"])
    head_dim = 16
    plain = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    scaled = model.model.rotary_emb.inv_freq
    assert torch.allclose(scaled[0], plain[0]) and not torch.allclose(scaled, plain)
    mistral = json.loads((dirs["mistral"] / "config.json").read_text())
    assert mistral["sliding_window"] is None
