"""Weight-only int8 / int4 layers (jielong.quant): the weights within one quantization step,
the kernels equal to a matmul with the dequantized weight, logits near fp32, greedy tokens
kept, a saved quantized folder that loads again, LoRA on top, and bad options refused.
Float layers packed for oneDNN (PackedLinear): the plain model's logits and tokens."""

from __future__ import annotations

import copy
import json
import mmap
import os

import pytest
import torch
from torch import nn

from jielong import quant
from jielong.adapter_files import load_adapter, save_adapter
from jielong.checkpoint import load_model, save_model
from jielong.cli import main
from jielong.config import preset
from jielong.errors import UserError
from jielong.hub import open_model
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.lora import LoraConfig, add_adapter, merge_adapter, set_adapter, unload
from jielong.model import Transformer
from jielong.quant import (
    HUGE_PAGE,
    PackedLinear,
    QuantLinear,
    dequantized,
    huge_pages,
    pack_linears,
    quantize,
    weight_bytes,
)

FAMILIES = {"llama": {}, "qwen2": {}, "qwen3": {}, "mistral": {"sliding_window": 8}}
# Measured on these tiny models (logits up to ~1.5): largest |logit - fp32 logit| 0.004-0.005
# for int8 and 0.055-0.077 for int4 (group 64); against the dequantized weights (the same
# numbers, only the kernels' bf16 activations differ) 0.0013-0.0017. The bounds leave ~3×.
TOL = {"int8": 0.015, "int4": 0.2}
KERNEL_TOL = 0.005


