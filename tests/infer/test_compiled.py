"""The compiled decode step (jielong.infer.compiled): greedy tokens equal eager decoding, token
for token, for Llama and Qwen2/Qwen3 layouts, alone and in a padded batch; the engine's
compiled step gives the same tokens; without a compiler it says so once and decodes eagerly."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from jielong.config import ModelConfig
from jielong.infer import compiled
from jielong.infer.engine import Engine
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer

GREEDY = SamplingParams(max_tokens=8, temperature=0)


def tiny(model_type: str, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      model_type=model_type, **kw)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("model_type, kw, prompts", [
    ("llama", {}, [[5, 6, 7, 8, 9]]),
    ("llama", {}, [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 200, 30, 40]]),
    # Qwen2: q/k/v bias; a sliding window shorter than prompt + reply
    ("qwen2", {"sliding_window": 6}, [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 200, 30, 40]]),
    ("qwen3", {}, [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 200, 30, 40]]),  # QK-norm
])
def test_compiled_greedy_equals_eager(model_type, kw, prompts):
    model = tiny(model_type, **kw)
    eager = generate_ids(model, prompts, GREEDY, compile=False)
    assert generate_ids(model, prompts, GREEDY, compile=True) == eager
    dec = compiled.compiled_or_none(model, len(prompts), 128)
    assert dec.step != dec.forward_step  # it ran compiled, not fallen back


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
    model = tiny("qwen2")
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 200, 30, 40], list(range(20, 40))]
    got = {}
    for compile in (False, True):
        engine = Engine(model, Digits(), slots=3, block_size=4, compile=compile).start()
        try:
            with ThreadPoolExecutor(4) as pool:
                got[compile] = list(pool.map(
                    lambda p: engine.complete(p, SamplingParams(max_tokens=6, temperature=0)).token_ids,
                    prompts))
        finally:
            engine.close()
        assert (engine.compiled is not None) == compile
    assert got[True] == got[False]
    assert engine.compiled.step != engine.compiled.forward  # compiled, not fallen back
