"""The synthetic demo corpus: deterministic, held-out questions really held out, three languages."""

import re
import time
from collections import Counter

import pytest

from jielong.demo import world as synthetic
from jielong.demo.world import (
    AMBIGUOUS_WORDS,
    LANGS,
    SENSES,
    TEMPLATES,
    build_corpus,
    demo_prompts,
    render,
)

# Traditional -> Simplified for every character the world uses that differs between the
# scripts, written out independently of the module so a slip in either shows up.
T2S = str.maketrans(
    "龍華鳳偉麗強軍東紅蘭雲濤靜輝凱寧鵬楓橋灣嶺貓鸚鵡烏龜馬鵝魚師醫農麵畫漁藍綠黃讀書釣"
    "鄉寵裡養顧職業鎮當歡顏愛別閒時週從邊樹個蘋幾給開買機電傳訊種鍋",
    "龙华凤伟丽强军东红兰云涛静辉凯宁鹏枫桥湾岭猫鹦鹉乌龟马鹅鱼师医农面画渔蓝绿黄读书钓"
    "乡宠里养顾职业镇当欢颜爱别闲时周从边树个苹几给开买机电传讯种锅",
)
TRAD_ONLY = set(chr(c) for c in T2S)
SIMP_ONLY = set(map(chr, T2S.values()))
VOCAB = [synthetic.PEOPLE, synthetic.TOWNS, synthetic.LANDMARKS, synthetic.ANIMALS,
         synthetic.JOBS, synthetic.COLOURS, synthetic.HOBBIES]


@pytest.fixture(scope="module")
def corpus():
    t0 = time.perf_counter()
    c = build_corpus(seed=0, n_docs=4000)
    assert time.perf_counter() - t0 < 2.0
    return c


def _world_facts(c):
    return [(f.kind, f.subject, f.value) for f in c.world.facts()]


def test_same_seed_same_corpus_other_seed_differs():
    a, b, other = build_corpus(3, n_docs=300), build_corpus(3, n_docs=300), build_corpus(4, n_docs=300)
    assert (a.train, a.val, a.questions) == (b.train, b.val, b.questions)
    assert _world_facts(a) == _world_facts(b)
    assert a.train != other.train and a.questions != other.questions
    assert _world_facts(a) != _world_facts(other)


def test_sizes_and_all_languages_in_train(corpus):
    assert len(corpus.train) == 4000
    assert 0.6e6 <= sum(len(d.encode()) for d in corpus.train) <= 1.5e6
    kinds = Counter()
    for doc in corpus.train:
        if re.fullmatch(r"(\d+ [+-] \d+ = \d+\n?)+", doc):
            kinds["math"] += 1
        elif doc.isascii():
            kinds["en"] += 1
        elif set(doc) & SIMP_ONLY:
            kinds["zh-Hans"] += 1
            assert not set(doc) & TRAD_ONLY, doc
        elif set(doc) & TRAD_ONLY:
            kinds["zh-Hant"] += 1
    for lang in ("en", "zh-Hant", "zh-Hans", "math"):
        assert kinds[lang] > 300, kinds


def test_val_is_disjoint_from_train(corpus):
    assert len(corpus.val) >= 20
    assert not set(corpus.val) & set(corpus.train)


def test_questions_cover_languages_and_are_well_formed(corpus):
    qs = corpus.questions
    assert 200 <= len(qs) <= 400
    by_lang = Counter(q.lang for q in qs)
    assert set(by_lang) == {"en", "zh-Hant", "zh-Hans", "math"} and min(by_lang.values()) >= 40
    for q in qs:
        assert q.answer and q.answer in q.choices and len(set(q.choices)) == len(q.choices)
        assert len(q.choices) >= (8 if q.lang == "math" else 4)
        spaced = q.lang in ("en", "math")
        assert all(c.startswith(" ") == spaced for c in q.choices), q
        assert not q.prompt.endswith(" ")
        if q.lang == "zh-Hant":
            assert not set(q.prompt + q.answer) & SIMP_ONLY, q
        if q.lang == "zh-Hans":
            assert not set(q.prompt + q.answer) & TRAD_ONLY, q
    assert {q.kind for q in qs if q.lang == "math"} == {"add", "sub"}


def test_held_out_strings_never_in_train(corpus):
    train = "\x00".join(corpus.train)
    for q in corpus.questions:
        assert q.prompt + q.answer not in train, q


def test_held_out_facts_are_stated_in_train_other_ways(corpus):
    said = Counter(s.strip() for doc in corpus.train for s in re.findall(r"[^.。\n]+[.。]", doc))
    renderings = {}  # held-out string -> every sentence stating the same fact
    for fact in corpus.world.facts():
        sentences = [render(fact, lang, t) for lang in LANGS for t in TEMPLATES[fact.kind][lang]]
        for s in sentences:
            renderings[s[:-1]] = sentences
    for q in corpus.questions:
        if q.lang == "math":
            continue
        held = q.prompt + q.answer
        assert held in renderings, q
        assert sum(said[s] for s in renderings[held] if s[:-1] != held) >= 3, q
        assert said[held + ("." if q.lang == "en" else "。")] == 0