def tiny(family: str = "llama", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(preset("test", model_type=family, **FAMILIES[family])).eval()


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_dequantized_weight_is_within_one_step_of_the_float_weight(method):
    torch.manual_seed(1)
    lin = nn.Linear(256, 48)
    with torch.no_grad():
        lin.weight[3, 7] = 0.9  # an outlier: its row (int8) or group (int4) gets a coarse step
    q = QuantLinear.from_linear(lin, method, 64 if method == "int4" else None)
    w, deq = lin.weight.detach(), q.dequantize()
    if method == "int8":
        step = q.scales.float()[:, None].expand_as(w)
    else:
        step = q.scales_and_zeros[..., 0].float().T.repeat_interleave(64, dim=1)
        assert q.packed  # the CPU kernel's own layout in memory ...
        b = q.state_dict()["qweight"]  # ... and the portable one in the state dict
        assert b.shape == (48, 128) and b.dtype == torch.uint8
        nibbles = torch.stack([b >> 4, b & 15], -1).reshape(48, 256)
        assert torch.equal(nibbles, q.int4_values())
    assert ((deq - w).abs() <= step).all()
    assert (deq - w).abs().max() > 0.1 * step.min()  # it did round
    x = torch.randn(5, 256)
    # the fused kernel = a matmul with the dequantized weight (bf16 activations aside)
    assert torch.allclose(q(x), x @ deq.T + lin.bias.detach(), atol=0.02, rtol=0.01)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_close_to_fp32_and_kernels_match_dequantized_weights(family):
    net = tiny(family)
    x = torch.randint(0, 4096, (2, 12))
    with torch.no_grad():
        ref = net(x)
        for method in ("int8", "int4"):
            q = quantize(copy.deepcopy(net), method, group_size=128)
            n_quant = sum(isinstance(m, QuantLinear) for m in q.modules())
            assert n_quant == 7 * 2 and isinstance(q.lm_head, nn.Linear)  # blocks only
            out = q(x)
            assert (out - ref).abs().max() < TOL[method], (family, method)
            assert (out - dequantized(q)(x)).abs().max() < KERNEL_TOL, (family, method)
            if method == "int4":  # width 64 < 128: the largest group that divides it
                assert q.model.layers[0].mlp.up_proj.group_size == 64


def test_greedy_text_is_identical():
    """Greedy decoding through generate_ids (prefill, then the KV-cache steps) gives fp32's
    tokens (seeds 0-3 of this tiny model all agree for both methods, 2 prompts × 24 tokens)."""
    net = tiny(seed=3)
    prompts, s = [[5, 17, 99], [1000, 2000, 7, 8, 9]], SamplingParams(max_tokens=24, temperature=0)
    ref = generate_ids(net, prompts, s)
    for method in ("int8", "int4"):
        assert generate_ids(quantize(copy.deepcopy(net), method, 64), prompts, s) == ref, method


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_saved_quantized_folder_loads_with_identical_logits(tmp_path, method):
    net = quantize(tiny("qwen2"), method, 64)  # q/k/v biases ride along
    save_model(tmp_path / "q", net)
    conf = json.loads((tmp_path / "q" / "config.json").read_text())
    assert conf["quantization_config"] == {"quant_method": "jielong", "weights": method,
                                           "group_size": 64 if method == "int4" else None,
                                           "lm_head": False}
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == \
        ["config.json", "generation_config.json", "model.safetensors"]  # no pickle
    header_len = int.from_bytes((tmp_path / "q" / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "q" / "model.safetensors").read_bytes()[8:8 + header_len])
    assert header["model.layers.0.mlp.up_proj.qweight"]["dtype"] == \
        ("I8" if method == "int8" else "U8")
    back = load_model(tmp_path / "q")
    x = torch.randint(0, 4096, (1, 10))
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    assert isinstance(back.model.layers[1].self_attn.q_proj, QuantLinear)


def base_and_adapter(out) -> Transformer:
    """A tiny model, with a LoRA adapter "x" (non-zero B) saved to `out` and taken off again."""
    base = tiny()
    torch.manual_seed(4)
    add_adapter(base, LoraConfig(r=4, alpha=8), name="x")
    with torch.no_grad():
        for n, p in base.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.3)
    save_adapter(base, out, name="x")
    unload(base)
    return base


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_lora_on_a_quantized_base_equals_lora_on_the_dequantized_model(tmp_path, method):
    base = base_and_adapter(tmp_path / "adapter")
    q = quantize(base, method, 64)
    plain = dequantized(q)
    load_adapter(q, tmp_path / "adapter", name="x")
    load_adapter(plain, tmp_path / "adapter", name="x")
    x = torch.randint(0, 4096, (1, 10))
    with torch.no_grad():
        with_lora, ref = q(x), plain(x)
        assert (with_lora - ref).abs().max() < KERNEL_TOL
        q_base = q.model.layers[0].self_attn.q_proj
        assert isinstance(q_base.base_layer, QuantLinear)  # the quantized kernel underneath
        set_adapter(q, None)
        assert (q(x) - with_lora).abs().max() > 0.05  # the adapter does change the output
    set_adapter(q, "x")
    for n, p in q.named_parameters():
        p.requires_grad_(".lora_" in n)
    q(x).logsumexp(-1).sum().backward()  # trains on top: the dequantized path has a gradient
    assert q.model.layers[1].mlp.down_proj.lora_A["x"].weight.grad.abs().sum() > 0
    with pytest.raises(UserError, match="cannot merge"):
        merge_adapter(q, "x")


def test_bad_options_are_one_line_user_errors(tmp_path, capsys):
    net = tiny()
    with pytest.raises(UserError, match="choose int8"):
        quantize(net, "int3")
    with pytest.raises(UserError, match="group size 100"):
        quantize(net, "int4", group_size=100)
    with pytest.raises(UserError, match="--quantize fp8"):
        open_model(tmp_path / "nowhere", quantize="fp8")
    save_model(tmp_path / "m", quantize(net, "int8"))
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(tmp_path / "m"), "--to", "int4", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "already quantized (int8)" in err and "\n" not in err


