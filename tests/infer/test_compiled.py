"""The compiled decode step (jielong.infer.compiled): greedy tokens equal eager decoding, token
for token, for Llama and Qwen2/Qwen3 layouts, alone and in a padded batch; the engine's
compiled step gives the same tokens; without a compiler it says so once and decodes eagerly."""

import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from jielong import quant
from jielong.config import ModelConfig
from jielong.infer import compiled
from jielong.infer.chat import Session
from jielong.infer.engine import Engine
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer
from jielong.quant import quantize

GREEDY = SamplingParams(max_tokens=8, temperature=0)


def tiny(model_type: str, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=128, model_type=model_type), **kw})
    return Transformer(cfg).eval()


BATCH = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 200, 30, 40]]  # padded to 7
# Each case compiles a graph (~3-5 s of CPU on 2 cores); the last two only with
# JIELONG_SLOW_TESTS=1, to keep the suite fast (the first two cover their features).
slow = pytest.mark.skipif(not os.environ.get("JIELONG_SLOW_TESTS"), reason="JIELONG_SLOW_TESTS=1 runs it")


@pytest.mark.parametrize("model_type, kw, prompts", [
    ("llama", {}, BATCH),  # grouped-query attention, left padding
    # q/k/v/o bias and QK-norm at once, and a sliding window shorter than prompt + reply
    ("qwen3", {"attention_bias": True, "sliding_window": 6}, BATCH),
    pytest.param("llama", {}, [[5, 6, 7, 8, 9]], marks=slow),  # batch 1, unpadded
    pytest.param("qwen2", {}, BATCH, marks=slow),
])
def test_compiled_greedy_equals_eager(model_type, kw, prompts):
    model = tiny(model_type, **kw)
    eager = generate_ids(model, prompts, GREEDY, compile=False)
    assert generate_ids(model, prompts, GREEDY, compile=True) == eager
    dec = compiled.compiled_or_none(model, len(prompts), 128)
    assert dec.step != dec.forward_step  # it ran compiled, not fallen back


def test_one_row_products_equal_linear_and_leave_batches_alone():
    torch.manual_seed(0)
    w, b = torch.randn(24, 16), torch.randn(24)
    one, two = torch.randn(1, 1, 16), torch.randn(2, 1, 16)
    want_one, want_two = torch.nn.functional.linear(one, w, b), torch.nn.functional.linear(two, w)
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Spy(), compiled.OneRowProducts():
        got_one = torch.nn.functional.linear(one, w, b)
        n = len(seen)
        got_two = torch.nn.functional.linear(two, w)
    torch.testing.assert_close(got_one, want_one)
    assert torch.equal(got_two, want_two)  # two rows: F.linear itself, the same bits
    assert torch.Tensor.sum in seen[:n] and torch.Tensor.sum not in seen[n:]  # a sum for one row only
    assert torch.nn.functional.linear in seen[n:]


def test_one_sequence_decodes_through_products_not_matmuls(monkeypatch):
    """Batch 1 on a CPU: the compiled step's linear layers are elementwise products and sums
    (OneRowProducts), no matmul call left in the generated code; greedy tokens as eager,
    with q/k/v biases, QK-norm and a sliding window, the weights moved to huge pages."""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setattr(quant, "HUGE_MIN_BYTES", 4096)  # this model's weights are small
    model = tiny("qwen3", attention_bias=True, sliding_window=6)
    prompt = [[5, 6, 7, 8, 9, 10, 11]]
    eager = generate_ids(model, prompt, GREEDY, compile=False)
    torch._dynamo.reset()
    got, code = run_and_get_code(generate_ids, model, prompt, GREEDY, compile=True)
    assert got == eager
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux: the decoder moved the weights it streams
        assert model.model.layers[1].mlp.up_proj.weight.in_huge_pages
    decode_graph = [c for c in code if "scaled_dot_product" in c]
    assert decode_graph and not any("extern_kernels.mm" in c or "extern_kernels.addmm" in c
                                    for c in decode_graph)


