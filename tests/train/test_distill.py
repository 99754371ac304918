"""Distillation: the divergences, logit distillation lowering KL, sequence-level distillation."""

import json
import math

import pytest
import torch
from conftest import tiny_corpus

from jielong.checkpoint import load_model, save_model
from jielong.config import preset
from jielong.data.chat import encode
from jielong.data.formats import read_conversations
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer
from jielong.train.distill import distill, divergence, kl_to_teacher
from jielong.train.loop import TrainConfig, fit
from jielong.train.packing import PackedStage, pack


def test_divergences():
    torch.manual_seed(0)
    t, s = torch.randn(5, 30), torch.randn(5, 30)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        assert divergence(t, t, kind).abs().max() < 1e-5
        assert (divergence(t, s, kind) > 0).all()
    assert torch.allclose(divergence(t, s, "forward_kl"), divergence(s, t, "reverse_kl"), atol=1e-5)
    assert torch.allclose(divergence(t, s, "jsd"), divergence(s, t, "jsd"), atol=1e-5)
    assert (divergence(t * 50, s * 50, "jsd") <= math.log(2) + 1e-5).all()
    p, q = t.softmax(-1), s.softmax(-1)
    assert torch.allclose(divergence(t, s, "forward_kl"), (p * (p / q).log()).sum(-1), atol=1e-5)


def chats(path, n=40):
    rows = [{"messages": [{"role": "user", "content": f"{i % 7} + {i % 5} = ?"},
                          {"role": "assistant", "content": f"答案是 {i % 7 + i % 5}。"}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    tok = train_tokenizer(tiny_corpus(200), vocab_size=360)
    torch.manual_seed(1)
    teacher = Transformer(preset("demo", vocab_size=tok.vocab_size))
    data = chats(root / "chats.jsonl")
    packed = pack([encode(tok, m) for _, m in read_conversations(data)], 128, 0)
    cfg = TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=4, eval_every=1000)
    fit(teacher, PackedStage(packed, None, cfg), cfg, root / "teacher-run")  # it learns to answer
    return root, tok, save_model(root / "teacher", teacher, tok), data


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_logit_distillation_lowers_kl_to_the_teacher(setup, kind):
    root, tok, teacher_dir, data = setup
    teacher = load_model(teacher_dir).eval()
    convos = [m for _, m in read_conversations(data)]
    packed = pack([encode(tok, c) for c in convos], 128, 0)
    torch.manual_seed(0)
    fresh = Transformer(preset("test", vocab_size=tok.vocab_size)).eval()
    before = kl_to_teacher(fresh, teacher, packed)
    out = root / f"run-{kind}"
    summary = distill([str(data)], str(teacher_dir), student_preset="test", out=str(out),
                      divergence_kind=kind, temperature=2.0, alpha=0.0, seq_len=128,
                      val_fraction=0.1, train=TrainConfig(steps=30, batch_size=4, lr=3e-3,
                                                          eval_every=30, warmup_steps=3))
    assert summary["mode"] == "logits"
    student = load_model(out / "model").eval()
    after = kl_to_teacher(student, teacher, packed)
    assert after < 0.5 * before, (before, after)
    assert student.config.num_params < teacher.config.num_params


def test_sequence_distillation_with_another_tokenizer(setup):
    root, tok, teacher_dir, data = setup
    other = train_tokenizer(tiny_corpus(120)[::-1], vocab_size=300)
    torch.manual_seed(2)
    student_dir = save_model(root / "student", Transformer(preset("test", vocab_size=other.vocab_size)), other)
    out = root / "run-seq"
    summary = distill([str(data)], str(teacher_dir), student=str(student_dir), out=str(out),
                      max_new_tokens=8, seq_len=128,
                      train=TrainConfig(steps=5, batch_size=4, lr=1e-3, warmup_steps=1))
    assert summary["mode"] == "sequences"
    written = [json.loads(x)["messages"] for x in (out / "teacher_data.jsonl").read_text().splitlines()]
    assert len(written) >= 30 and all(m[-1]["role"] == "assistant" for m in written)
    assert load_model(out / "model").config.vocab_size == other.vocab_size


def test_student_made_of_some_of_the_teachers_layers(setup, tmp_path):
    from jielong.errors import UserError
    from jielong.train.distill import keep_layers

    _, tok, teacher_dir, data = setup
    teacher = load_model(teacher_dir).eval()
    ids = torch.tensor([tok.encode("1 + 2 = ?")])
    n = teacher.config.num_hidden_layers
    with torch.no_grad():  # all layers kept: the same model
        assert torch.allclose(keep_layers(teacher, list(range(n)))(ids), teacher(ids), atol=1e-5)
        small = keep_layers(teacher, [0, n - 1])
        assert small.config.num_hidden_layers == 2
        sd = small.state_dict()
        assert torch.equal(sd["model.layers.1.mlp.up_proj.weight"],
                           teacher.state_dict()[f"model.layers.{n - 1}.mlp.up_proj.weight"])
    with pytest.raises(UserError, match="layers 0–3"):
        keep_layers(teacher, [0, 9])
    out = tmp_path / "run"
    distill([str(data)], str(teacher_dir), student_layers=[0, n - 1], out=str(out), alpha=0.0,
            seq_len=128, train=TrainConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=1))
    assert load_model(out / "model").config.num_hidden_layers == 2
