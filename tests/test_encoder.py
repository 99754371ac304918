"""The encoder against transformers' BertModel and XLMRobertaModel, and its embeddings against
sentence-transformers' pooling computed by hand from transformers' hidden states.

Each family is a tiny random model (2 layers, width 32) saved by `save_pretrained`, with a
tokenizer.json built here (BERT: WordPiece with [CLS] … [SEP]; XLM-R: a Unigram model with
<s> </s> <pad> and the RoBERTa post-processor) and sentence-transformers files written by hand.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from jielong.encoder import Encoder
from jielong.errors import UserError

transformers = pytest.importorskip("transformers")

TEXTS = [
    "今天天氣很好，我們去河邊散步。",
    "今天天气很好，我们去河边散步。",
    "The cat sat on the mat near the river.",
    "書",
    # longer than the 16-token limit the BERT folder declares: cut by both sides alike
    "Mei lives in Maple town and keeps a goose; 阿明住在龍鄉，他養了一隻貓。阿明住在龙乡。",
]
WORDS = "the cat sat on mat near river mei lives in maple town and keeps a goose".split()
CHARS = sorted({c for t in TEXTS for c in t.lower() if not c.isspace()} | set("abcdefghijklmnopqrstuvwxyz"))
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def bert_tokenizer() -> Tokenizer:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + CHARS + [f"##{c}" for c in CHARS]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(dict.fromkeys(vocab))}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return tok


def xlmr_tokenizer() -> Tokenizer:
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    pieces = [(t, 0.0) for t in specials] + [("▁" + w, -4.0) for w in WORDS]
    pieces += [("▁", -3.0)] + [(c, -8.0) for c in CHARS] + [("▁" + c, -9.0) for c in CHARS]
    tok = Tokenizer(models.Unigram(list(dict(reversed(pieces)).items())[::-1], unk_id=3))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(specials)
    return tok


def write_st_files(d, pooling: str, normalize: bool, max_seq_length: int | None = None):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "1_Pooling").mkdir(exist_ok=True)
    modes = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens",
             "mean_sqrt_len": "mean_sqrt_len_tokens", "weightedmean": "weightedmean_tokens",
             "lasttoken": "lasttoken"}
    (d / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "include_prompt": True}
        | {f"pooling_mode_{key}": mode == pooling for mode, key in modes.items()}))
    if max_seq_length:
        (d / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{"bert": (dir, reference BertModel, pad token), "xlmr": (… XLMRobertaModel …)}.
    BERT is saved as a BertModel (no name prefix, with a pooler) and declares CLS + Normalize,
    16 tokens; XLM-R is saved as XLMRobertaForMaskedLM ("roberta." prefix, an lm_head to skip,
    no pooler) and declares mean pooling."""
    torch.manual_seed(0)
    out = {}
    for name, tok, pad, make in (
        ("bert", bert_tokenizer(), "[PAD]", lambda v: transformers.BertModel(transformers.BertConfig(
            vocab_size=v, max_position_embeddings=64, pad_token_id=0, **SIZES))),
        ("xlmr", xlmr_tokenizer(), "<pad>", lambda v: transformers.XLMRobertaForMaskedLM(
            transformers.XLMRobertaConfig(vocab_size=v, max_position_embeddings=66, type_vocab_size=1,
                                          pad_token_id=1, bos_token_id=0, eos_token_id=2, **SIZES))),
    ):
        d = tmp_path_factory.mktemp(name)
        model = make(tok.get_vocab_size()).eval()
        with torch.no_grad():  # move every weight off its init (LayerNorm 1/0, zero biases)
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        model.save_pretrained(d)
        tok.save(str(d / "tokenizer.json"))
        if name == "bert":
            write_st_files(d, "cls", normalize=True, max_seq_length=16)
        else:
            write_st_files(d, "mean", normalize=False)
        out[name] = (d, getattr(model, "roberta", model), pad)
    return out


def hf_batch(d, pad: str, texts, max_length: int):
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), pad_token=pad)
    return tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
               return_token_type_ids=True)


@pytest.mark.parametrize("family", ["bert", "xlmr"])
def test_hidden_states_match_transformers_with_padding(folders, family):
    d, ref, pad = folders[family]
    enc = Encoder.load(d)
    assert (enc.pooler is not None) == (family == "bert")  # kept when the file has one
    b = hf_batch(d, pad, TEXTS, 60)
    assert b["attention_mask"].min() == 0  # the batch really is padded
    if family == "bert":  # a second segment, so token types matter
        b["token_type_ids"][0, 5:] = 1
    types = b.get("token_type_ids")
    with torch.no_grad():
        want = ref(**b)
        got = enc(b["input_ids"], b["attention_mask"], types)
    real = b["attention_mask"].bool()
    diff = (got - want.last_hidden_state)[real].abs().max().item()
    assert diff <= 1e-4, f"{family}: max abs hidden-state difference {diff}"
    if family == "bert":
        assert (enc.pooler(got) - want.pooler_output).abs().max() <= 1e-4


