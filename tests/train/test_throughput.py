"""Throughput accounting: FLOPs per token against a hand count and against PyTorch's own
FLOP counter, the peak table, and MFU in metrics.jsonl from a tiny pretraining run."""

import json

import pytest
import torch
from conftest import tiny_corpus
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from jielong import cli
from jielong.config import ModelConfig, preset
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.train.loop import TrainConfig
from jielong.train.throughput import flops_per_token, peak_flops

L, D, H, KV, FF, V, T = 2, 32, 4, 2, 96, 320, 64


def tiny(tied: bool) -> ModelConfig:
    return preset("test", vocab_size=V, hidden_size=D, intermediate_size=FF, num_attention_heads=H,
                  num_key_value_heads=KV, tie_word_embeddings=tied)


def measured(model: Transformer, batch: int) -> int:
    """FLOPs of one forward and backward as FlopCounterMode counts them (attention on the math
    kernel, whose matmuls it sees; it does not count the CPU flash kernel)."""
    ids = torch.randint(0, V, (batch, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids).float().sum().backward()
    return counter.get_total_flops()


def test_flops_per_token_by_hand_and_by_the_flop_counter():
    hd = D // H
    layer = D * H * hd + 2 * D * KV * hd + H * hd * D + 3 * D * FF + 2 * D  # q, k, v, o, SwiGLU, 2 norms
    n = L * layer + D + V * D  # + final norm + lm_head (its matmul runs, tied or not)
    by_hand = 6 * n + 12 * L * H * hd * T
    for tied in (True, False):
        cfg = tiny(tied)
        assert flops_per_token(cfg, T) == by_hand
        torch.manual_seed(0)
        counted = measured(Transformer(cfg), batch=2)
        assert flops_per_token(cfg, T) * 2 * T == pytest.approx(counted, rel=0.01)  # norms: not matmuls

    # frozen weights (LoRA's base): no weight gradients, 4 FLOPs a weight a token
    model = Transformer(tiny(True))
    for p in model.parameters():
        p.requires_grad_(p.dim() < 2)  # only the norms learn: every activation gradient still flows
    counted = measured(model, batch=2)
    assert flops_per_token(model.config, T, train_weights=False) * 2 * T == pytest.approx(counted, rel=0.01)
    assert flops_per_token(model.config, T, train_weights=False) < flops_per_token(model.config, T)


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4),
    ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA H100 NVL", "fp16", 835.5),
    ("NVIDIA H200", "bf16", 989.4),
    ("NVIDIA A100-SXM4-40GB", "tf32", 156.0),
    ("NVIDIA A100 80GB PCIe", "bfloat16", 312.0),
    ("NVIDIA L4", "bf16", 121.0),
    ("NVIDIA L40S", "bf16", 362.05),
    ("NVIDIA A10G", "fp32", 31.2),
    ("NVIDIA GeForce RTX 4090", torch.float16, 165.2),
    ("NVIDIA GeForce RTX 3090", "bf16", 71.0),
    ("Tesla T4", "bf16", None),  # Turing has no bf16 tensor cores
    ("cpu", "fp32", None),
    ("NVIDIA Some Future GPU", "bf16", None),
])
def test_peak_table(name, dtype, tflops):
    found = peak_flops(name, dtype)
    assert (found[1] / 1e12 if found else None) == (pytest.approx(tflops) if tflops else None)


def test_mfu_in_metrics_jsonl_with_peak_tflops(tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in tiny_corpus(60)),
                      encoding="utf-8")
    run = tmp_path / "run"
    summary = cli.run(["pretrain", str(corpus), "--out", str(run), "--steps", "3", "--preset", "test",
                       "--vocab_size", "300", "--seq_len", "32", "--batch_size", "2", "--eval_every", "50",
                       "--device", "cpu", "--peak_tflops", "0.5"])
    out = capsys.readouterr().out
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in rows if "loss" in x]
    assert len(steps) == 3
    for x in steps:
        assert x["tflops"] > 0 and x["mfu"] == pytest.approx(x["tflops"] / 0.5, rel=1e-3)
        assert 0.05 < x["mem_gib"] < 64  # the process's peak RSS on a CPU
    per_token = flops_per_token(ModelConfig.load(run / "model" / "config.json"), 32)
    assert summary["flops_per_token"] == per_token and summary["mem_gib_ranks"] == [summary["mem_gib"]]
    assert f"accounting: {per_token / 1e6:,.2f} MFLOP/token" in out
    assert "MFU against 0.5 TFLOP/s (--peak_tflops for cpu)" in out
    assert f"throughput: {summary['tflops']:.4g} TFLOP/s per device, MFU {summary['mfu']:.2%}" in out

    with pytest.raises(UserError, match="--peak_tflops=0.0 must be positive"):
        TrainConfig(peak_tflops=0.0).validate()