def test_compiled_int8_greedy_equals_eager_int8():
    """--quantize int8 --compile: the weight-only kernel inside the compiled step gives the
    eager quantized model's tokens; its int8 tensors are parameters that never train (what
    freezing folds into the graph as constants on a large model)."""
    model = quantize(tiny("llama"), "int8")
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer.qweight, torch.nn.Parameter) and not layer.qweight.requires_grad
    eager = generate_ids(model, BATCH, GREEDY, compile=False)
    assert generate_ids(model, BATCH, GREEDY, compile=True) == eager


def test_without_a_compiler_it_says_so_once_and_decodes_eagerly(monkeypatch, capsys):
    model = tiny("llama")
    eager = generate_ids(model, [[5, 6, 7]], GREEDY, compile=False)
    monkeypatch.setenv("JIELONG_NO_COMPILE", "1")
    monkeypatch.setattr(compiled, "said", set())
    for _ in range(2):
        assert generate_ids(model, [[5, 6, 7]], GREEDY, compile=True) == eager
    err = capsys.readouterr().err
    assert err.count("--compile: JIELONG_NO_COMPILE is set; decoding eagerly") == 1


def test_a_failed_compile_falls_back_once(monkeypatch, capsys):
    model = tiny("llama")
    eager = generate_ids(model, [[5, 6, 7]], GREEDY, compile=False)

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("C++ compile failed: cc1plus not found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(compiled, "said", set())
    monkeypatch.setattr(compiled, "decoders", type(compiled.decoders)())
    assert generate_ids(model, [[5, 6, 7]], GREEDY, compile=True) == eager
    assert generate_ids(model, [[5, 6, 7]], GREEDY, compile=True) == eager
    err = capsys.readouterr().err
    assert err.count("compiling failed (RuntimeError: C++ compile failed") == 1


class Digits:
    """A stand-in tokenizer: the engine only decodes."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_the_engine_gives_the_same_tokens_compiled():
    """The engine's compiled step: the eager engine's tokens, and the new keys written into
    the block pool in place (a write through one layer's view once made every step copy
    each layer's whole pool: 1.3 s a step instead of 80 ms for 32 rows of the 124m preset)."""
    from torch._inductor.utils import run_and_get_code

    model = tiny("qwen2")
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 200, 30, 40], list(range(20, 40))]
    got, code = {}, []
    for compile in (False, True):
        engine = Engine(model, Digits(), slots=3, block_size=4, compile=compile).start()

        def run(e=engine, c=compile):
            with ThreadPoolExecutor(4) as pool:
                got[c] = list(pool.map(
                    lambda p: e.complete(p, SamplingParams(max_tokens=6, temperature=0)).token_ids,
                    prompts))
        try:
            _, code = run_and_get_code(run) if compile else (run(), [])
        finally:
            engine.close()
        assert (engine.compiled is not None) == compile
    assert got[True] == got[False]
    assert engine.compiled.step != engine.compiled.forward  # compiled, not fallen back
    layer = engine.pool.k[0].numel()  # one layer's pool: no kernel of the step loops over it
    assert code and not any(f"<static_cast<int64_t>({layer}L)" in c for c in code)


def test_chat_session_compiled_equals_eager_across_turns_and_a_grown_cache():
    model = tiny("llama", max_position_embeddings=256)
    turns = [list(range(3, 40)), list(range(3, 40)) + [7] * 8 + list(range(50, 150))]  # 2nd: > 128
    s = SamplingParams(max_tokens=6, temperature=0)
    eager, fast = Session(model, 256), Session(model, 256, compile=True)
    for prompt in turns:
        got = list(fast.reply(prompt, s, set()))
        assert got == list(eager.reply(prompt, s, set()))
        assert fast.reused == eager.reused
    assert fast.decoder.max_len == 256 and fast.reused == 37  # grown, the first turn's keys kept
