"""Finetuning data from the demo world: deterministic, held-out items really held out, every
language and kind present, records valid in all three conversation formats."""

import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from jielong.demo import tasks as st
from jielong.demo.tasks import (
    QA_KINDS,
    answer_sentence,
    as_format,
    qa_conversations,
    spam_dataset,
    translation_pairs,
    world_for,
)
from jielong.demo.world import LANGS, build_corpus

# Traditional -> Simplified for the characters of these templates that differ between the
# scripts, written out by hand. Characters that are also ordinary in the other script
# (遊/游, 覆, 錶/表, 週/周, 麵/面, 裡/里, 於/于) count as script-only on one side only.
T2S = dict(zip(
    "來個傳僅優凍別剛動參嗎園場學審寵帳帶從愛戶撥擊時會業樂機歡沒減為無獎現當禮筆簡紅結給經"
    "緊職腦蘋見親訊記詐話詳認說誰請謝證識譯貸費賺這連運過選還邊鄉銀鎮閒電領額顏養驗騙體麼點"
    "龍發錄鏈",
    "来个传仅优冻别刚动参吗园场学审宠账带从爱户拨击时会业乐机欢没减为无奖现当礼笔简红结给经"
    "紧职脑苹见亲讯记诈话详认说谁请谢证识译贷费赚这连运过选还边乡银镇闲电领额颜养验骗体么点"
    "龙发录链",
    strict=True))
T2S_EXACT = str.maketrans({**T2S, "於": "于", "週": "周", "裡": "里", "麵": "面", "錶": "表",
                           "遊": "游"})
TRAD_ONLY = set(T2S) | set("於週裡麵錶遊")
SIMP_ONLY = set(T2S.values())


@pytest.fixture(scope="module")
def world():
    return world_for(0)


@pytest.fixture(scope="module")
def qa(world):
    t0 = time.perf_counter()
    data = qa_conversations(world, seed=0, n_train=3000)
    assert time.perf_counter() - t0 < 1.0
    return data


@pytest.fixture(scope="module")
def translations(world):
    return translation_pairs(world, seed=0, n_train=2000, n_test=120)


@pytest.fixture(scope="module")
def spam():
    return spam_dataset(seed=0, n_train=2000, n_test=400)


def _script_ok(text: str, lang: str) -> bool:
    if lang == "en":
        return text.isascii()
    return not set(text) & (SIMP_ONLY if lang == "zh-Hant" else TRAD_ONLY)


