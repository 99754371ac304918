"""Real model families in and out, against transformers as the reference.

Each family (Llama 3 with rope scaling, Qwen2, Qwen3, Mistral) is a tiny random model that
transformers itself built and saved with `save_pretrained` (tests/hf_families.py).
"""

import json
import pickle
import shutil
import time

import pytest
import torch

from jielong.checkpoint import load_model, save_model
from jielong.config import ModelConfig
from jielong.errors import UserError
from jielong.hub import read_generation_config, resolve_model, stop_ids
from jielong.infer.engine import Engine
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
from hf_families import FAMILIES, SAMPLE_CHATS, make_hf_dir  # noqa: E402

CASES = [(f, False) for f in FAMILIES] + [("llama3", True), ("qwen2", True)]


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hf")


def reference(d):
    return transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def sample_ids(vocab: int, shape=(2, 41), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family, tied", CASES)
def test_logits_and_greedy_tokens_match_transformers(hf_root, family, tied):
    d = make_hf_dir(hf_root, family, tied=tied)
    ours, ref = load_model(d).eval(), reference(d)
    assert ours.config.tie_word_embeddings == tied
    x = sample_ids(ours.config.vocab_size)
    with torch.no_grad():
        diff = (ours(x) - ref(x).logits).abs().max().item()
    assert diff <= 1e-4, f"{family}: max logit difference {diff}"

    prompt = x[0, :9].tolist()
    mine = generate_ids(ours, [prompt], SamplingParams(32, temperature=0))[0]
    theirs = ref.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    assert mine == theirs[0, len(prompt):].tolist()


def test_sharded_checkpoint_loads_with_equal_logits(hf_root):
    d = make_hf_dir(hf_root, "qwen3", sharded=True)
    assert len(list(d.glob("model-*-of-*.safetensors"))) >= 3
    ours, ref = load_model(d).eval(), reference(d)
    x = sample_ids(ours.config.vocab_size)
    with torch.no_grad():
        assert (ours(x) - ref(x).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_ids_match_apply_chat_template(hf_root, family):
    d = make_hf_dir(hf_root, family)
    ours, ref = Tokenizer.from_dir(d), transformers.AutoTokenizer.from_pretrained(d)
    for messages in SAMPLE_CHATS:
        for gen in (False, True):
            ids, mask = ours.encode_chat(messages, add_generation_prompt=gen)
            expected = ref.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True,
                                               return_dict=True)["input_ids"]
            assert ids == expected, (family, messages, gen)
            assert len(mask) == len(ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_assistant_mask_matches_transformers_generation_tags(tmp_path, family):
    d = make_hf_dir(tmp_path, family, generation_template=True)
    ours, ref = Tokenizer.from_dir(d), transformers.AutoTokenizer.from_pretrained(d)
    for messages in SAMPLE_CHATS:
        ids, mask = ours.encode_chat(messages)
        out = ref.apply_chat_template(messages, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        assert ids == out["input_ids"]
        assert [int(m) for m in mask] == out["assistant_masks"], (family, messages)
        assert any(mask) == any(m["role"] == "assistant" for m in messages)


@pytest.mark.parametrize("family", ["llama3", "qwen2", "mistral"])
def test_assistant_mask_without_tags_covers_reply_and_end_of_turn(tmp_path, family):
    """Without {% generation %} tags the mask is found from the content: for these formats
    it is exactly what the tagged template marks."""
    plain = Tokenizer.from_dir(make_hf_dir(tmp_path / "plain", family))
    tagged = Tokenizer.from_dir(make_hf_dir(tmp_path / "tagged", family, generation_template=True))
    for messages in SAMPLE_CHATS:
        assert plain.encode_chat(messages) == tagged.encode_chat(messages), messages
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    ids, mask = plain.encode_chat(messages)
    reply = [i for i, m in zip(ids, mask, strict=True) if m]
    assert plain.decode(reply).strip() in ("Hello!<|eot_id|>", "Hello!<|im_end|>", "Hello!</s>")


def test_assistant_content_missing_from_render_is_a_user_error(tmp_path):
    tok = Tokenizer.from_dir(make_hf_dir(tmp_path, "qwen2"))
    tok.config["chat_template"] = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    tok._template = None
    with pytest.raises(UserError, match="does not appear in the rendered chat"):
        tok.encode_chat([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_ids_come_from_generation_config(hf_root, family):
    d = make_hf_dir(hf_root, family)
    tok, gen = Tokenizer.from_dir(d), read_generation_config(d)
    stops = stop_ids(tok, gen)
    eos = gen["eos_token_id"]
    assert set(eos if isinstance(eos, list) else [eos]) <= stops
    end_of_turn = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>",
                   "mistral": "</s>"}[family]
    assert tok.backend.token_to_id(end_of_turn) in stops


@pytest.mark.parametrize("family", FAMILIES)
def test_our_saved_checkpoint_loads_in_transformers(hf_root, tmp_path, family):
    src = make_hf_dir(hf_root, family)
    model, tok = load_model(src).eval(), Tokenizer.from_dir(src)
    out = save_model(tmp_path / "out", model, tok, generation=read_generation_config(src))
    ref = reference(out)
    x = sample_ids(model.config.vocab_size)
    with torch.no_grad():
        assert (ref(x).logits - model(x)).abs().max() <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "The cat 貓 sat on 饕餮 mat. 今天天气很好！"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf_tok.apply_chat_template(SAMPLE_CHATS[0], tokenize=True, return_dict=True)[
        "input_ids"] == tok.encode_chat(SAMPLE_CHATS[0])[0]
    assert read_generation_config(out)["eos_token_id"] == read_generation_config(src)["eos_token_id"]


def test_sentencepiece_token_bytes(hf_root):
    tok = Tokenizer.from_dir(make_hf_dir(hf_root, "mistral"))
    assert not tok.byte_level
    text = "The cat 饕餮 sat."
    ids = tok.encode(text)
    assert b"".join(tok.token_bytes(i) for i in ids).decode().strip() == text


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loads_in_low_precision(hf_root, dtype):
    d = make_hf_dir(hf_root, "qwen2")
    ours = load_model(d, dtype=dtype).eval()
    assert all(p.dtype == dtype for p in ours.parameters())
    ref = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=dtype).eval()
    x = sample_ids(ours.config.vocab_size)
    with torch.no_grad():
        a, b = ours(x).float(), ref(x).logits.float()
    assert (a - b).abs().max() <= 0.05 * b.abs().max()


def test_pytorch_bin_loads_only_tensors(hf_root, tmp_path, capsys):
    src = make_hf_dir(hf_root, "llama3")
    d = tmp_path / "bin"
    d.mkdir()
    for f in src.iterdir():
        if not f.name.endswith(".safetensors") and not f.name.endswith(".index.json"):
            (d / f.name).write_bytes(f.read_bytes())
    torch.save(reference(src).state_dict(), d / "pytorch_model.bin")
    x = sample_ids(300)
    with torch.no_grad():
        assert torch.equal(load_model(d)(x), load_model(src)(x))
    assert "weights_only=True" in capsys.readouterr().err

    class Evil:  # unpickling this would run a shell command
        def __reduce__(self):
            return (print, ("pwned",))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"model.norm.weight": Evil()}))
    with pytest.raises(UserError, match="cannot load safely"):
        load_model(d)


