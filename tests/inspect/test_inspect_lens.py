"""The logit lens against the model's own logits, a hand computation, and transformers."""

import pytest
import torch

from jielong.checkpoint import load_model
from jielong.config import preset
from jielong.inspect.lens import lens_cmd, lens_logits, residual_stream
from jielong.model import Transformer, attention_mask, rope_cos_sin

transformers = pytest.importorskip("transformers")


def test_last_layer_lens_is_the_models_logits_and_each_layer_is_norm_then_head():
    torch.manual_seed(0)
    m = Transformer(preset("test", vocab_size=200)).eval()
    x = torch.randint(0, 200, (2, 9))
    with torch.no_grad():
        lens = lens_logits(m, x)
        assert lens.shape == (m.config.num_hidden_layers + 1, 2, 9, 200)
        assert torch.allclose(lens[-1], m(x), atol=1e-5)
        # layer 1 by hand: embeddings, one decoder layer, RMSNorm, head
        h = m.model.embed_tokens(x)
        full = residual_stream(m, x)
        assert torch.equal(full[0], h)
        cos, sin = rope_cos_sin(m.inv_freq, m.rope_scale, torch.arange(9))
        mask = attention_mask(m.config.layer_windows()[0], 9, 0, None, torch.arange(9))
        h1 = m.model.layers[0](h, cos, sin, None, *mask)
        var = h1.pow(2).mean(-1, keepdim=True)
        normed = m.model.norm.weight * (h1 * torch.rsqrt(var + m.config.rms_norm_eps))
        assert torch.allclose(lens[1], normed @ m.lm_head.weight.T, atol=1e-5)
        assert not torch.allclose(lens[1], lens[-1], atol=1e-3)  # the layers do differ


def test_hidden_states_match_transformers_and_the_command_writes(tmp_path, capsys):
    from hf_families import make_hf_dir

    d = make_hf_dir(tmp_path, "llama3")
    ours = load_model(d).eval()
    ref = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    x = torch.randint(3, 400, (1, 12))
    with torch.no_grad():
        mine = residual_stream(ours, x)
        theirs = ref(x, output_hidden_states=True).hidden_states
    assert len(theirs) == len(mine) == 3
    for n in range(2):
        assert torch.allclose(mine[n], theirs[n], atol=1e-5), n
    assert torch.allclose(ours.model.norm(mine[2]), theirs[2], atol=1e-5)  # HF's last is normed
    table = lens_cmd("今天天氣很好 the cat 今天天气", model=str(d), out=str(tmp_path / "lens"), device="cpu")
    assert len(table["layers"]) == 3 and len(table["layers"][0]) == len(table["tokens"])
    assert (tmp_path / "lens" / "lens.png").stat().st_size > 1000
    assert "layer" in capsys.readouterr().out
