"""The index: incremental builds (only changed files read and embedded), BM25 across scripts,
the whitespace bug reproduced, dense and hybrid search with a fake embedder, the one-line
errors, the CLI, and recall on real DRCD paragraphs."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from jielong import cli
from jielong.encoder import Encoder, EncoderConfig
from jielong.errors import UserError
from jielong.rag import index as index_module
from jielong.rag.index import Index, build_index, read_chunks
from jielong.rag.sparse import Sparse, tokenize


class FakeEmbedder:
    """Hashed bag of character bigrams, L2-normalised; counts the texts it embeds."""

    def __init__(self, name: str = "fake:bigrams", dim: int = 64):
        self.name, self.dim, self.calls, self.texts = name, dim, 0, 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for a, b in itertools.pairwise(t):
                out[i, int(hashlib.md5((a + b).encode()).hexdigest(), 16) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


DOCS = {
    "hant.txt": "台北101是台灣最高的建築物。它位於信義區，每年跨年都有煙火表演。",
    "hans.md": "# 长城\n\n长城是中国古代的军事防御工程。它绵延两万多公里。\n\n## 旅游\n\n八达岭是最有名的段落。",
    "en.txt": "The Eiffel Tower stands in Paris. It was built for the 1889 World's Fair.",
    "bad.pdf": "%PDF-1.4 garbage",
}


def write_docs(d: Path, docs: dict[str, str]) -> None:
    d.mkdir(exist_ok=True)
    for name, text in docs.items():
        (d / name).write_text(text, encoding="utf-8")


def test_incremental_rebuild_reads_and_embeds_only_what_changed(tmp_path, monkeypatch):
    docs, out = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, DOCS)
    emb = FakeEmbedder()
    r = build_index([docs], out, embedder=emb, chunk_tokens=16, overlap=4)
    assert (len(r.indexed), len(r.unchanged), len(r.removed), r.skipped[0][0]) == (3, 0, 0, str(docs / "bad.pdf"))
    assert "unreadable PDF" in r.skipped[0][1] and emb.texts == r.chunks == r.embedded
    first = read_chunks(out)
    vectors = load_file(str(out / "vectors.safetensors"))["vectors"]
    assert vectors.shape == (len(first), 64)
    np.testing.assert_allclose(vectors, emb.embed([c.indexed_text() for c in first]), atol=1e-6)

    tokenized = []
    monkeypatch.setattr(index_module, "tokenize", lambda text, *a: tokenized.append(text) or tokenize(text, *a))
    emb.texts = 0  # change one file, delete one, add one
    (docs / "en.txt").write_text("The Louvre is a museum in Paris. It holds the Mona Lisa.", encoding="utf-8")
    (docs / "hant.txt").unlink()
    (docs / "new.txt").write_text("西湖在杭州。", encoding="utf-8")
    r = build_index([docs], out, embedder=emb, chunk_tokens=16, overlap=4)
    assert sorted(map(lambda p: Path(p).name, r.indexed)) == ["en.txt", "new.txt"]
    assert [Path(p).name for p in r.unchanged] == ["hans.md"]
    assert [Path(p).name for p in r.removed] == ["hant.txt"] and len(r.skipped) == 1
    second = read_chunks(out)
    new_vectors = load_file(str(out / "vectors.safetensors"))["vectors"]
    kept = [c for c in second if c.source.endswith("hans.md")]
    assert emb.texts == r.embedded == len(second) - len(kept)  # only new chunks were embedded
    assert len(tokenized) == len(second) - len(kept)  # and tokenized for BM25
    monkeypatch.undo()
    build_index([docs], tmp_path / "fresh", chunk_tokens=16, overlap=4)  # BM25 as if built anew
    for q in ("长城 八达岭", "Paris museum", "西湖"):
        np.testing.assert_allclose(Index.load(out).bm25_scores(q), Index.load(tmp_path / "fresh").bm25_scores(q))
    old_row = {c.id: i for i, c in enumerate(first)}
    for i, c in enumerate(second):
        if c.source.endswith("hans.md"):  # the very same chunk and vector, not recomputed
            assert c == first[old_row[c.id]]
            assert np.array_equal(new_vectors[i], vectors[old_row[c.id]])
    assert not any(c.source.endswith("hant.txt") for c in second)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedder"] == "fake:bigrams" and manifest["dim"] == 64
    assert set(manifest["files"]) == {str(docs / n) for n in ("hans.md", "en.txt", "new.txt")}
    hits = Index.load(out).search("Mona Lisa", k=3)
    assert hits[0].chunk.source.endswith("en.txt")

    r = build_index([docs], out, embedder=emb, chunk_tokens=32, overlap=4)  # new size: re-chunk all
    assert len(r.indexed) == 3 and not r.unchanged
    other = FakeEmbedder("fake:other")
    r = build_index([docs], out, embedder=other, chunk_tokens=32, overlap=4)  # new model: re-embed all
    assert len(r.unchanged) == 3 and other.texts == r.chunks


def test_simplified_query_finds_traditional_document_and_whitespace_scores_zero(tmp_path):
    docs, out = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, {k: v for k, v in DOCS.items() if k != "bad.pdf"})
    for kind in ("jieba", "bigram"):
        build_index([docs], out, tokenizer=kind)
        idx = Index.load(out)
        hits = idx.search("台湾最高的建筑物在哪里", k=2)  # 简 query, 繁 document
        assert hits[0].chunk.source.endswith("hant.txt") and hits[0].rank == 1, kind
        assert idx.search("萬里長城有多長", k=1)[0].chunk.source.endswith("hans.md"), kind  # and back
        assert idx.search("eiffel towers", k=1)[0].chunk.source.endswith("en.txt"), kind  # stemmed
    build_index([docs], out, tokenizer="whitespace")
    idx = Index.load(out)
    assert idx.search("台湾最高的建筑物在哪里", k=5) == []
    assert not idx.bm25_scores("台北101是台灣最高的建築物").any()  # even the document's own words
    assert idx.search("Eiffel Tower", k=1)[0].chunk.source.endswith("en.txt")  # English still works


def test_tokens():
    assert tokenize("檢索增強 and the Running dogs") == ["检索", "增强", "run", "dog"]
    assert tokenize("圖書館", "bigram") == ["图书", "书馆"]
    assert tokenize("图书馆 ok", "whitespace") == ["图书馆", "ok"]
    bm25 = Sparse.build([tokenize("今天天氣很好"), tokenize("明天下雨")])
    s = bm25.scores(tokenize("今天天气"))
    assert s[0] > 0 and s[1] == 0


def test_dense_and_hybrid_search_and_their_errors(tmp_path):
    docs, out = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, {k: v for k, v in DOCS.items() if k != "bad.pdf"})
    emb = FakeEmbedder()
    build_index([docs], out, embedder=emb)
    idx = Index.load(out, embedder=emb)
    q = "台北101跨年煙火"
    dense = idx.search(q, k=3, method="dense")
    assert dense[0].chunk.source.endswith("hant.txt") and dense[0].score > dense[1].score
    bm25 = idx.search(q, k=3, method="bm25")
    hybrid = idx.search(q, k=3, method="hybrid")
    # reciprocal rank fusion by hand: Σ 1 / (60 + rank) over the two lists
    fused: dict[str, float] = {}
    for hits in (idx.search(q, k=50, method="bm25"), idx.search(q, k=50, method="dense")):
        for h in hits:
            fused[h.chunk.id] = fused.get(h.chunk.id, 0) + 1 / (60 + h.rank)
    assert [h.chunk.id for h in hybrid] == sorted(fused, key=lambda i: -fused[i])[:3]
    assert hybrid[0].score == pytest.approx(fused[hybrid[0].chunk.id]) and bm25[0].method == "bm25"
    with pytest.raises(UserError, match="embedded with 'fake:bigrams', the query with 'fake:other'"):
        Index.load(out, embedder=FakeEmbedder("fake:other")).search(q, method="dense")
    with pytest.raises(UserError, match="needs the index's embedder"):
        Index.load(out).search(q, method="hybrid")
    build_index([docs], tmp_path / "sparse-only")
    with pytest.raises(UserError, match="no vectors"):
        Index.load(tmp_path / "sparse-only", embedder=emb).search(q, method="dense")
    with pytest.raises(UserError, match="no index here"):
        Index.load(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no such file or folder"):
        build_index([tmp_path / "missing"], out)
    (tmp_path / "only-bad").mkdir()
    (tmp_path / "only-bad" / "x.pdf").write_bytes(b"%PDF-1.4 nope")
    with pytest.raises(UserError, match="nothing to index .*unreadable PDF"):
        build_index([tmp_path / "only-bad"], tmp_path / "i2")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not a jielong index"):
        build_index([docs], tmp_path / "stuff")


def test_cli_index_and_search(tmp_path, capsys):
    docs, out = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, DOCS)
    cli.run(["rag", "index", str(docs), "--out", str(out), "--chunk_tokens", "16", "--overlap", "4"])
    said = capsys.readouterr().out
    assert "3 files indexed, 0 unchanged, 0 removed, 1 skipped" in said and "bad.pdf: unreadable PDF" in said
    cli.run(["rag", "index", str(docs), "--out", str(out), "--chunk_tokens", "16", "--overlap", "4"])
    assert "0 files indexed, 3 unchanged" in capsys.readouterr().out
    hits = cli.run(["rag", "search", "八达岭", "--index", str(out), "--k", "2"])
    said = capsys.readouterr().out
    assert hits[0].chunk.heading == "长城 > 旅游"
    assert f"[1] {docs / 'hans.md'}  长城 > 旅游  bm25" in said and "八达岭是最有名的段落。" in said
    assert "\033[" not in said  # not a terminal: no colour
    with pytest.raises(SystemExit) as e:
        cli.main(["rag", "search", "x", "--index", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "no index here" in err


def test_drcd_paragraphs_bm25_recall(tmp_path, shared_data):
    data = json.loads((shared_data / "drcd-dev.json").read_text(encoding="utf-8"))
    paragraphs, questions = [], []
    for article in data["data"]:
        for p in article["paragraphs"]:
            if len(paragraphs) < 50:
                questions += [(qa["question"], len(paragraphs)) for qa in p["qas"]]
                paragraphs.append({"context": p["context"], "qas": []})
    (tmp_path / "drcd50.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]},
                                                     ensure_ascii=False), encoding="utf-8")
    build_index([tmp_path / "drcd50.json"], tmp_path / "index")
    idx = Index.load(tmp_path / "index")
    found = 0
    for q, gold in questions:
        found += any(h.chunk.source.endswith(f"#{gold}") for h in idx.search(q, k=5))
    recall = found / len(questions)
    assert len(questions) >= 100 and recall >= 0.95, recall  # measured 149 of 150


def tiny_encoder_folder(d: Path) -> Path:
    """A random 2-layer BERT (width 32) saved as a Hugging Face folder, with a WordPiece
    tokenizer over the characters and words of DOCS."""
    chars = sorted({c for t in DOCS.values() for c in t.lower() if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + chars + [f"##{c}" for c in chars]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(dict.fromkeys(vocab))}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    cfg = dict(model_type="bert", vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    (d / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in Encoder(EncoderConfig(**cfg)).state_dict().items()},
              str(d / "model.safetensors"))
    return d


def test_cli_with_an_encoder_folder(tmp_path, capsys):
    docs, out = tmp_path / "docs", tmp_path / "index"
    write_docs(docs, {k: v for k, v in DOCS.items() if k != "bad.pdf"})
    enc = tiny_encoder_folder(tmp_path / "tinybert")
    cli.run(["rag", "index", str(docs), "--out", str(out), "--embedder", str(enc)])
    name = json.loads((out / "manifest.json").read_text())["embedder"]
    assert name.startswith("encoder:tinybert:cls:")  # + a fingerprint of the weights
    chunks = read_chunks(out)
    target = next(c for c in chunks if c.source.endswith("en.txt"))
    hits = cli.run(["rag", "search", target.indexed_text(), "--index", str(out), "--method", "dense",
                    "--embedder", str(enc)])
    assert hits[0].chunk.id == target.id and hits[0].score == pytest.approx(1.0, abs=1e-5)
    (enc / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling",
                                                   "type": "sentence_transformers.models.Pooling"}]))
    (enc / "1_Pooling").mkdir()
    (enc / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    with pytest.raises(UserError, match="'encoder:tinybert:cls:[0-9a-f]{8}', the query with 'encoder:tinybert:mean:"):
        cli.run(["rag", "search", "x", "--index", str(out), "--method", "hybrid", "--embedder", str(enc)])


def test_a_large_index_searches_through_its_hnsw_graph(tmp_path):
    docs = tmp_path / "many"
    docs.mkdir()
    for i in range(40):
        (docs / f"d{i:02d}.txt").write_text(f"第{i}號文件講的是編號{i * 7}的零件。Part {i} fits model {i * 3}.",
                                             encoding="utf-8")
    emb = FakeEmbedder()
    build_index([docs], tmp_path / "big", embedder=emb, ann_limit=10)
    assert (tmp_path / "big" / "vectors.faiss").is_file()
    big = Index.load(tmp_path / "big", embedder=emb)
    assert big.ann is not None and len(big.ann) == len(big.chunks)
    exact = Index(big.path, big.manifest, big.chunks, big.sparse, big.vectors, emb)
    for q in ("第12號文件", "Part 31 fits model 93"):
        via_graph, direct = big.search(q, 5, "dense"), exact.search(q, 5, "dense")
        assert via_graph[0].chunk.id == direct[0].chunk.id  # (equal scores may come in any order)
        assert [round(h.score, 5) for h in via_graph] == [round(h.score, 5) for h in direct]
    build_index([docs], tmp_path / "small", embedder=emb)  # under the limit: exact only
    assert not (tmp_path / "small" / "vectors.faiss").exists()
