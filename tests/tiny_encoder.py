"""A tiny random BERT folder (2 layers, width 32) with a WordPiece tokenizer over the
characters and words of some texts, saved by `Encoder.save` — for the retrieval tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from jielong.encoder import Encoder, EncoderConfig
from jielong.tokenizer import Tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece(texts: list[str]) -> Tokenizer:
    split = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
    words = sorted({w for t in texts for w, _ in split(t.lower())})
    chars = sorted({c for t in texts for c in t.lower() if not c.isspace()})
    vocab = list(dict.fromkeys(SPECIALS + words + chars + [f"##{c}" for c in chars]))
    tok = Backend(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(SPECIALS)
    return Tokenizer(tok)


def make_bert_dir(path: Path, texts: list[str], pooling: str = "cls", seed: int = 0,
                  hidden: int = 32) -> Path:
    tok = wordpiece(texts)
    cfg = EncoderConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=128)
    torch.manual_seed(seed)
    enc = Encoder(cfg, pooler=True)
    with torch.no_grad():  # BERT's init scale, not nn.Embedding's N(0, 1)
        for p in enc.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
    enc.tokenizer, enc.pooling, enc.normalize, enc.max_length = tok, pooling, True, 128
    return enc.save(path)
