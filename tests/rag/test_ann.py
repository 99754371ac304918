"""The ANN index against exact search: recall on clustered unit vectors, exact search by hand,
save/load (faiss's own format, no pickle) giving the same answers, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from jielong.errors import UserError
from jielong.rag.ann import AnnIndex, exact_search, recall_against_exact

pytest.importorskip("faiss")


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """3,000 vectors of 64 dims in 30 clusters (embeddings of text cluster by topic) and 100
    queries near them."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 64))
    v = unit(centres[rng.integers(0, 30, 3000)] + 0.5 * rng.standard_normal((3000, 64)))
    q = unit(centres[rng.integers(0, 30, 100)] + 0.5 * rng.standard_normal((100, 64)))
    return v, q


def test_exact_search_by_hand():
    v = unit(np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=np.float32))
    scores, ids = exact_search(v, np.array([1, 0.2], dtype=np.float32), 3)
    assert ids.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(scores[0], [1, 1.2 / 2**0.5, 0.2], rtol=1e-6)


def test_recall_against_exact_and_save_load(data, tmp_path):
    v, q = data
    ann = AnnIndex.build(v)
    assert len(ann) == 3000 and ann.dim == 64
    assert recall_against_exact(v, q, k=10, index=ann) >= 0.9
    scores, ids = ann.search(q[0], k=5)
    assert ids.shape == (1, 5) and np.all(np.diff(scores[0]) <= 1e-6)  # best first
    np.testing.assert_allclose(scores[0], v[ids[0]] @ q[0], rtol=1e-5)
    ann.save(tmp_path / "v.faiss")
    assert (tmp_path / "v.faiss").read_bytes()[:1] != b"\x80"  # not a pickle
    back = AnnIndex.load(tmp_path / "v.faiss")
    assert np.array_equal(back.search(q, 10)[1], ann.search(q, 10)[1])
    # a poorer graph gives up recall, and the measure says so
    assert recall_against_exact(v, q, k=10, m=2, ef_construction=4, ef_search=4) < 0.9


def test_few_vectors_and_bad_input(tmp_path):
    v = unit(np.eye(3, dtype=np.float32) + 0.1)
    scores, ids = AnnIndex.build(v).search(v[0], k=5)
    assert sorted(ids[0][:3].tolist()) == [0, 1, 2] and ids[0][3:].tolist() == [-1, -1]
    assert np.isneginf(scores[0][3:]).all()
    with pytest.raises(UserError, match=r"expected \(n, 3\)"):
        AnnIndex.build(v).search(np.ones(4, dtype=np.float32))
    with pytest.raises(UserError, match="no such ANN index"):
        AnnIndex.load(tmp_path / "missing.faiss")
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(UserError, match="not a faiss index"):
        AnnIndex.load(tmp_path / "bad.faiss")
