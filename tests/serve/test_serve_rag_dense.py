"""Dense and hybrid search in the server's collections (jielong.serve.documents.Library with
--rag_embedder / --rag_method): an index built with an embedder is searched with it, uploads
are embedded with it, and every mismatch is one line at start-up."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

pytest.importorskip("fastapi")

from jielong.errors import UserError  # noqa: E402
from jielong.rag.index import Index, build_index  # noqa: E402
from jielong.serve.documents import Library  # noqa: E402

DOCS = {
    "hant.md": "# 退貨政策\n\n本店商品在收到後七天內可以退貨，請保留發票。\n",
    "hans.txt": "北京总部的营业时间是周一到周五，上午九点到下午六点。",
    "en.md": "# Shipping\n\nOrders ship from the Taipei warehouse within two business days.\n",
}


class Bigrams:
    """Hashed character bigrams, L2-normalised."""

    def __init__(self, name: str = "fake:bigrams", dim: int = 32):
        self.name, self.dim = name, dim

    def embed(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for a, b in itertools.pairwise(t):
                out[i, int(hashlib.md5((a + b).encode()).hexdigest(), 16) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    build_index([docs], root / "vec", embedder=Bigrams())
    build_index([docs], root / "bm25")
    return root


@pytest.mark.parametrize("question,source", [("退貨要幾天？", "hant.md"), ("北京总部几点营业", "hans.txt"),
                                             ("Where do orders ship from?", "en.md")])
def test_hybrid_search_in_a_collection(built, question, source):
    lib = Library({"docs": built / "vec"}, embedder=Bigrams())
    assert lib.method == "hybrid"  # the default with an embedder
    c = lib.collections["docs"]
    hits = lib.search(c, question, 2)
    assert hits and hits[0].method == "hybrid" and hits[0].chunk.source.endswith(source)
    # the same fusion as Index.search's, then the coverage gate
    ref = Index.load(built / "vec", embedder=Bigrams()).search(question, 2, "hybrid")
    assert hits[0].chunk.id == ref[0].chunk.id and hits[0].score == pytest.approx(ref[0].score)
    dense = Library({"docs": built / "vec"}, embedder=Bigrams(), method="dense")
    assert dense.search(dense.collections["docs"], question, 1)[0].method == "dense"
    weighted = Library({"docs": built / "vec"}, embedder=Bigrams(), dense_weight=0.25)
    assert weighted.collections["docs"].index.dense_weight == 0.25
    assert Library({"docs": built / "vec"}).search(Library({"docs": built / "vec"}).collections["docs"],
                                                   question, 1)[0].method == "bm25"  # no embedder: BM25


def test_mismatches_are_one_line_at_start(built):
    with pytest.raises(UserError, match=r"--rag docs=.*embedded with 'fake:bigrams', --rag_embedder is 'fake:other'"):
        Library({"docs": built / "vec"}, embedder=Bigrams("fake:other"))
    with pytest.raises(UserError, match="no vectors.*--embedder DIR"):
        Library({"docs": built / "bm25"}, embedder=Bigrams())
    with pytest.raises(UserError, match="--rag_method hybrid needs --rag_embedder"):
        Library({"docs": built / "vec"}, method="hybrid")
    with pytest.raises(UserError, match="--rag_method 'sparse'"):
        Library({"docs": built / "vec"}, embedder=Bigrams(), method="sparse")


def test_uploads_are_embedded_with_the_servers_embedder(tmp_path):
    lib = Library(uploads=tmp_path / "up")  # first BM25 only
    lib.add("mine", "note.md", "# 會議\n\n週三下午三點在三樓開會。\n".encode())
    assert lib.collections["mine"].index.manifest["embedder"] is None
    emb = Bigrams()
    again = Library(uploads=tmp_path / "up", embedder=emb)  # restarted with an embedder: embedded now
    c = again.collections["mine"]
    assert c.index.manifest["embedder"] == emb.name and c.index.vectors.shape[1] == emb.dim
    again.add("mine", "more.txt", b"Lunch is at noon on the roof.")
    hits = again.search(c, "what time is lunch", 2)
    assert hits[0].method == "hybrid" and hits[0].chunk.source.endswith("more.txt")
    assert len(c.index.vectors) == len(c.index.chunks) == 2