def test_quantize_command_writes_a_smaller_folder_that_loads(tmp_path, capsys):
    net = tiny("mistral")
    save_model(tmp_path / "m", net)
    main(["quantize", str(tmp_path / "m"), "--to", "int4", "--group_size", "32",
          "--out", str(tmp_path / "m4")])
    said = capsys.readouterr().out
    assert "to int4 (groups of 32)" in said and "float32:" in said
    x = torch.randint(0, 4096, (1, 10))
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m4")(x), quantize(net, "int4", 32)(x))
    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("m", "m4")}
    blocks = 4 * sum(m.weight.numel() for m in net.model.layers.modules() if type(m) is nn.Linear)
    assert size["m"] - size["m4"] > 0.8 * blocks  # 4 bits for 32; the embedding stays float


def test_shapes_the_kernels_refuse_dequantize_on_the_fly():
    torch.manual_seed(2)
    for method, lin in (("int8", nn.Linear(40, 24)), ("int4", nn.Linear(64, 40))):
        q = QuantLinear.from_linear(lin, method, 32 if method == "int4" else None)
        assert not q.kernel_ok(torch.device("cpu")) and not q.packed
        x = torch.randn(3, lin.in_features)
        assert torch.allclose(q(x), x @ q.dequantize().T + lin.bias.detach(), atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_linears_give_the_plain_models_logits_and_greedy_tokens(family):
    net = tiny(family)
    net.config.tie_word_embeddings = family != "qwen3"  # one untied head: packed too
    if family == "qwen3":
        net.lm_head.weight = nn.Parameter(net.lm_head.weight.detach().clone() * 1.5)
    packed = copy.deepcopy(net)
    n = pack_linears(packed, min_weights=0)  # every layer, small as they are here
    assert n == 7 * 2 + (family == "qwen3")
    assert isinstance(packed.model.layers[1].mlp.down_proj, PackedLinear)
    assert isinstance(packed.lm_head, PackedLinear) == (family == "qwen3")
    x = torch.randint(0, 4096, (2, 12))
    with torch.no_grad():
        assert (packed(x) - net(x)).abs().max() < 1e-4  # the same sums in another order
    prompts, s = [[5, 17, 99], [1000, 2000, 7, 8, 9]], SamplingParams(max_tokens=16, temperature=0)
    assert generate_ids(packed, prompts, s) == generate_ids(net, prompts, s)
    # it saves as the plain model did, and costs no memory beyond it
    want, got = net.state_dict(), packed.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert weight_bytes(packed) == weight_bytes(net)
    # an input that needs a gradient goes through the plain matrix (the packed matmul has none)
    h = torch.randn(1, 3, 64, requires_grad=True)
    layer = packed.model.layers[0].self_attn.q_proj
    layer(h).sum().backward()
    assert torch.allclose(h.grad, layer.dequantize().sum(0).expand(1, 3, 64), atol=1e-6)


def test_packed_bf16_layers_and_the_switch_that_turns_packing_off(monkeypatch):
    net = tiny().to(torch.bfloat16)
    packed = copy.deepcopy(net)
    assert pack_linears(packed, rows=1, min_weights=0) == 14 and packed.model.layers[0].mlp.up_proj.packed.dtype == torch.bfloat16
    x = torch.randint(0, 4096, (1, 9))
    with torch.no_grad():
        assert (packed(x).float() - net(x).float()).abs().max() < 0.05  # bf16 rounding
    assert pack_linears(copy.deepcopy(net)) == 0  # layers this small stay plain (faster)
    wide = Transformer(preset("test", hidden_size=512, intermediate_size=1024)).eval()
    pack_linears(wide)  # 512×512 and up: q and o (k, v: 512×256 with 2 of 4 kv heads), the MLP
    assert [type(m).__name__ for m in (wide.model.layers[0].self_attn.q_proj,
            wide.model.layers[0].self_attn.k_proj, wide.model.layers[0].mlp.up_proj)] == \
        ["PackedLinear", "Linear", "PackedLinear"]
    monkeypatch.setenv("JIELONG_NO_PACK", "1")
    assert pack_linears(copy.deepcopy(net), min_weights=0) == 0


def test_lora_on_a_packed_base_equals_lora_on_the_plain_model(tmp_path):
    base = base_and_adapter(tmp_path / "adapter")
    # packed first, then the adapter on top (open_model's order for the decoding commands)
    packed, plain = copy.deepcopy(base), copy.deepcopy(base)
    assert pack_linears(packed, rows=1, min_weights=0) == 14
    load_adapter(packed, tmp_path / "adapter", name="x")
    load_adapter(plain, tmp_path / "adapter", name="x")
    assert isinstance(packed.model.layers[0].self_attn.q_proj.base_layer, PackedLinear)
    x = torch.randint(0, 4096, (1, 10))
    with torch.no_grad():
        assert (packed(x) - plain(x)).abs().max() < 1e-4
        set_adapter(packed, None)
        set_adapter(plain, None)
        assert (packed(x) - plain(x)).abs().max() < 1e-4
    with pytest.raises(UserError, match="packed for decoding"):
        merge_adapter(packed, "x")


def advised_huge(ptr: int) -> bool:
    """Whether the mapping holding address `ptr` carries madvise(MADV_HUGEPAGE) ("hg")."""
    lines = open("/proc/self/smaps").read().splitlines()
    inside = False
    for line in lines:
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(a, 16) for a in head.split("-"))
            inside = lo <= ptr < hi
        elif inside and line.startswith("VmFlags:"):
            return "hg" in line.split()[1:]
    return False


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE") or not os.path.exists("/proc/self/smaps"),
                    reason="transparent huge pages are Linux's")
