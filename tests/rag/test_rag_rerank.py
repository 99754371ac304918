"""The reranker as a stage of retrieval (Index.search: the method's top rerank_n reordered by the
cross-encoder's scores, the rest after them) and hybrid's weighted reciprocal rank fusion; through
`jielong rag search` and `rag eval` with a tiny real reranker folder."""

from __future__ import annotations

import json

import pytest
from tiny_encoder import make_bert_dir

from jielong import cli
from jielong.errors import UserError
from jielong.rag.index import Index, build_index
from jielong.rag.rerank import Reranker

DOCS = {  # every one has 長城 (繁 or 简), so BM25 ranks all five, roughly the shortest first
    "a.txt": "長城是中國古代的軍事防禦工程，城牆綿延兩萬多公里。",
    "b.txt": "长城最有名的段落是八达岭，城墙很高。",
    "c.txt": "台北的城門不是長城，北門至今仍在。",
    "d.txt": "The Great Wall 長城 is long.",
    "e.txt": "長城",
}
QUERY = "長城"


class LengthReranker:
    """Scores a passage by its length, longest first (an order BM25 does not give here)."""

    def __init__(self):
        self.seen: list[list[str]] = []

    def score(self, query: str, passages: list[str]) -> list[float]:
        self.seen.append(passages)
        return [float(len(p)) for p in passages]


class TableEmbedder:
    """Each document's vector is a fixed one-hot, the query's too: a known dense ranking."""

    name, dim = "table", 5

    def embed(self, texts):
        import numpy as np
        out = np.zeros((len(texts), 5), np.float32)
        for i, t in enumerate(texts):
            if t == QUERY:
                out[i] = [0.1, 0.2, 0.3, 0.4, 0.8]
            else:
                out[i, sorted(DOCS.values()).index(t)] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def index_dir(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    build_index([docs], tmp_path / "index", embedder=TableEmbedder())
    return tmp_path / "index"


def test_the_reranker_reorders_the_first_stage_top_n(index_dir):
    first = Index.load(index_dir).search(QUERY, k=5)
    assert len(first) == 5
    r = LengthReranker()
    got = Index.load(index_dir, reranker=r, rerank_n=20).search(QUERY, k=3)
    want = sorted(first, key=lambda h: -len(h.chunk.text))[:3]
    assert [h.chunk.id for h in want] != [h.chunk.id for h in first[:3]]
    assert [h.chunk.id for h in got] == [h.chunk.id for h in want]
    assert [h.rank for h in got] == [1, 2, 3] and got[0].method == "bm25+rerank"
    assert got[0].score == len(want[0].chunk.text) and len(r.seen[0]) == 5  # all 5 read, 3 kept
    # rerank_n 2 of k 4: the first two ordered by length, the 3rd and 4th as BM25 ranked them
    two = Index.load(index_dir, reranker=LengthReranker(), rerank_n=2).search(QUERY, k=4)
    head = sorted(first[:2], key=lambda h: -len(h.chunk.text))
    assert head != first[:2]
    assert [h.chunk.id for h in two] == [h.chunk.id for h in head + first[2:4]]
    assert [h.method for h in two] == ["bm25+rerank"] * 2 + ["bm25"] * 2
    with pytest.raises(UserError, match="--rerank_n 0"):
        Index.load(index_dir, rerank_n=0)


def test_weighted_reciprocal_rank_fusion_by_hand(index_dir):
    idx = Index.load(index_dir, embedder=TableEmbedder())
    bm25, dense = idx.search(QUERY, 5, "bm25"), idx.search(QUERY, 5, "dense")
    assert [h.chunk.id for h in bm25] != [h.chunk.id for h in dense]
    for w in (1.0, 0.3, 0.0):
        fused: dict[str, float] = {}
        for hits, weight in ((bm25, 1.0), (dense, w)):
            for h in hits:
                fused[h.chunk.id] = fused.get(h.chunk.id, 0) + weight / (60 + h.rank)
        got = Index.load(index_dir, embedder=TableEmbedder(), dense_weight=w).search(QUERY, 5, "hybrid")
        assert [h.chunk.id for h in got] == sorted(fused, key=lambda i: -fused[i])
        assert [h.score for h in got] == pytest.approx(sorted(fused.values(), reverse=True))
    # weight 0: BM25's order, and no embedder is needed
    zero = Index.load(index_dir, dense_weight=0).search(QUERY, 5, "hybrid")
    assert [h.chunk.id for h in zero] == [h.chunk.id for h in bm25]
    with pytest.raises(UserError, match="--dense_weight -1"):
        Index.load(index_dir, dense_weight=-1)


def test_a_tiny_reranker_folder_through_search_and_eval(index_dir, tmp_path):
    texts = [QUERY, *DOCS.values(), "阿明住在哪裡？阿明住在龍鄉。"]
    folder = Reranker.load(make_bert_dir(tmp_path / "bert", texts), new_head=True).save(tmp_path / "rr")
    reranker = Reranker.load(folder)
    first = Index.load(index_dir).search(QUERY, k=5)
    scores = reranker.score(QUERY, [h.chunk.indexed_text() for h in first])
    assert len(set(scores)) == 5  # a random head still tells them apart
    want = [first[i].chunk.id for i in sorted(range(5), key=lambda i: -scores[i])][:3]
    hits = cli.run(["rag", "search", QUERY, "--index", str(index_dir), "--k", "3", "--reranker", str(folder)])
    assert [h.chunk.id for h in hits] == want
    assert [h.score for h in hits] == pytest.approx(sorted(scores, reverse=True)[:3], abs=1e-5)
    # rag eval: the same stage, recorded in retrieval.json
    data = tmp_path / "set.json"
    data.write_text(json.dumps({"data": [{"title": "城", "paragraphs": [{"context": t, "qas": [
        {"id": f"q{i}", "question": t[:6], "answers": [{"text": t[:2], "answer_start": 0}]}]}]}
        for i, t in enumerate(list(DOCS.values())[:3])]}, ensure_ascii=False), encoding="utf-8")
    r = cli.run(["rag", "eval", str(data), "--reranker", str(folder), "--rerank_n", "2",
                 "--out", str(tmp_path / "ev")])["retrieval"]
    assert r["reranker"] == str(folder) and r["rerank_n"] == 2 and r["questions"] == 3
    assert json.loads((tmp_path / "ev" / "retrieval.json").read_text())["rerank_n"] == 2
