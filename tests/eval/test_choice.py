"""Multiple-choice scoring: candidates of one question are scored from one shared start, and
the text after the answer is scored too, so a candidate that is a prefix of another cannot win
by being shorter."""

from dataclasses import dataclass

import torch

from jielong.eval.choice import _common_start, choice_accuracy
from jielong.tokenizer import train_tokenizer


@dataclass
class Q:
    prompt: str
    answer: str
    choices: list[str]
    lang: str = "math"
    end: str = ""


class Bigram(torch.nn.Module):
    """Next-token log-probabilities counted from a text: a model we can reason about."""

    def __init__(self, tok, text: str):
        super().__init__()
        ids = tok.encode(text)
        counts = torch.full((tok.vocab_size, tok.vocab_size), 0.01)
        for a, b in zip(ids, ids[1:], strict=False):
            counts[a, b] += 1
        self.table = torch.nn.Parameter(counts.log() - counts.sum(-1, keepdim=True).log())

    def forward(self, x):
        return self.table[x]


def test_the_text_after_the_answer_is_scored():
    text = "5 + 7 = 12\n3 + 4 = 7\n2 + 6 = 8\n6 + 6 = 12\n" * 5  # "1" only ever in "12"
    tok = train_tokenizer([text], vocab_size=300)
    model = Bigram(tok, text)
    q = Q("5 + 7 =", " 12", [" 1", " 12"])  # " 1" is a prefix of " 12": it scores higher alone
    assert choice_accuracy(model, tok, [q]).accuracy == 0.0
    q.end = "\n"  # ... but "1" is never followed by a line break
    assert choice_accuracy(model, tok, [q]).accuracy == 1.0


def test_candidates_are_scored_from_one_start():
    # a token across the join moves one candidate's own start back into the prompt
    items = [([5, 6, 7, 8], 3), ([5, 9, 10], 1), ([5, 6, 11], 2)]
    assert [start for _, start in _common_start(items)] == [1, 1, 1]
    # where they agree beyond it, the shared tokens are not scored
    assert [s for _, s in _common_start([([5, 6, 7], 2), ([5, 6, 8, 9], 2)])] == [2, 2]
    # a prompt's first token always stays context
    assert [s for _, s in _common_start([([5, 6], 1), ([7, 8], 1)])] == [1, 1]
