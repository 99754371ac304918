"""KV-cache decoding: greedy equals a naive loop, batching equals one at a time, sampling knobs."""

import pytest
import torch

from jielong.config import preset
from jielong.errors import UserError
from jielong.infer.generate import cut_at_stop, generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(preset("test", vocab_size=300)).eval()


def naive_greedy(m, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(m(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_with_cache_equals_recomputing_everything(model):
    prompt = [5, 6, 7, 8, 9, 10, 11]
    assert generate_ids(model, [prompt], SamplingParams(20, temperature=0))[0] == naive_greedy(model, prompt, 20)


def test_batch_of_uneven_prompts_decodes_like_each_alone(model):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 200, 30, 40]]
    s = SamplingParams(16, temperature=0)
    batch = generate_ids(model, prompts, s)
    for p, out in zip(prompts, batch, strict=True):
        assert out == naive_greedy(model, p, 16)


def test_seed_makes_sampling_reproducible_and_stop_tokens_end_rows(model):
    s = SamplingParams(24, temperature=1.0, top_k=50, top_p=0.9, repetition_penalty=1.3, seed=3)
    a = generate_ids(model, [[1, 2, 3], [4, 5]], s)
    assert a == generate_ids(model, [[1, 2, 3], [4, 5]], s)
    stop = a[0][3]
    cut = generate_ids(model, [[1, 2, 3], [4, 5]], s, stop_ids={stop})
    for row, full in zip(cut, a, strict=True):
        assert row == (full[:full.index(stop)] if stop in full else full)


def test_stop_strings_cut_text():
    assert cut_at_stop("天氣很好。\n明天", ["\n", "明"]) == "天氣很好。"
    assert cut_at_stop("no stop here", ["。"]) == "no stop here"


def test_too_long_and_bad_settings_are_user_errors(model):
    with pytest.raises(UserError, match="longer than the model's context"):
        generate_ids(model, [[1] * 250], SamplingParams(max_tokens=10))
    with pytest.raises(UserError, match="temperature"):
        generate_ids(model, [[1]], SamplingParams(temperature=-1))
    with pytest.raises(UserError, match="at least one token"):
        generate_ids(model, [[]], SamplingParams())


def test_token_healing_lets_the_first_token_span_the_prompt_end():
    from jielong.infer.generate import generate_text, heal_tail
    from jielong.tokenizer import train_tokenizer

    tok = train_tokenizer(["阿明住在龍鄉。" * 3, "阿華住在龍鄉。" * 3] * 20, vocab_size=300)
    prompt = tok.encode("阿明住在")
    assert tok.encode("阿明住在龍鄉")[:len(prompt)] != prompt  # BPE merged across the prompt's end
    ids, tail, allowed = heal_tail(tok, prompt)
    assert ids == prompt[:-1] and tail == tok.token_bytes(prompt[-1])
    assert len(allowed) > 1 and all(tok.token_bytes(a).startswith(tail) for a in allowed)

    torch.manual_seed(0)
    m = Transformer(preset("test", vocab_size=tok.vocab_size)).eval()
    first = generate_ids(m, [ids], SamplingParams(3, temperature=0), first_allowed=[allowed])[0][0]
    assert first in allowed
    # The healed text never repeats the prompt's tail, and stop strings still cut it.
    out = generate_text(m, tok, ["阿明住在"], SamplingParams(3, temperature=0))[0]
    raw = b"".join(tok.token_bytes(t) for t in generate_ids(m, [ids], SamplingParams(3, temperature=0),
                                                             first_allowed=[allowed])[0])
    assert out == raw[len(tail):].decode("utf-8", errors="replace")