def test_huge_pages_move_weights_bit_for_bit_into_advised_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(quant, "HUGE_MIN_BYTES", 4096)  # the tiny model's tensors are small
    net = tiny("llama")
    net.config.tie_word_embeddings = True
    net.lm_head.weight = net.model.embed_tokens.weight
    quantize(net, "int8")  # int8 weights move too (plain tensors the kernel reads)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randint(0, 4096, (2, 9))
    with torch.no_grad():
        want = net(x)
    big = {id(t): t for t in list(net.parameters()) + list(net.buffers())
           if t.numel() * t.element_size() >= 4096}
    with torch.inference_mode():  # as a decoder may be built: the weights stay trainable
        assert huge_pages(net) >= sum(t.numel() * t.element_size() for t in big.values())
    with torch.no_grad():
        assert torch.equal(net(x), want)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.lm_head.weight is net.model.embed_tokens.weight  # still one tensor
    moved = [t for t in big.values() if getattr(t, "in_huge_pages", False)]
    assert len(moved) == len(big)
    starts = sorted(t.data_ptr() for t in moved)
    assert starts[0] % HUGE_PAGE == 0 and all(advised_huge(p) for p in starts)
    assert len({t.untyped_storage().data_ptr() for t in moved}) == len(moved)  # one storage each
    assert huge_pages(net) == 0  # already there
    net.model.norm.weight.requires_grad_(False)
    net.model.embed_tokens.weight.requires_grad_(True)  # moved, and it still trains
    net(x).sum().backward()
    assert net.model.embed_tokens.weight.grad is not None
    net.model.embed_tokens.weight.grad = None
    save_model(tmp_path / "m", net)  # safetensors refuses tensors that share a storage
    again = load_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(again(x), want)


def test_huge_pages_switch_off_and_leave_small_or_packed_tensors(monkeypatch):
    net = tiny("llama")
    monkeypatch.setattr(quant, "HUGE_MIN_BYTES", 2 << 20)
    assert huge_pages(net) == 0  # every tensor under HUGE_MIN_BYTES (the largest: 1 MB)
    monkeypatch.setattr(quant, "HUGE_MIN_BYTES", 4096)
    monkeypatch.setenv("JIELONG_NO_HUGE_PAGES", "1")
    assert huge_pages(net) == 0
    monkeypatch.delenv("JIELONG_NO_HUGE_PAGES")
    packed = copy.deepcopy(net)
    pack_linears(packed, min_weights=0)
    n = huge_pages(packed)  # the embedding only: oneDNN keeps its packed weights
    e = packed.model.embed_tokens.weight
    assert n == -(-e.numel() * e.element_size() // 64) * 64 or not hasattr(mmap, "MADV_HUGEPAGE")
