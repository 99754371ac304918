"""The one sampler (jielong.infer.sampling): each row's own settings, the penalties, and top-k
before top-p as transformers and vLLM apply them."""

import pytest
import torch

from jielong.errors import UserError
from jielong.infer.sampling import SamplingParams, sample


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.tensor([[0.1, 3.0, 0.2, 2.9], [5.0, 0.0, 0.0, 4.9]])
    g = torch.Generator().manual_seed(0)
    for s in (SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=1.0, top_p=0.01)):
        for _ in range(20):
            assert sample(logits, s, None, None, g).tolist() == [1, 0]


def test_repetition_penalty_pushes_away_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    seen = torch.tensor([[True, False, False]])
    assert sample(logits, SamplingParams(temperature=0, repetition_penalty=1.5), None, seen).item() == 1
    assert sample(logits, SamplingParams(temperature=0), None, seen).item() == 0


def test_sample_applies_each_rows_settings():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    counts = torch.zeros(4, 50, dtype=torch.int32)
    counts[:, 3] = 2
    seen = counts > 0
    top = logits.argmax(-1)
    ps = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=1),
          SamplingParams(temperature=1.0, top_p=1e-6), SamplingParams(temperature=1.0, min_p=1.0)]
    assert sample(logits, ps, counts, seen, [None] * 4).tolist() == top.tolist()
    # presence/frequency: OpenAI's logit -= frequency·count + presence·(count > 0)
    logits[0, 3] = logits[0].max() + 1.0
    assert sample(logits[:1], [SamplingParams(temperature=0)], counts[:1], seen[:1], [None]).item() == 3
    p = [SamplingParams(temperature=0, frequency_penalty=0.4, presence_penalty=0.5)]
    expect = logits[0].clone()
    expect[3] -= 0.4 * 2 + 0.5
    assert sample(logits[:1], p, counts[:1], seen[:1], [None]).item() == expect.argmax().item()
    # repetition penalty (CTRL): a seen token's positive logit is divided
    p = [SamplingParams(temperature=0, repetition_penalty=100.0)]
    assert sample(logits[:1], p, counts[:1], seen[:1], [None]).item() != 3


def test_top_p_reads_what_top_k_kept():
    # top-k keeps 0.5 and 0.3, which become 0.625 and 0.375: top_p=0.6 is reached by the first
    # alone (over the whole distribution, 0.5 < 0.6 would have kept the second too)
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    s = SamplingParams(temperature=1.0, top_k=2, top_p=0.6)
    g = torch.Generator().manual_seed(0)
    assert {sample(logits, s, gen=g).item() for _ in range(50)} == {0}
    s = SamplingParams(temperature=1.0, top_k=2)
    assert {sample(logits, s, gen=g).item() for _ in range(200)} == {0, 1}


def test_one_generator_or_one_per_row_draw_the_same_tokens_alone():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    s = SamplingParams(temperature=1.0, top_p=0.9, seed=5)
    rows = [sample(logits[i:i + 1], s, gen=torch.Generator().manual_seed(5)).item() for i in range(3)]
    per_row = sample(logits, [s] * 3, gen=[torch.Generator().manual_seed(5) for _ in range(3)])
    assert per_row.tolist() == rows


def test_bad_settings_name_the_field():
    with pytest.raises(UserError, match="top_p=0 must be in"):
        SamplingParams(top_p=0).validate()
    with pytest.raises(UserError, match="max_tokens=0 must be at least 1"):
        SamplingParams(max_tokens=0).validate()
    with pytest.raises(UserError, match="temperature=nan"):
        SamplingParams(temperature=float("nan")).validate()