def _check_messages(messages: list[dict]) -> None:
    assert isinstance(messages, list) and messages
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str)
               and m["content"].strip() for m in messages), messages
    body = messages[1:] if messages[0]["role"] == "system" else messages
    assert [m["role"] for m in body] == ["user", "assistant"] * (len(body) // 2), messages
    assert body and len(body) % 2 == 0


def _from_format(record: dict) -> dict:
    """The test's own reading of sharegpt / alpaca back into a messages record."""
    if "messages" in record:
        return record
    if "conversations" in record:
        roles = {"system": "system", "human": "user", "gpt": "assistant"}
        return {"messages": [{"role": roles[m["from"]], "content": m["value"]}
                             for m in record["conversations"]]}
    assert set(record) <= {"instruction", "input", "output", "system", "history"}
    assert record["input"] == ""
    messages = [{"role": "system", "content": record["system"]}] if "system" in record else []
    for q, a in [*record.get("history", []), (record["instruction"], record["output"])]:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": messages}


# ---- the world ---------------------------------------------------------------------------------

def test_world_for_is_the_pretraining_world():
    def facts(w):
        return [(f.kind, f.subject, f.value) for f in w.facts()]
    assert facts(world_for(5)) == facts(build_corpus(5, n_docs=20).world)
    assert facts(world_for(5)) != facts(world_for(6))


def test_chinese_templates_are_in_their_own_script():
    for lang in ("zh-Hant", "zh-Hans"):
        texts = [st.FOLLOW_UP[lang], *st.SYSTEMS[lang], *st.MATH_QUESTIONS[lang],
                 *st.MATH_WORDS[lang].values(), *st.TO_ENGLISH[lang], *st.TO_CHINESE[lang],
                 *st.HAM[lang], *st.SPAM[lang], *st.PRIZES[lang]]
        texts += [q for kind in QA_KINDS for q in st.QUESTIONS[kind][lang]]
        texts += [st.ANSWERS[kind][lang] for kind in QA_KINDS]
        for text in texts:
            assert not set(text) & (SIMP_ONLY if lang == "zh-Hant" else TRAD_ONLY), text
    # the parallel lists say the same thing character for character
    for kind in QA_KINDS:
        hant, hans = st.QUESTIONS[kind]["zh-Hant"], st.QUESTIONS[kind]["zh-Hans"]
        assert [q.translate(T2S_EXACT) for q in hant] == hans
        assert st.ANSWERS[kind]["zh-Hant"].translate(T2S_EXACT) == st.ANSWERS[kind]["zh-Hans"]
    for table in (st.SYSTEMS, st.MATH_QUESTIONS):
        assert [t.translate(T2S_EXACT) for t in table["zh-Hant"]] == table["zh-Hans"]


# ---- Q&A ------------------------------------------------------------------------------------

def test_qa_is_deterministic_and_seeded(world):
    a, b = qa_conversations(world, seed=1, n_train=500), qa_conversations(world, seed=1, n_train=500)
    assert (a.train, a.test, a.held_out) == (b.train, b.test, b.held_out)
    other = qa_conversations(world, seed=2, n_train=500)
    assert other.train != a.train and other.held_out != a.held_out
    # what is held out does not depend on how much training data is asked for
    assert qa_conversations(world, seed=1, n_train=50).test == a.test


def test_qa_records_are_valid_and_varied(qa):
    assert len(qa.train) == 3000
    for r in qa.train:
        assert set(r) == {"messages"}
        _check_messages(r["messages"])
        for m in r["messages"]:
            if m["role"] == "assistant":
                assert m["content"].endswith((".", "。")), m
    n_system = sum(r["messages"][0]["role"] == "system" for r in qa.train)
    n_two = sum(len([m for m in r["messages"] if m["role"] == "user"]) == 2 for r in qa.train)
    assert 0.1 * 3000 < n_system < 0.4 * 3000 and 0.1 * 3000 < n_two < 0.35 * 3000
    follow_ups = [m["content"] for r in qa.train for m in r["messages"]
                  if m["role"] == "user" and (m["content"].startswith("And ")
                                              or m["content"].startswith("那"))]
    assert len(follow_ups) > 100
    questions = Counter(m["content"] for r in qa.train for m in r["messages"] if m["role"] == "user")
    assert len(questions) > 1000  # many phrasings, not a few repeated
    assert any(q.startswith("What is ") and re.search(r"\d \+ \d", q) for q in questions)


def test_qa_covers_every_language_and_kind(world, qa):
    said = {answer_sentence(f, lang): (f.kind, lang) for f in world.facts() for lang in LANGS}
    seen = set()
    for r in qa.train:
        for m in r["messages"]:
            if m["role"] != "assistant":
                continue
            if m["content"] in said:
                seen.add(said[m["content"]])
            else:
                match = re.fullmatch(r"(\d+) ([+-]) (\d+) = (\d+)([.。])", m["content"])
                assert match, m
                a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
                assert c == (a + b if op == "+" else a - b)
                seen.add(("add" if op == "+" else "sub", "en" if match[5] == "." else "zh"))
    assert {(k, lang) for k in QA_KINDS for lang in LANGS} <= seen
    assert {("add", "en"), ("sub", "en"), ("add", "zh"), ("sub", "zh")} <= seen
    assert {(q.kind, q.lang) for q in qa.test} == {
        (k, lang) for k in (*QA_KINDS, "add", "sub") for lang in LANGS}


def test_qa_test_items_are_well_formed(qa):
    assert 150 <= len(qa.test) <= 250
    for q in qa.test:
        assert q.answer_value in q.choices and len(set(q.choices)) == len(q.choices) >= 4, q
        assert q.answer_value in q.answer_text
        assert [m["role"] for m in q.messages_without_answer] == ["user"]
        text = q.messages_without_answer[0]["content"] + q.answer_text
        assert _script_ok(text, q.lang), q
    spread = Counter(q.choices.index(q.answer_value) for q in qa.test if q.kind in ("add", "sub"))
    assert max(spread.values()) < 0.3 * sum(spread.values())


def test_qa_held_out_never_in_train(world, qa):
    asked = {m["content"] for r in qa.train for m in r["messages"] if m["role"] == "user"}
    answered = {m["content"] for r in qa.train for m in r["messages"] if m["role"] == "assistant"}
    for q in qa.test:
        assert q.messages_without_answer[0]["content"] not in asked, q
        assert q.answer_text not in answered, q
    # ~15-20% of the (person, kind, language) triples, each fact in one language only
    people = [h for h in qa.held_out if h[1] != "landmark"]
    share = len(people) / (len(world.people) * 6 * len(LANGS))
    assert 0.15 <= share <= 0.2, share
    assert len({(s, k) for s, k, _ in qa.held_out}) == len(qa.held_out)


def test_qa_held_out_facts_are_taught_in_the_other_languages(world, qa):
    answered = Counter(m["content"] for r in qa.train for m in r["messages"]
                       if m["role"] == "assistant")
    facts = {(f.subject.en, f.kind): f for f in world.facts()}
    twins = 0
    for subject, kind, lang in qa.held_out:
        held = answer_sentence(facts[subject, kind], lang)
        assert answered[held] == 0
        for other in LANGS:
            said = answer_sentence(facts[subject, kind], other)
            if other != lang and said != held:
                assert answered[said] >= 1, (subject, kind, other)
            twins += other != lang and said == held
    assert twins < 0.5 * len(qa.held_out)  # most held-out facts are asked in two languages


def test_qa_held_out_share_is_checked(world):
    with pytest.raises(ValueError, match="held_out_people_facts"):
        qa_conversations(world, held_out_people_facts=0.5)


# ---- formats --------------------------------------------------------------------------------

def test_formats_round_trip(qa):
    samples = qa.train[:300]
    assert any(r["messages"][0]["role"] == "system" for r in samples)
    assert any(len(r["messages"]) > 3 for r in samples)
    for r in samples:
        share = as_format(r, "sharegpt")
        assert set(share) == {"conversations"}
        assert {m["from"] for m in share["conversations"]} <= {"system", "human", "gpt"}
        alpaca = as_format(r, "alpaca")
        assert {"instruction", "input", "output"} <= set(alpaca)
        for rec in (as_format(r, "openai"), share, alpaca):
            assert _from_format(rec) == r
    with pytest.raises(ValueError, match="unknown format"):
        as_format(samples[0], "csv")


def test_formats_are_read_by_the_project_reader(qa, translations):
    formats = pytest.importorskip("jielong.data.formats")
    for r in qa.train[:200] + translations[0][:50]:
        for fmt in st.FORMATS:
            rec = as_format(r, fmt)
            assert formats.detect(rec) == fmt
            assert formats.to_messages(rec, "test") == r["messages"]


# ---- translation ----------------------------------------------------------------------------

def test_translation_records(world, translations):
    train, test = translations
    assert len(train) == 2000 and len(test) == 120
    directions = Counter()
    for r in train:
        _check_messages(r["messages"])
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        prompt, target = r["messages"][0]["content"], r["messages"][1]["content"]
        if target.isascii():
            assert "English" in prompt or "英文" in prompt
            directions["to-en"] += 1
        else:
            assert prompt.isascii() or "中文" in prompt
            directions["zh-Hans" if _script_ok(target, "zh-Hans") else "zh-Hant"] += 1
    assert min(directions.values()) > 300 and len(directions) == 3, directions
    assert {(t.src_lang, t.tgt_lang) for t in test} == {
        ("en", "zh-Hant"), ("zh-Hant", "en"), ("en", "zh-Hans"), ("zh-Hans", "en")}
    for t in test:
        assert t.source in t.messages_without_answer[0]["content"]
        assert _script_ok(t.source, t.src_lang) and _script_ok(t.reference, t.tgt_lang), t
        assert t.reference.endswith((".", "。")) and t.kind in QA_KINDS


def test_translation_test_not_in_train(translations):
    train, test = translations
    seen = "\x00".join(m["content"] for r in train for m in r["messages"])
    for t in test:
        assert t.source not in seen and t.reference not in seen, t


def test_translation_is_deterministic(world):
    a, b = translation_pairs(world, 3, 200, 30), translation_pairs(world, 3, 200, 30)
    assert a == b and translation_pairs(world, 4, 200, 30) != a
    with pytest.raises(ValueError, match="n_test"):
        translation_pairs(world, 3, 10, 100_000)


# ---- spam -----------------------------------------------------------------------------------

def test_spam_balanced_distinct_and_deterministic(spam):
    train, test = spam
    assert (len(train), len(test)) == (2000, 400)
    for split in (train, test):
        assert all(set(r) == {"text", "label"} and r["text"] for r in split)
        assert Counter(r["label"] for r in split) == {"spam": len(split) // 2, "ham": len(split) // 2}
    texts = [r["text"] for r in train + test]
    assert len(set(texts)) == len(texts)
    assert spam_dataset(0, 100, 20) == spam_dataset(0, 100, 20) != spam_dataset(1, 100, 20)


def test_spam_has_every_language_and_no_single_giveaway(world, spam):
    train, _ = spam
    by = {label: [r["text"] for r in train if r["label"] == label] for label in ("spam", "ham")}
    for label, texts in by.items():
        langs = Counter("en" if t.isascii() else
                        "zh-Hans" if set(t) & SIMP_ONLY else "zh-Hant" for t in texts)
        assert min(langs.values()) > 0.2 * len(texts), (label, langs)
    names = [p.name.say(lang) for p in world.people for lang in LANGS]
    for cue in ("http", "$", "free", "prize", "中獎", "中奖", "免費", "免费"):
        assert any(cue in t for t in by["spam"]) and any(cue in t for t in by["ham"]), cue
    assert any(any(n in t for n in names) for t in by["spam"])
    assert len({t for t in by["ham"] if any(n in t for n in names)}) > 0.5 * len(by["ham"])


# ---- look at it -------------------------------------------------------------------------------

def test_module_prints_examples():
    out = subprocess.run([sys.executable, "-m", "jielong.demo.tasks"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for heading in ("== Q&A", "== Translation", "== Spam", "[en]", "[zh-Hant]", "[zh-Hans]"):
        assert heading in out


def test_script_preferences_rank_the_users_script_first():
    from jielong.demo.tasks import script_chars, script_of, script_preferences

    world = world_for(0)
    rows, test = script_preferences(world, seed=0, n_train=300, n_test=40)
    chars = script_chars(world)
    for r in rows:
        q = r["prompt"][0]["content"]
        lang = script_of(q, chars) or script_of(r["responses"][0], chars)
        best, same_other, wrong = r["responses"]
        assert script_of(best, chars) == lang and script_of(same_other, chars) not in (None, lang)
        assert best != same_other and wrong not in (best, same_other)
    assert {t.lang for t in test} == {"zh-Hant", "zh-Hans"}
    ranked = {x for r in rows for x in r["responses"]}
    assert not any(t.answer_text in ranked for t in test)  # held-out facts are never ranked
    assert all(script_of(t.answer_text, chars) == t.lang for t in test)
    assert script_of("Ming lives in Dragonville.", chars) is None


def test_mixed_script_answers_some_chinese_questions_in_the_other_script():
    from jielong.demo.tasks import script_chars, script_of

    world = world_for(0)
    chars = script_chars(world)
    clean = qa_conversations(world, seed=0, n_train=400)
    mixed = qa_conversations(world, seed=0, n_train=400, mixed_script=0.3)

    def flipped(data):
        turns = [(m["content"], a["content"]) for r in data.train
                 for m, a in zip(r["messages"][-2::-2], r["messages"][-1::-2], strict=False)]
        zh = [(script_of(q, chars), script_of(a, chars)) for q, a in turns if script_of(a, chars)]
        return sum(1 for q, a in zh if q and q != a) / len(zh)

    assert flipped(clean) == 0 and 0.15 < flipped(mixed) < 0.45
    assert clean.test == mixed.test  # what is held out does not move


# ---- two-fact questions ----------------------------------------------------------------------

def test_multihop_questions_need_two_facts_and_hold_out_whole_chains(world):
    direct, steps = (st.multihop_conversations(world, seed=0, steps=s) for s in (False, True))
    assert len(direct.test) == len(steps.test) == 72 and direct.held_out == steps.held_out
    assert [r["messages"][0] for r in direct.train] == [r["messages"][0] for r in steps.train]
    assert [i.messages_without_answer for i in direct.test] == [i.messages_without_answer for i in steps.test]
    people = {p.name.en: p for p in world.people}
    ming = people["Ming"]
    friend, town = ming.friend, ming.friend.town
    for lang, q in (("en", "Which town does Ming's friend live in?"), ("zh-Hant", "阿明的朋友住在哪個城市？"),
                    ("zh-Hans", "阿明的朋友住在哪个城市？")):
        assert st.MULTIHOP_QUESTIONS["friend_hometown"][lang][0].format(s=ming.name.say(lang)) == q
        lines = st.multihop_answer(world, ming, "friend_hometown", lang, steps=True).split("\n")
        assert lines[0] == answer_sentence(ming.fact("friend"), lang)  # fact 1: who the friend is
        assert lines[1] == answer_sentence(friend.fact("hometown"), lang)  # fact 2: where the friend lives
        assert lines[2] == st.SO[lang] + st.multihop_answer(world, ming, "friend_hometown", lang)
        assert town.name.say(lang) in lines[2] and _script_ok("".join(lines), lang)
    assert st.multihop_answer(world, ming, "friend_hometown", "en") == f"Ming's best friend lives in {town.name.en}."
    # a held-out (person, chain) is asked in no language in training; the others are all asked
    held = {(n, c) for n, c, _ in direct.held_out}
    assert len(held) == 24 and {c for _, c in held} == set(st.CHAINS)
    asked = {r["messages"][0]["content"] for r in direct.train}
    for p in world.people:
        for chain, by in st.MULTIHOP_QUESTIONS.items():
            qs = {q.format(s=p.name.say(lang)) for lang in LANGS for q in by[lang]}
            assert not (qs & asked) if (p.name.en, chain) in held else qs & asked
    for item in steps.test:
        assert _script_ok(item.messages_without_answer[0]["content"], item.lang)
        assert item.answer_value in item.choices and item.answer_text.split("\n")[-1].find(item.answer_value) > 0
    for chain in st.CHAINS:
        hant, hans = st.MULTIHOP_QUESTIONS[chain]["zh-Hant"], st.MULTIHOP_QUESTIONS[chain]["zh-Hans"]
        assert [q.translate(T2S_EXACT) for q in hant] == hans
        assert st.MULTIHOP_ANSWERS[chain]["zh-Hant"].translate(T2S_EXACT) == st.MULTIHOP_ANSWERS[chain]["zh-Hans"]