def test_unknown_architecture_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=r"'gpt2' \(GPT2LMHeadModel\) is not supported.*llama, "
                                        r"mistral, qwen2, qwen3"):
        load_model(tmp_path)


def test_corrupt_and_incomplete_weights_are_user_errors(hf_root, tmp_path):
    src = make_hf_dir(hf_root, "qwen3", sharded=True)
    d = tmp_path / "broken"
    d.mkdir()
    for f in src.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    first = sorted(d.glob("model-*.safetensors"))[0]
    first.write_bytes(first.read_bytes()[:-10])
    with pytest.raises(UserError, match=f"{first.name}: not a valid safetensors file"):
        load_model(d)
    first.unlink()
    with pytest.raises(UserError, match="shard listed in model.safetensors.index.json is missing"):
        load_model(d)


def test_hub_id_resolves_from_the_local_cache_offline(hf_root, tmp_path, monkeypatch):
    """The real huggingface_hub path, offline: a hub id found in the cache loads."""
    pytest.importorskip("huggingface_hub")
    src = make_hf_dir(hf_root, "qwen2")
    cache = tmp_path / "hub"
    snap = cache / "models--tiny--qwen2" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (cache / "models--tiny--qwen2" / "refs").mkdir()
    (cache / "models--tiny--qwen2" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert resolve_model("tiny/qwen2") == snap
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        resolve_model("tiny/absent")


# Sliding windows as the hub's configs spell them. Hub Qwen2/Qwen3 configs (written before
# transformers 5) carry use_sliding_window + max_window_layers and no layer_types, so the
# stale layer_types save_pretrained wrote is dropped unless a case sets its own.
WINDOW_CASES = {
    # Qwen2 windows only the layers from max_window_layers on: here the second of two.
    "qwen2-upper-layers": ("qwen2", dict(use_sliding_window=True, sliding_window=6,
                                         max_window_layers=1)),
    "qwen2-every-layer": ("qwen2", dict(use_sliding_window=True, sliding_window=6,
                                        max_window_layers=0)),
    "qwen2-default-max-window-layers": ("qwen2", dict(use_sliding_window=True, sliding_window=6)),
    "qwen3-window-off": ("qwen3", dict(use_sliding_window=False, sliding_window=6,
                                       max_window_layers=0)),
    # transformers 5's own spelling, in an order max_window_layers cannot say.
    "qwen3-layer-types": ("qwen3", dict(use_sliding_window=True, sliding_window=6,
                                        layer_types=["sliding_attention", "full_attention"])),
    "mistral-every-layer": ("mistral", dict(sliding_window=6)),
    # transformers' Auto classes run a Mistral config with layer_types as Ministral.
    "mistral-layer-types": ("mistral", dict(sliding_window=6,
                                            layer_types=["full_attention", "sliding_attention"])),
    "llama-ignores-a-window": ("llama3", dict(sliding_window=6)),
}


def hf_windows(ref) -> list:
    """The window transformers gives each layer of `ref` (None: the whole past)."""
    c = ref.config
    if c.model_type == "llama":
        return [None] * c.num_hidden_layers
    if c.model_type == "mistral":  # MistralForCausalLM itself reads no layer_types
        return [c.sliding_window] * c.num_hidden_layers
    return [c.sliding_window if t == "sliding_attention" else None for t in c.layer_types]


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_sliding_windows_per_layer_match_transformers(hf_root, tmp_path, case):
    family, changes = WINDOW_CASES[case]
    d = tmp_path / "hub"
    shutil.copytree(make_hf_dir(hf_root, family), d)
    conf = json.loads((d / "config.json").read_text())
    conf.pop("layer_types", None)
    (d / "config.json").write_text(json.dumps(conf | changes))
    ours, ref = load_model(d).eval(), reference(d)
    assert ours.config.layer_windows() == hf_windows(ref), case
    x = sample_ids(ours.config.vocab_size)
    with torch.no_grad():
        want = ref(x).logits
        assert (ours(x) - want).abs().max() <= 1e-4, case
    if family == "llama3":  # transformers' generate windows its cache by sliding_window even
        return  # where LlamaForCausalLM's forward ignores it: nothing to compare against

    # Decoding with a KV cache (alone, left-padded in a batch, and in the engine) keeps
    # each layer's window: the greedy tokens are transformers'.
    prompts = [x[0, :9].tolist(), x[1, :3].tolist()]
    theirs = [ref.generate(torch.tensor([p]), max_new_tokens=16, min_new_tokens=16,
                           do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
              for p in prompts]
    assert generate_ids(ours, prompts[:1], SamplingParams(16, temperature=0)) == theirs[:1], case
    assert generate_ids(ours, prompts, SamplingParams(16, temperature=0)) == theirs, case
    engine = Engine(ours, Tokenizer.from_dir(d), slots=2).start()
    try:
        got = [engine.submit(p, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
               for p in prompts]
        while any(r.finish_reason is None for r in got):
            time.sleep(0.01)
    finally:
        engine.close()
    assert [r.output for r in got] == theirs, case

    # Saved by jielong, transformers reads the same windows and computes the same logits.
    out = save_model(tmp_path / "saved", ours)
    again = reference(out)
    assert hf_windows(again) == hf_windows(ref)
    assert load_model(out).config.layer_windows() == hf_windows(ref)
    with torch.no_grad():
        assert (again(x).logits - want).abs().max() <= 1e-4


def test_impossible_layer_types_are_user_errors(tmp_path):
    conf = {"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "vocab_size": 100, "use_sliding_window": True,
            "sliding_window": 8}

    with pytest.raises(UserError, match=r"cfg.json: .*layer_types must list .* each of the 2"):
        ModelConfig.from_hf(conf | {"layer_types": ["sliding_attention"]}, where="cfg.json")
    with pytest.raises(UserError, match=r"cfg.json: .*layer_types must list"):
        ModelConfig.from_hf(conf | {"layer_types": ["sliding", "full"]}, where="cfg.json")
    with pytest.raises(UserError, match=r"cfg.json: .*max_window_layers='1' must be a whole"):
        ModelConfig.from_hf(conf | {"max_window_layers": "1"}, where="cfg.json")
    with pytest.raises(UserError, match="Llama has no sliding-window attention"):
        ModelConfig(model_type="llama", sliding_window=8)
    with pytest.raises(UserError, match="sliding_attention layers but sliding_window is null"):
        ModelConfig(model_type="qwen3", num_hidden_layers=2,
                    layer_types=["full_attention", "sliding_attention"])
