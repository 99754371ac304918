"""The n-gram baseline: counts and smoothing on a planted text against hand-computed values,
distributions that sum to 1, bits per byte on Traditional / Simplified Chinese and English,
and `jielong train ngram` end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tiny_corpus, write_jsonl

from jielong.cli import main, run
from jielong.inspect.ngram import NGram, Symbols, bits_per_byte, load_ngram
from jielong.tokenizer import train_tokenizer

# Symbols 0 <s>, 1 </s>, 2, 3, 4; two documents: <s> 2 3 2 2 </s> and <s> 2 3 </s>.
# Bigram counts: (0,2):2 (2,3):2 (3,2):1 (2,2):1 (2,1):1 (3,1):1 → n1=4, n2=2, D2 = 4/(4+4) = 1/2.
# Continuations N1+(• w): 2:{0,3,2}=3  3:{2}=1  1:{2,3}=2, total 6 → n1=1, n2=1, D1 = 1/3;
# P1(w) = max(N1+ − 1/3, 0)/6 + (1/3)(3/6)(1/5): P1(2)=43/90 P1(3)=13/90 P1(1)=28/90, P1(0)=P1(4)=3/90.
PLANTED = [[2, 3, 2, 2], [2, 3]]


def planted(smoothing="kneser-ney", k=1.0) -> NGram:
    return NGram(2, 5, start=0, end=1, smoothing=smoothing, k=k).count(PLANTED)


def test_counts_and_kneser_ney_match_hand_computed_values():
    m = planted()
    assert dict(m.ngrams) == {(0, 2): 2, (2, 3): 2, (3, 2): 1, (2, 2): 1, (2, 1): 1, (3, 1): 1}
    assert m.tables[1][()] == {2: 3, 3: 1, 1: 2}  # continuation counts
    assert m.discounts == [0.0, pytest.approx(1 / 3), pytest.approx(0.5)]
    assert m.prob([4], 2) == pytest.approx(43 / 90)  # unseen context: the unigram level
    assert m.prob([4], 4) == pytest.approx(3 / 90)  # never seen: the uniform share
    # P(3 | 2) = (2 − ½)/4 + ½·3/4·P1(3)
    assert m.prob([2], 3) == pytest.approx(3 / 8 + 3 / 8 * 13 / 90)
    assert m.prob([2], 4) == pytest.approx(3 / 8 * 3 / 90)
    # nll of [2, 3] from the start: P(2 | <s>) = (2 − ½)/2 + ½·1/2·43/90
    assert m.score([2, 3]) == pytest.approx(-math.log(3 / 4 + 43 / 360) - math.log(103 / 240))


def test_add_k_matches_hand_computed_values():
    m = planted("add-k", k=1.0)
    assert m.prob([2], 3) == pytest.approx((2 + 1) / (4 + 5))
    assert m.prob([2], 4) == pytest.approx(1 / 9)
    assert planted("add-k", k=0.5).prob([4], 2) == pytest.approx(1 / 5)  # unseen context: uniform


@pytest.mark.parametrize("smoothing", ["kneser-ney", "add-k"])
def test_distribution_sums_to_one_and_equals_prob(smoothing):
    m = NGram(3, 7, start=0, end=1, smoothing=smoothing, k=0.1).count(
        [[2, 3, 4, 2, 3, 5], [3, 4, 6, 2], [2, 2, 2, 3]])
    for context in ([0, 0], [2, 3], [3, 4], [6, 6], [5, 2]):
        p = m.distribution(context)
        assert p.sum() == pytest.approx(1.0)
        assert np.allclose(p, [m.prob(context, w) for w in range(7)])
    assert m.generate(10, 0.0) == m.generate(10, 0.0)  # greedy is one path


@pytest.mark.parametrize("text", ["今天天氣很好", "今天天气很好", "The cat sat."])
def test_bits_per_byte_in_three_scripts(text):
    # No counts: Kneser–Ney is the uniform 1/V, so bits per byte = chars · log2 V / UTF-8 bytes.
    symbols = Symbols(chars=sorted(set(text)))
    empty = NGram(3, symbols.vocab_size, symbols.start, symbols.end).build()
    r = bits_per_byte(empty, symbols, [text])
    assert r.bytes == len(text.encode("utf-8"))
    assert r.bits_per_byte == pytest.approx(len(text) * math.log2(symbols.vocab_size) / r.bytes)
    # Trained on the text, it predicts the text better than on a text in another script.
    m = NGram(3, symbols.vocab_size, symbols.start, symbols.end).count([symbols.encode(text)] * 5)
    assert bits_per_byte(m, symbols, [text]).bits_per_byte < r.bits_per_byte / 3


def test_train_ngram_end_to_end(tmp_path, capsys):
    docs = tiny_corpus(40)
    data = write_jsonl(tmp_path / "data.jsonl", [{"text": d} for d in docs])
    summary = run(["train", "ngram", str(data), "--out", str(tmp_path / "char"), "--unit", "char",
                   "--samples", "1", "--length", "20"])
    assert summary["heldout"]["documents"] == 4 and 0 < summary["heldout"]["bits_per_byte"] < 3
    assert "bits per byte" in capsys.readouterr().out
    model, symbols = load_ngram(tmp_path / "char")  # plain JSON, read back the same
    assert bits_per_byte(model, symbols, docs[9::10]).bits_per_byte == pytest.approx(
        summary["heldout"]["bits_per_byte"])

    tok = train_tokenizer(docs, vocab_size=300).save(tmp_path / "tok")
    held = write_jsonl(tmp_path / "held.jsonl", [{"text": d} for d in tiny_corpus(3)])
    s = run(["train", "ngram", str(data), "--out", str(tmp_path / "tok3"), "--tokenizer", str(tok),
             "--heldout", str(held), "--smoothing", "add-k", "--k", "0.01", "--samples", "1"])
    assert s["unit"] == "token" and s["heldout"]["documents"] == 3 and s["greedy"]
    assert (tmp_path / "tok3" / "tokenizer" / "tokenizer.json").exists()

    with pytest.raises(SystemExit) as e:  # a user mistake: one line, exit 2
        main(["train", "ngram", str(data), "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "--tokenizer" in capsys.readouterr().err
