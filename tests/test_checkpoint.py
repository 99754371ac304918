"""Checkpoints are HF directories: they round-trip, load in transformers, and are atomic."""

import json

import pytest
import torch

from jielong.checkpoint import load_model, save_model
from jielong.config import preset
from jielong.errors import UserError
from jielong.model import Transformer


@pytest.mark.parametrize("tied", [True, False])
def test_save_load_round_trip_and_transformers_loads_it(tmp_path, tied):
    torch.manual_seed(0)
    m = Transformer(preset("test", vocab_size=300, tie_word_embeddings=tied)).eval()
    d = save_model(tmp_path / "model", m)
    assert {"config.json", "model.safetensors", "generation_config.json"} <= {p.name for p in d.iterdir()}
    assert json.loads((d / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    back = load_model(d).eval()
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        assert torch.equal(m(x), back(x))
    assert all(p.requires_grad for p in back.parameters())
    if tied:
        assert back.lm_head.weight is back.model.embed_tokens.weight
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
    with torch.no_grad():
        assert (ref(x).logits - m(x)).abs().max() <= 1e-4


def test_sharded_save_loads(tmp_path):
    torch.manual_seed(0)
    m = Transformer(preset("test", vocab_size=300))
    d = save_model(tmp_path / "m", m, max_shard_bytes=100_000)
    shards = sorted(p.name for p in d.glob("model-*.safetensors"))
    assert len(shards) > 1 and (d / "model.safetensors.index.json").exists()
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(),
                                                 load_model(d).state_dict().values(), strict=True))


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    m = Transformer(preset("test", vocab_size=300))
    save_model(tmp_path / "m", m)
    save_model(tmp_path / "m", m)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_not_a_model_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such model directory"):
        load_model(tmp_path / "missing")
    with pytest.raises(UserError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="safetensors"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=r"config.json:1: .*not valid JSON"):
        load_model(tmp_path)
