"""Attention maps from our model code equal transformers' `output_attentions` (Llama 3 with
rope scaling, Qwen2 with q/k/v biases); merged-character rows still sum to 1; the command
writes the pictures and the summary."""

import pytest
import torch

from jielong.checkpoint import load_model
from jielong.inspect.attention import attention_cmd, attention_weights, rollout
from jielong.inspect.pieces import merge_matrix, merged_pieces
from jielong.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
from hf_families import make_hf_dir  # noqa: E402

SENTENCE = "小美把禮物送給小芳，她很開心。"


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hf")


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_weights_equal_transformers_output_attentions(hf_root, family):
    d = make_hf_dir(hf_root, family)
    ours, tok = load_model(d).eval(), Tokenizer.from_dir(d)
    ref = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    ids = tok.encode(SENTENCE + " She was happy.")
    w = attention_weights(ours, ids)
    with torch.no_grad():
        want = torch.stack(ref(torch.tensor([ids]), output_attentions=True).attentions)[:, 0]
    assert w.shape == want.shape == (2, 4, len(ids), len(ids))
    torch.testing.assert_close(w, want, atol=1e-5, rtol=1e-4)

    spans = [s for _, s in merged_pieces(tok, ids)]
    assert any(b - a > 1 for a, b in spans)  # some characters are several byte tokens here
    merged = merge_matrix(w, spans)
    torch.testing.assert_close(merged.sum(-1), torch.ones(merged.shape[:-1]))
    assert merged.triu(1).abs().max() == 0  # still causal over pieces
    rolled = rollout(w)
    torch.testing.assert_close(rolled.sum(-1), torch.ones(len(ids)))
    assert rolled[0, 0] == pytest.approx(1.0)  # the first token can only see itself


def test_command_writes_heatmaps_and_where_she_looks(hf_root, tmp_path, capsys):
    d = make_hf_dir(hf_root, "qwen2")
    result = attention_cmd(SENTENCE, model=str(d), out=str(tmp_path), layer=1, head=0, token="她")
    assert result["summary"]["token"] == "她"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attention.json", "layer1_head0.png", "rollout.png"]
    assert (tmp_path / "rollout.png").read_bytes()[:4] == b"\x89PNG"
    assert "她" in capsys.readouterr().out
