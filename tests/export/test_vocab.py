"""Tokenizers as llama.cpp's vocabulary: SentencePiece-style, Llama 3, GPT-2 and padded
vocabularies, and the tokenizers export refuses."""

from __future__ import annotations

import json

import pytest
import tokenizers
from gguf_helpers import (
    LLAMA3_TEMPLATE,
    MISTRAL_TEMPLATE,
    TEXTS,
    fresh_copy,
    make_model,
    make_tokenizer,
    read,
)
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

from jielong.errors import UserError
from jielong.export.gguf import export_gguf
from jielong.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return make_tokenizer()


def _sentencepiece_style(texts: list[str]) -> tokenizers.Tokenizer:
    """A Llama-2/Mistral-like tokenizer.json: BPE on ▁-marked words with byte fallback."""
    specials = ["<unk>", "<s>", "</s>"]
    trained = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trained.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False))
    learned = json.loads(trained.to_str())["model"]
    by_id = sorted(learned["vocab"].items(), key=lambda kv: kv[1])
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + \
        [t for t, _ in by_id if t not in specials]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    backend = tokenizers.Tokenizer(models.BPE(
        vocab={t: i for i, t in enumerate(pieces)}, merges=merges, unk_token="<unk>",
        byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(),
                                         decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return backend


def test_sentencepiece_style_tokenizer(tmp_path):
    backend = _sentencepiece_style(TEXTS)
    config = {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "chat_template": MISTRAL_TEMPLATE}
    tok = Tokenizer(backend, config)
    assert tok.encode("\n")[-1] == 3 + 0x0A  # byte fallback: "\n" is <0x0A>
    d = make_model(tmp_path / "mistral", tok, model_type="mistral", bos_token_id=1,
                   eos_token_id=2, pad_token_id=None)
    out = export_gguf(d)
    meta, _ = read(out)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "llama"
    assert "tokenizer.ggml.pre" not in meta and "tokenizer.ggml.merges" not in meta
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == tok.vocab_size == len(meta["tokenizer.ggml.scores"])
    assert types[:3] == [2, 3, 3]  # <unk> unknown, <s> and </s> control
    assert tokens[3 + 0x0A] == "<0x0A>"
    assert [types[tokens.index(f"<0x{b:02X}>")] for b in range(256)] == [6] * 256
    assert set(types[259:]) == {1}
    # Scores follow merge order: a token made by an earlier merge scores higher.
    learned = json.loads(backend.to_str())["model"]["merges"]
    first, later = ("".join(m) if isinstance(m, list) else m.replace(" ", "")
                    for m in (learned[0], learned[-1]))
    scores = meta["tokenizer.ggml.scores"]
    assert scores[tokens.index(first)] > scores[tokens.index(later)]
    assert meta["tokenizer.ggml.bos_token_id"] == 1
    assert meta["tokenizer.ggml.eos_token_id"] == 2
    assert meta["tokenizer.ggml.unknown_token_id"] == 0
    assert meta["tokenizer.ggml.add_bos_token"] is True  # from the post-processor
    assert meta["tokenizer.ggml.add_space_prefix"] is True
    modelfile = (out.parent / "Modelfile").read_text()
    assert "[INST]" in modelfile and "TEMPLATE" in modelfile
    assert 'PARAMETER stop "</s>"' in modelfile


def test_llama3_style_special_tokens(tmp_path, tok):
    tok = fresh_copy(tok)
    tok.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")])
    tok.config.update(bos_token="<|begin_of_text|>", chat_template=LLAMA3_TEMPLATE,
                      add_bos_token=True)
    d = make_model(tmp_path / "m", tok)
    out = export_gguf(d)
    meta, _ = read(out)
    ids = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    assert meta["tokenizer.ggml.pre"] == "llama-bpe"
    assert meta["tokenizer.ggml.bos_token_id"] == ids["<|begin_of_text|>"]
    assert meta["tokenizer.ggml.add_bos_token"] is True
    # both <|im_end|> and <|eot_id|> exist; the one the chat template uses ends a turn
    assert meta["tokenizer.ggml.eot_token_id"] == ids["<|eot_id|>"]
    modelfile = (out.parent / "Modelfile").read_text()
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>" in modelfile
    assert 'PARAMETER stop "<|eot_id|>"' in modelfile


def test_gpt2_style_tokenizer(tmp_path):
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = Tokenizer(backend, {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"})
    d = make_model(tmp_path / "gpt2", tok, eos_token_id=0)
    out = export_gguf(d)
    meta, _ = read(out)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.merges"][0].count(" ") == 1
    assert meta["tokenizer.ggml.add_bos_token"] is False  # no post-processor adds it
    assert "tokenizer.chat_template" not in meta
    modelfile = (out.parent / "Modelfile").read_text()
    assert "No TEMPLATE" in modelfile and 'PARAMETER stop "<|endoftext|>"' in modelfile


def test_padded_vocabulary(tmp_path, tok):
    d = make_model(tmp_path / "m", tok, vocab_size=tok.vocab_size + 20)  # embedding rounded up
    meta, tensors = read(export_gguf(d))
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == tok.vocab_size + 20 == tensors["token_embd.weight"].shape[1]
    assert tokens[-1] == f"[PAD{tok.vocab_size + 19}]" and types[-1] == 5


def test_tokenizer_errors(tmp_path, tok):
    d = make_model(tmp_path / "no_tok", None)
    with pytest.raises(UserError, match="no tokenizer.json"):
        export_gguf(d)
    d = make_model(tmp_path / "small", tok, vocab_size=tok.vocab_size - 10)
    with pytest.raises(UserError, match=f"has {tok.vocab_size} tokens but config.json's "
                                        f"vocab_size is {tok.vocab_size - 10}"):
        export_gguf(d)

    # SentencePiece-style without the <0xNN> byte tokens: llama.cpp would crash on an
    # unknown character, so the export refuses.
    no_bytes = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    no_bytes.pre_tokenizer = pre_tokenizers.Metaspace()
    no_bytes.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    d = make_model(tmp_path / "no_bytes", Tokenizer(no_bytes, {"unk_token": "<unk>"}))
    with pytest.raises(UserError, match="lacks 256 of the 256 byte tokens.*byte_fallback=True"):
        export_gguf(d)

    unigram = tokenizers.Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(TEXTS, trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<unk>"], unk_token="<unk>", show_progress=False))
    d = make_model(tmp_path / "unigram", Tokenizer(unigram, {"unk_token": "<unk>"}))
    with pytest.raises(UserError, match="a Unigram tokenizer"):
        export_gguf(d)

    d = make_model(tmp_path / "broken", tok)
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["model"]["merges"] = [["only-one"]]
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UserError, match="tokenizer.json: unexpected content"):
        export_gguf(d)
