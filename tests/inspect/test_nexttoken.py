"""The next-token view: probabilities are the softmax of the model's last logits, greedy is
what generation's greedy picks, byte pieces merge into whole characters (all three scripts)."""

import pytest
import torch

from jielong.checkpoint import load_model
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.inspect.nexttoken import next_cmd, next_view
from jielong.inspect.pieces import merged_pieces
from jielong.tokenizer import Tokenizer

pytest.importorskip("transformers")
from hf_families import make_hf_dir  # noqa: E402


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    d = make_hf_dir(tmp_path_factory.mktemp("hf"), "qwen2")
    return d, load_model(d).eval(), Tokenizer.from_dir(d)


@pytest.mark.parametrize("text", ["小美把禮物送給小芳，她很開心。", "小美把礼物送给小芳，她很开心。",
                                  "Mei gave Fang a gift; she was happy."])
def test_pieces_are_whole_characters_covering_every_token(qwen, text):
    _, _, tok = qwen
    ids = tok.encode(text)
    pieces = merged_pieces(tok, ids)
    assert "".join(t for t, _ in pieces) == text
    assert [s for _, (s, _) in pieces] == [0] + [e for _, (_, e) in pieces[:-1]]
    assert pieces[-1][1][1] == len(ids)
    if text.startswith("小"):  # the tiny tokenizer spells unseen characters (禮/礼, 芳) as bytes
        assert any(e - s > 1 and len(t) == 1 for t, (s, e) in pieces)
        assert "芳" in [t for t, _ in pieces]


def test_probabilities_are_the_softmax_of_the_last_logits(qwen):
    _, model, tok = qwen
    prompt = "今天天氣很好，"
    view = next_view(model, tok, prompt, k=5, steps=4, temperature=0.9, top_p=0.8, seed=3)
    with torch.no_grad():
        want = model(torch.tensor([tok.encode(prompt)]))[0, -1].softmax(-1)
    p, i = want.topk(5)
    assert [t["id"] for t in view["top"]] == i.tolist()
    assert [t["prob"] for t in view["top"]] == pytest.approx(p.tolist(), abs=1e-6)
    assert view["greedy"][0]["id"] == i[0].item()
    greedy = generate_ids(model, [tok.encode(prompt)], SamplingParams(temperature=0, max_tokens=4))[0]
    assert [s["id"] for s in view["greedy"]][:len(greedy)] == greedy
    again = next_view(model, tok, prompt, k=5, steps=4, temperature=0.9, top_p=0.8, seed=3)
    assert [s["id"] for s in again["sampled"]] == [s["id"] for s in view["sampled"]]  # seeded
    for s in view["sampled"]:  # top_p 0.8 never picks outside the nucleus
        assert s["prob"] > 0


def test_command_prints_a_plain_table_when_not_a_terminal(qwen, capsys):
    d, _, _ = qwen
    view = next_cmd("The cat sat", model=str(d), k=3, steps=2, seed=1)
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "next token, top 3:" in out and "greedy:" in out
    assert len(view["top"]) == 3 and len(view["greedy"]) <= 2


class _Planted(torch.nn.Module):
    """Logits planted by the last token: after the prompt (0) token 1 (芳's first two bytes)
    is likeliest, then 4 (a lone lead byte), 3, 0, 2; after 1, token 2 (芳's last byte);
    after 4 or 3, token 3 ("B"), so 4 never becomes a character."""

    ROWS = {0: [1.0, 4.0, 0.0, 2.0, 3.0], 1: [0.0, 0.0, 5.0, 0.0, 0.0],
            3: [0.0, 0.0, 0.0, 5.0, 0.0], 4: [0.0, 0.0, 0.0, 5.0, 0.0]}

    def __init__(self):
        super().__init__()
        self.lm_head = torch.nn.Linear(1, 1)
        self.config = type("Config", (), {"max_position_embeddings": 64})()

    def forward(self, x, last_only=False):
        return torch.tensor(self.ROWS[int(x[0, -1])])[None, None]


class _Bytes:
    PIECES = {0: b"A", 1: b"\xe8\x8a", 2: b"\xb3", 3: b"B", 4: b"\xe8"}

    def token_bytes(self, i):
        return self.PIECES[i]


def test_alternatives_are_completed_into_whole_characters_or_kept_as_hex():
    from jielong.inspect.nexttoken import alternatives

    top = alternatives(_Planted(), _Bytes(), [0], k=3)
    want = torch.tensor(_Planted.ROWS[0]).softmax(-1)
    assert [t["id"] for t in top] == [1, 4, 3]
    assert [t["prob"] for t in top] == pytest.approx([float(want[1]), float(want[4]), float(want[3])])
    assert [(t["text"], t["whole"]) for t in top] == [("芳", True), ("⟨e8⟩", False), ("B", True)]
