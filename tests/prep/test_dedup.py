"""Exact and MinHash near-duplicate removal on planted Chinese and English articles."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ZH_AI, ZH_AI_EDITED, ZH_AI_OTHER

from jielong.errors import UserError
from jielong.prep.dedup import (
    MinHashConfig,
    MinHasher,
    dedup_texts,
    exact_key,
    guess_lang,
    lsh_components,
    shingles,
)

EN_VIOLIN = ("Learning to play the violin takes patience. Most teachers begin with posture: how to hold the bow "
             "lightly, how to rest the instrument on the shoulder, and how to keep the wrist relaxed. Only after "
             "weeks of open strings do students attempt simple melodies. Progress feels slow at first, yet a daily "
             "half hour of careful practice soon turns scratchy notes into something that sounds like music.")
EN_VIOLIN_EDITED = EN_VIOLIN.replace("weeks", "months", 1)
EN_PIANO = ("Learning to play the piano is a slow pleasure. Teachers usually start with scales and finger "
            "exercises, then move on to short pieces by Bach and Clementi. Students who practise every morning "
            "notice that their hands grow independent, and after a year many of them can accompany a choir or "
            "play carols for the family in December.")


def jaccard(a: str, b: str, cfg: MinHashConfig) -> float:
    x, y = set(shingles(a, None, cfg).tolist()), set(shingles(b, None, cfg).tolist())
    return len(x & y) / len(x | y)


def test_chinese_near_duplicate_removed_and_same_topic_article_kept():
    cfg = MinHashConfig()
    assert jaccard(ZH_AI, ZH_AI_EDITED, cfg) > 0.8      # the planted pair really is near
    assert jaccard(ZH_AI, ZH_AI_OTHER, cfg) < 0.1       # and the other article really is not
    r = dedup_texts([ZH_AI, ZH_AI_OTHER, ZH_AI_EDITED])
    assert r.status == ["keep", "keep", "near_duplicate"]
    assert r.duplicate_of.tolist() == [0, 1, 0]
    assert r.cluster_size.tolist() == [2, 1, 0]
    assert r.counts == {"keep": 2, "exact_duplicate": 0, "near_duplicate": 1, "clusters": 1}


def test_chinese_uses_character_shingles_english_word_shingles():
    assert guess_lang(ZH_AI) == "zh" and guess_lang(EN_VIOLIN) == "en"
    cfg = MinHashConfig(zh_shingle=5, en_shingle=5)
    letters = sum(ch.isalnum() for ch in "".join(ZH_AI.split()))
    assert len(shingles(ZH_AI, None, cfg)) == letters - 4         # one per 5-character window
    words = len(EN_VIOLIN.replace(":", " ").replace(",", " ").replace(".", " ").split())
    assert len(shingles(EN_VIOLIN, None, cfg)) == words - 4       # one per 5-word window
    # punctuation and case don't change English shingles
    assert np.array_equal(shingles("Hello, World! again and again", "en", cfg),
                          shingles("hello world again and again", "en", cfg))


def test_english_near_duplicate_with_word_shingles():
    r = dedup_texts([EN_VIOLIN, EN_PIANO, EN_VIOLIN_EDITED])
    assert r.status == ["keep", "keep", "near_duplicate"]
    assert r.cluster_size.tolist() == [2, 1, 0]


def test_exact_duplicates_after_normalisation():
    variants = [EN_PIANO, EN_PIANO.upper(), "  " + EN_PIANO.replace(" ", "\n  "), "Ｌｅａｒｎｉｎｇ" + EN_PIANO[8:]]
    assert len({exact_key(v) for v in variants}) == 1  # case, spaces and full-width letters
    r = dedup_texts([*variants, EN_VIOLIN], near=False)
    assert r.status == ["keep"] + ["exact_duplicate"] * 3 + ["keep"]
    assert r.cluster_size.tolist() == [4, 0, 0, 0, 1]


def test_cluster_size_counts_exact_and_near_members():
    docs = [ZH_AI, ZH_AI_EDITED, ZH_AI, ZH_AI_OTHER, ZH_AI_EDITED + "\n", EN_PIANO]
    r = dedup_texts(docs)
    assert r.status == ["keep", "near_duplicate", "exact_duplicate", "keep", "exact_duplicate", "keep"]
    assert r.duplicate_of.tolist() == [0, 0, 0, 3, 0, 5]
    assert r.cluster_size.tolist() == [4, 0, 0, 1, 0, 1]   # the survivor stands for all four
    assert int(r.cluster_size.sum()) == len(docs)


def test_clusters_are_transitive():
    # a ~ b and b ~ c (LSH buckets), a and c share no bucket: still one cluster
    sigs = np.array([[1, 2, 9, 9], [1, 2, 3, 4], [7, 8, 3, 4], [5, 5, 5, 5]], dtype=np.uint32)
    assert lsh_components(sigs, bands=2, rows=2).tolist() == [0, 0, 0, 3]


def test_parameters_are_configurable():
    docs = [EN_VIOLIN, EN_VIOLIN_EDITED]
    # one band of all 112 rows needs identical signatures: the near-duplicate survives
    assert dedup_texts(docs, MinHashConfig(bands=1, rows=112)).status == ["keep", "keep"]
    # single-character shingles and 1-row bands make two different Chinese articles "near"
    loose = MinHashConfig(zh_shingle=1, bands=112, rows=1)
    assert dedup_texts([ZH_AI, ZH_AI_OTHER], loose).status == ["keep", "near_duplicate"]
    # shorter word shingles tolerate more edits
    edited = EN_VIOLIN.replace("patience", "practice").replace("weeks", "months").replace("slow", "hard")
    assert jaccard(EN_VIOLIN, edited, MinHashConfig(en_shingle=2)) > jaccard(EN_VIOLIN, edited, MinHashConfig())
    assert MinHashConfig(bands=20, rows=5, permutations=100).threshold == pytest.approx((1 / 20) ** (1 / 5))
    with pytest.raises(UserError, match="permutations"):
        MinHashConfig(bands=20, rows=8)
    with pytest.raises(UserError, match="zh_shingle"):
        MinHashConfig(zh_shingle=0)


def test_signatures_are_deterministic_and_seeded():
    a, b = MinHasher(MinHashConfig(seed=1)), MinHasher(MinHashConfig(seed=1))
    assert np.array_equal(a(ZH_AI), b(ZH_AI))
    assert not np.array_equal(a(ZH_AI), MinHasher(MinHashConfig(seed=2))(ZH_AI))
    # the share of equal min-hashes estimates the Jaccard similarity
    cfg = MinHashConfig(permutations=512, bands=64, rows=8)
    h = MinHasher(cfg)
    agree = float((h(ZH_AI) == h(ZH_AI_EDITED)).mean())
    assert abs(agree - jaccard(ZH_AI, ZH_AI_EDITED, cfg)) < 0.06


def test_texts_without_letters_are_not_clustered():
    r = dedup_texts(["……", "!!!", "", EN_PIANO], exact=False)
    assert r.status == ["keep"] * 4