def test_answers_are_spread_evenly(corpus):
    by_kind: dict[str, list] = {}
    for q in corpus.questions:
        by_kind.setdefault(q.kind, []).append(q)
    for kind, qs in by_kind.items():
        picks = Counter(q.choices.index(q.answer) for q in qs)
        if kind in ("add", "sub"):  # sums are not uniform; the answer's slot must be
            assert max(picks.values()) <= 0.3 * len(qs), (kind, picks)
        else:
            assert max(picks.values()) <= 2 * len(qs) / len(qs[0].choices), (kind, picks)


def test_traditional_and_simplified_are_written_consistently():
    for terms in VOCAB:
        for t in terms:
            assert t.hant.translate(T2S) == t.hans, t
            if set(t.hant) & TRAD_ONLY:
                assert t.hant != t.hans, t
    for by_lang in TEMPLATES.values():
        for hant, hans in zip(by_lang["zh-Hant"], by_lang["zh-Hans"], strict=True):
            assert hant.translate(T2S) == hans
    assert sum(p.hant != p.hans for p in synthetic.PEOPLE) >= 12
    for senses in SENSES.values():
        for by_lang in senses.values():
            for hant, hans in zip(by_lang.get("zh-Hant", []), by_lang.get("zh-Hans", []), strict=True):
                assert hant.translate(T2S) == hans


def test_ambiguous_words_in_both_senses_in_all_three_languages(corpus):
    """蘋果/苹果/apple as a fruit and as a phone in the training text of every language (and
    小米, "bank" in theirs), a small share of the documents, every sentence a template's."""
    said = Counter(s.strip() for doc in corpus.train for s in re.findall(r"[^.。]+[.。]", doc))
    names = {lang: [p.say(lang) for p in synthetic.PEOPLE] for lang in LANGS}
    for word, senses in SENSES.items():
        for sense, by_lang in senses.items():
            for lang, templates in by_lang.items():
                assert all(AMBIGUOUS_WORDS[word][lang] in t for t in templates), (word, sense, lang)
                rendered = {t.format(s=a, o=b) for t in templates for a in names[lang] for b in names[lang] if a != b}
                assert sum(n for s, n in said.items() if s in rendered) >= 20, (word, sense, lang)
    assert set(AMBIGUOUS_WORDS["apple"]) == set(LANGS)
    share = sum(any(w in d for w in ("蘋果", "苹果", "apple", "小米", " bank")) for d in corpus.train) / len(corpus.train)
    assert 0.03 <= share <= 0.07, share


def test_every_kind_has_three_templates_per_language_and_one_askable():
    for kind, by_lang in TEMPLATES.items():
        for lang in LANGS:
            assert len(by_lang[lang]) >= 3, (kind, lang)
            assert any(synthetic.askable(t) for t in by_lang[lang]), (kind, lang)


def test_demo_prompts():
    prompts = demo_prompts()
    assert 6 <= len(prompts) <= 8 and all(isinstance(p, str) and p for p in prompts)
    assert any(p.isascii() and "=" in p for p in prompts)
    assert any(set(p) & TRAD_ONLY for p in prompts) and any(set(p) & SIMP_ONLY for p in prompts)


def test_questions_say_what_follows_the_answer(corpus):
    for q in corpus.questions:
        assert q.end == {"en": ".", "zh-Hant": "。", "zh-Hans": "。", "math": "\n"}[q.lang], q
        if q.lang != "math":  # the whole held-out sentence, as the templates write it
            assert any(render(f, q.lang, t) == q.prompt + q.answer + q.end
                       for f in corpus.world.facts() for t in TEMPLATES[f.kind][q.lang])


def test_tokenizer_pieces_give_one_token_per_chinese_character():
    from jielong.tokenizer import train_tokenizer

    c = build_corpus(seed=0, n_docs=1500)
    han = re.compile(r"[\u4e00-\u9fff]")
    tok = train_tokenizer(synthetic.han_char_pieces(c.train), vocab_size=2048)
    for doc in c.train[:300]:
        ids = tok.encode(doc)
        assert ids == [i for p in synthetic.han_char_pieces([doc]) for i in tok.encode(p)]
        pieces = [tok.token_bytes(i).decode("utf-8") for i in ids]  # whole characters only
        assert all(len(p) == 1 for p in pieces if han.search(p)), pieces
    # Trained on whole documents, BPE learns fact sentences as tokens: the defect this avoids.
    whole = train_tokenizer(c.train, vocab_size=2048)
    longest = max(len(whole.token_bytes(i).decode("utf-8", "replace")) for i in range(whole.vocab_size))
    assert longest >= 8


def test_seen_sums_are_stated_in_train(corpus):
    lines = {line for doc in corpus.train for line in doc.splitlines()}
    assert len(corpus.seen_sums) == sum(q.lang == "math" for q in corpus.questions)
    for q in corpus.seen_sums:
        assert q.prompt + q.answer in lines and q.answer in q.choices and q.end == "\n"