def test_xlmr_positions_skip_padding(folders):
    """XLM-R numbers only the real tokens (from pad_token_id + 1), so a text padded on the
    left gets the states it gets alone; BERT's positions would shift."""
    d, _, _ = folders["xlmr"]
    enc = Encoder.load(d)
    ids = torch.tensor(enc.tokenizer.backend.encode(TEXTS[2]).ids)
    padded = torch.cat([torch.full((4,), 1), ids])[None]
    with torch.no_grad():
        alone, batched = enc(ids[None]), enc(padded, (padded != 1).long())
    assert (alone[0] - batched[0, 4:]).abs().max() <= 1e-5


def hand_pooled(d, ref, pad, max_length, pooling, normalize):
    b = hf_batch(d, pad, TEXTS, max_length)
    with torch.no_grad():
        h = ref(**b).last_hidden_state
    m = b["attention_mask"][..., None].float()
    v = h[:, 0] if pooling == "cls" else (h * m).sum(1) / m.sum(1)
    return F.normalize(v, dim=-1) if normalize else v


def test_embed_equals_declared_pooling_by_hand(folders):
    d, ref, pad = folders["bert"]  # CLS + Normalize, max_seq_length 16
    enc = Encoder.load(d)
    assert (enc.pooling, enc.normalize, enc.max_length) == ("cls", True, 16)
    got = enc.embed(TEXTS, batch_size=2)  # sorted by length into three batches, then put back
    assert got.shape == (len(TEXTS), 32)
    assert (got - hand_pooled(d, ref, pad, 16, "cls", True)).abs().max() <= 1e-5
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)))
    # the override: mean pooling, normalised
    got = Encoder.load(d, pooling="mean").embed(TEXTS, batch_size=2)
    assert (got - hand_pooled(d, ref, pad, 16, "mean", True)).abs().max() <= 1e-5

    d, ref, pad = folders["xlmr"]  # mean, not normalised, no sentence_bert_config: 512 → 64
    enc = Encoder.load(d)
    assert (enc.pooling, enc.normalize, enc.max_length) == ("mean", False, 64)
    got = enc.embed(TEXTS, batch_size=3)
    assert (got - hand_pooled(d, ref, pad, 64, "mean", False)).abs().max() <= 1e-5
    # texts are stripped first, as sentence-transformers does (here "▁" pieces would differ)
    assert torch.equal(enc.embed([f"  {TEXTS[2]}\n"]), enc.embed([TEXTS[2]]))


def test_without_sentence_transformers_files_cls_not_normalised(folders, tmp_path):
    d, ref, pad = folders["bert"]
    bare = shutil.copytree(d, tmp_path / "bare", ignore=shutil.ignore_patterns("modules.json", "1_Pooling",
                                                                                 "sentence_bert_config.json"))
    enc = Encoder.load(bare)
    assert (enc.pooling, enc.normalize, enc.max_length) == ("cls", False, 64)
    got = enc.embed(TEXTS[:3])
    assert (got - hand_pooled(d, ref, pad, 64, "cls", False)[:3]).abs().max() <= 1e-5


def test_bad_folders_are_one_line_user_errors(folders, tmp_path):
    d, _, _ = folders["bert"]
    bad = shutil.copytree(d, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())

    def fails(match, **kw):
        with pytest.raises(UserError, match=match) as e:
            Encoder.load(bad, **kw)
        assert "\n" not in str(e.value)

    with pytest.raises(UserError, match="no such model directory"):
        Encoder.load(tmp_path / "nowhere")
    fails("pooling 'first'", pooling="first")
    (bad / "modules.json").write_text(json.dumps([{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    fails("'sentence_transformers.models.Dense' is not supported")
    write_st_files(bad, "cls", normalize=False)
    pooling = json.loads((bad / "1_Pooling" / "config.json").read_text()) | {"pooling_mode_mean_tokens": True}
    (bad / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    fails("pooling cls\\+mean is not supported")
    assert Encoder.load(bad, pooling="mean").pooling == "mean"  # as the message says
    (bad / "config.json").write_text(json.dumps(cfg | {"model_type": "distilbert", "architectures": ["DistilBertModel"]}))
    fails("model_type 'distilbert' \\(DistilBertModel\\) is not an encoder")
    (bad / "config.json").write_text(json.dumps(cfg | {"hidden_act": "relu"}))
    fails("hidden_act 'relu'")
    (bad / "config.json").write_text(json.dumps(cfg | {"hidden_size": 48}))
    fails("has shape")
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").unlink()
    fails("no model.safetensors")
    (bad / "config.json").unlink()
    fails("config.json: not found")
