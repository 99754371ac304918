"""`jielong tokenize --compare`: token counts per script and byte-fallback characters, on a
planted Traditional / Simplified / English text under two tokenizers trained here."""

from __future__ import annotations

import pytest
from hf_families import make_tokenizer

from jielong.cli import main, run
from jielong.inspect.tokens import count_tokens, script
from jielong.tokenizer import Tokenizer, train_tokenizer

TEXT = "學習語言。学习中文。We learn words."  # 10 Chinese characters, 13 English, 2 spaces


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """small: merges learnt only on English and 語言, so every other Chinese character (and
    。) is spelled as its three UTF-8 bytes; large: trained on TEXT itself, so each of its 8
    pre-tokenizer chunks (學習語言 。 学习中文 。 We ␣learn ␣words .) is one token."""
    d = tmp_path_factory.mktemp("toks")
    small = train_tokenizer(["We learn words. 語言"] * 3, vocab_size=1000, show_progress=False)
    large = train_tokenizer([TEXT] * 3, vocab_size=1000, show_progress=False)
    return str(small.save(d / "small")), str(large.save(d / "large")), small, large


def test_scripts():
    assert [script(c) for c in "學学。，a.é ひ😀"] == ["zh"] * 4 + ["en"] * 3 + [None, "other", "other"]


def test_counts_per_script_and_byte_fallback(tokenizers):
    *_, small, large = tokenizers
    c = count_tokens(small, TEXT)
    # 學 習 → 3 bytes each, 語言 one token, 。→ 3, 学习中文 → 12, 。→ 3; English 4 words/marks.
    assert c.chars == {"zh": 10, "en": 13}
    assert c.tokens == 29 and c.by_script == {"zh": 25.0, "en": 4.0}
    assert c.per_char("zh") == 2.5 and c.per_char("en") == 4 / 13
    assert c.fallback == list("學習。学习中文")
    assert c.n_bytes == 45 and c.bytes_per_token == 45 / 29

    c = count_tokens(large, TEXT)
    assert c.tokens == 8 and c.by_script == {"zh": 4.0, "en": 4.0} and c.fallback == []
    assert c.per_char("zh") == 0.4 and c.bytes_per_token == 45 / 8


def test_a_token_mixing_scripts_is_shared_by_bytes(tokenizers):
    *_, small, _ = tokenizers
    c = count_tokens(small, "。\n")  # one chunk, three bytes of 。 and a line break: all zh
    assert c.by_script == {"zh": 3.0} and c.per_char("en") is None and c.fallback == ["。"]


def test_compare_command(tokenizers, tmp_path, capsys, monkeypatch):
    small, large, *_ = tokenizers
    monkeypatch.setenv("NO_COLOR", "1")
    run(["tokenize", "--compare", small, large, "--text", TEXT])
    out = capsys.readouterr().out
    assert f"── {small} (" in out and f"── {large} (" in out
    assert "[⟨e5 ad⟩][⟨b8⟩]" not in out and "[⟨e5⟩][⟨ad⟩][⟨b8⟩]" in out  # 學 in bytes
    assert "[學習語言]" in out
    lines = out.splitlines()
    assert lines[-3].split()[:6] == ["tokenizer", "vocab", "tokens", "zh", "tok/char", "en"]
    assert lines[-2].split()[2:] == ["29", "2.500", "0.308", "1.55", "學習。学习中文"]
    assert lines[-1].split()[2:] == ["8", "0.400", "0.308", "5.62", "—"]

    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    run(["tokenize", "--compare", large, "--file", str(f)])
    assert capsys.readouterr().out.splitlines()[-1].split()[2:] == ["8", "0.400", "0.308", "5.62", "—"]

    # Without --compare the command is what it was, the text positional or as --text.
    run(["tokenize", TEXT, "--model", large])
    assert "8 tokens · 45 bytes · 5.62 bytes/token" in capsys.readouterr().out
    run(["tokenize", "--text", TEXT, "--model", large])
    assert "8 tokens · 45 bytes" in capsys.readouterr().out

    for argv, says in [(["--compare", large], "no text"),
                       (["x", "--file", str(f), "--compare", large], "give the text once"),
                       (["--file", str(tmp_path / "nope.txt")], "no such file")]:
        with pytest.raises(SystemExit) as e:
            main(["tokenize", *argv])
        assert e.value.code == 2 and says in capsys.readouterr().err


def test_a_hugging_face_sentencepiece_vocabulary(tmp_path):
    """A Mistral-style model directory: <0xE9> byte tokens and a "▁" prefix, aligned through
    offsets (its tokens do not spell the text byte for byte)."""
    make_tokenizer("mistral").save_pretrained(tmp_path)
    tok = Tokenizer.from_dir(tmp_path)
    c = count_tokens(tok, "韶 學")
    assert not tok.byte_level and c.fallback == ["韶", "學"]
    assert c.by_script == {"zh": 6.0} and c.tokens == 8  # ▁ + 3 bytes, ▁ + 3 bytes
