"""Finetuning data for the demo, rendered from the same fictional `World` as its pretraining
corpus (`jielong.demo.world`), in English, Traditional and Simplified Chinese.

- `qa_conversations`  question-answering chats (OpenAI "messages" records) for SFT, and a
                      held-out test of `QAItem`s (reference sentence, value, candidate values)
- `multihop_conversations` two-hop questions ("Which town does Ming's friend live in?",
                      阿明的朋友住在哪個城市？) answered directly or step by step (fact 1,
                      fact 2, the answer), and a held-out test of `QAItem`s
- `translation_pairs` "Translate to English: 阿明的寵物是貓。" chats for a translation LoRA,
                      and held-out `TranslationItem`s with their reference translation
- `spam_dataset`      {"text", "label"} records, "spam" or "ham", for a small classifier
- `as_format`         one messages record as ShareGPT or alpaca (for format-reader tests)

`world_for(seed)` is the world `build_corpus(seed)` tells about, so the pretrained model
already knows the facts these chats ask about. Everything is deterministic for a seed and
takes milliseconds.

Held out, on purpose:
- Q&A: for every fact kind, ~18% of the (fact, language) pairs are never asked (in any
  phrasing, nor as a follow-up, nor answered) in training; each such fact is held out in one
  language only, so it is still asked and answered in the other two (in English alone when
  its two Chinese answers are the same string, e.g. "小珊住在柳岸。"). The test therefore asks
  the assistant, in a new language, what it was taught to answer in the others (and what
  pretraining told it). Likewise ~15% of the sums never appear in training.
- Translation: ~15% of the facts are never translated in training, in any direction.
- Spam: test texts never occur in train (same templates, other names, numbers and links).

Look at it:  python -m jielong.demo.tasks
"""

from __future__ import annotations

import random
import string
import time
from collections import Counter
from dataclasses import dataclass

from jielong.demo.world import (
    ANIMALS,
    HOBBIES,
    LANDMARKS,
    LANGS,
    PERSON_KINDS,
    TEMPLATES,
    TOWNS,
    Fact,
    Person,
    World,
    make_world,
    render,
)

ZH = ("zh-Hant", "zh-Hans")
QA_KINDS = (*PERSON_KINDS, "landmark")
FORMATS = ("openai", "sharegpt", "alpaca")

QA_HELD_OUT = 0.18    # share of (fact, language) pairs per kind never asked in training
QA_MATH_HELD_OUT = 0.15
QA_MATH_SHARE = 0.15  # of question turns in training
QA_SYSTEM_SHARE = 0.25
QA_TWO_TURN_SHARE = 0.2
MATH_MAX = 20         # operands 0..MATH_MAX, as in pretraining
MATH_CHOICES = 10
TRANSLATION_HELD_OUT = 0.15  # share of facts per kind never translated in training


def world_for(seed: int = 0) -> World:
    """The world of `build_corpus(seed)` (it is the first thing drawn from that seed)."""
    return make_world(random.Random(seed))


# ---- Q&A templates: {s} the subject; answers also {v}, the value ---------------------------

QUESTIONS: dict[str, dict[str, list[str]]] = {
    "pet": {
        "en": ["What pet does {s} have?", "What is {s}'s pet?", "Which animal does {s} keep?",
               "Does {s} have a pet? What is it?"],
        "zh-Hant": ["{s}的寵物是什麼？", "{s}養了什麼動物？", "{s}家裡養什麼寵物？"],
        "zh-Hans": ["{s}的宠物是什么？", "{s}养了什么动物？", "{s}家里养什么宠物？"],
    },
    "job": {
        "en": ["What is {s}'s job?", "What does {s} do for a living?", "What work does {s} do?",
               "Tell me what job {s} has."],
        "zh-Hant": ["{s}的工作是什麼？", "{s}做什麼工作？", "{s}的職業是什麼？"],
        "zh-Hans": ["{s}的工作是什么？", "{s}做什么工作？", "{s}的职业是什么？"],
    },
    "colour": {
        "en": ["What is {s}'s favourite colour?", "Which colour does {s} like best?",
               "What colour does {s} love most?"],
        "zh-Hant": ["{s}最喜歡什麼顏色？", "{s}最喜歡的顏色是什麼？", "{s}最愛哪個顏色？"],
        "zh-Hans": ["{s}最喜欢什么颜色？", "{s}最喜欢的颜色是什么？", "{s}最爱哪个颜色？"],
    },
    "hobby": {
        "en": ["What is {s}'s hobby?", "What does {s} like to do in free time?",
               "What does {s} enjoy doing?"],
        "zh-Hant": ["{s}的愛好是什麼？", "{s}空閒時喜歡做什麼？", "{s}有什麼愛好？"],
        "zh-Hans": ["{s}的爱好是什么？", "{s}空闲时喜欢做什么？", "{s}有什么爱好？"],
    },
    "friend": {
        "en": ["Who is {s}'s best friend?", "Who is the best friend of {s}?",
               "Which friend does {s} trust most?"],
        "zh-Hant": ["{s}最好的朋友是誰？", "誰是{s}最好的朋友？", "{s}最信任的朋友是誰？"],
        "zh-Hans": ["{s}最好的朋友是谁？", "谁是{s}最好的朋友？", "{s}最信任的朋友是谁？"],
    },
    "hometown": {
        "en": ["Where does {s} live?", "Which town is {s} from?", "What is {s}'s home town?"],
        "zh-Hant": ["{s}住在哪裡？", "{s}的家鄉是哪裡？", "{s}住在哪個鎮？"],
        "zh-Hans": ["{s}住在哪里？", "{s}的家乡是哪里？", "{s}住在哪个镇？"],
    },
    "landmark": {
        "en": ["What is {s} near?", "Which river or mountain is near {s}?",
               "What can you see from {s}?"],
        "zh-Hant": ["{s}靠近哪裡？", "{s}附近有什麼？", "從{s}可以看到什麼？"],
        "zh-Hans": ["{s}靠近哪里？", "{s}附近有什么？", "从{s}可以看到什么？"],
    },
}
ANSWERS: dict[str, dict[str, str]] = {  # one canonical sentence per (fact, language)
    "pet": {"en": "{s}'s pet is a {v}.", "zh-Hant": "{s}的寵物是{v}。", "zh-Hans": "{s}的宠物是{v}。"},
    "job": {"en": "{s} works as a {v}.", "zh-Hant": "{s}的工作是{v}。", "zh-Hans": "{s}的工作是{v}。"},
    "colour": {"en": "{s}'s favourite colour is {v}.", "zh-Hant": "{s}最喜歡的顏色是{v}。",
               "zh-Hans": "{s}最喜欢的颜色是{v}。"},
    "hobby": {"en": "{s}'s hobby is {v}.", "zh-Hant": "{s}的愛好是{v}。", "zh-Hans": "{s}的爱好是{v}。"},
    "friend": {"en": "{s}'s best friend is {v}.", "zh-Hant": "{s}最好的朋友是{v}。",
               "zh-Hans": "{s}最好的朋友是{v}。"},
    "hometown": {"en": "{s} lives in {v}.", "zh-Hant": "{s}住在{v}。", "zh-Hans": "{s}住在{v}。"},
    "landmark": {"en": "{s} lies near {v}.", "zh-Hant": "{s}靠近{v}。", "zh-Hans": "{s}靠近{v}。"},
}
FOLLOW_UP = {"en": "And {s}?", "zh-Hant": "那{s}呢？", "zh-Hans": "那{s}呢？"}  # same kind, new subject
SYSTEMS = {
    "en": ["You are a helpful assistant of the valley.",
           "You are a friendly assistant who knows everyone in the eight towns."],
    "zh-Hant": ["你是龍鄉的小助手。", "你是一個友善的助手，認識八個小鎮裡的每一個人。"],
    "zh-Hans": ["你是龙乡的小助手。", "你是一个友善的助手，认识八个小镇里的每一个人。"],
}
# {a} {o} {b}: operands and the sign; {w}: the operation as a word
MATH_QUESTIONS = {
    "en": ["What is {a} {o} {b}?", "What is {a} {w} {b}?", "Compute {a} {o} {b}.", "{a} {o} {b} = ?"],
    "zh-Hant": ["{a} {o} {b} 等於多少？", "{a}{w}{b}是多少？", "請算一下 {a} {o} {b}。"],
    "zh-Hans": ["{a} {o} {b} 等于多少？", "{a}{w}{b}是多少？", "请算一下 {a} {o} {b}。"],
}
MATH_WORDS = {"en": {"+": "plus", "-": "minus"}, "zh-Hant": {"+": "加", "-": "減"},
              "zh-Hans": {"+": "加", "-": "减"}}


@dataclass
class QAItem:
    messages_without_answer: list[dict]  # [{"role": "user", "content": question}]
    answer_text: str   # the reference reply, e.g. "Ming's pet is a cat." / "7 + 5 = 12."
    answer_value: str  # just the value, e.g. "cat", "貓", "12"
    choices: list[str] # every candidate value of this kind, answer_value included
    lang: str          # "en" | "zh-Hant" | "zh-Hans"
    kind: str          # a QA_KINDS entry, or "add" | "sub"
    alt_value: str = ""  # Chinese: the value in the other script (an answer all the same)


@dataclass
class QAData:
    train: list[dict]    # {"messages": [...]} records
    test: list[QAItem]
    held_out: list[tuple[str, str, str]]  # (subject in English, kind, lang) never asked in train


def answer_sentence(fact: Fact, lang: str) -> str:
    return ANSWERS[fact.kind][lang].format(s=fact.subject.say(lang), v=fact.value.say(lang))


def _question(fact: Fact, lang: str, phrasing: int) -> str:
    forms = QUESTIONS[fact.kind][lang]
    return forms[phrasing % len(forms)].format(s=fact.subject.say(lang))


def _math_turn(a: int, b: int, op: str, lang: str, phrasing: int) -> tuple[str, str]:
    forms = MATH_QUESTIONS[lang]
    q = forms[phrasing % len(forms)].format(a=a, o=op, b=b, w=MATH_WORDS[lang][op])
    c = a + b if op == "+" else a - b
    return q, f"{a} {op} {b} = {c}" + ("." if lang == "en" else "。")


def _math_choices(rng: random.Random, c: int, op: str) -> list[str]:
    """MATH_CHOICES consecutive numbers around c, shifted at random so position says nothing."""
    top = 2 * MATH_MAX if op == "+" else MATH_MAX
    lo = min(max(0, c - rng.randrange(MATH_CHOICES)), top + 1 - MATH_CHOICES)
    return [str(n) for n in range(lo, lo + MATH_CHOICES)]


def _math_pairs() -> list[tuple[int, int, str]]:
    pairs = [(a, b, "+") for a in range(MATH_MAX + 1) for b in range(MATH_MAX + 1)]
    return pairs + [(a, b, "-") for a in range(MATH_MAX + 1) for b in range(a + 1)]


def _held_out_pairs(rng: random.Random, world: World, share: float) -> list[tuple[Fact, str]]:
    """Per kind, round(share · facts) facts held out in each language, each fact in at most one
    language (so it stays askable in the other two), in world order."""
    if not 0 <= share <= 1 / 3:
        raise ValueError(f"held_out_people_facts must be within [0, 1/3], got {share}")
    held: list[tuple[Fact, str]] = []
    for kind in QA_KINDS:
        facts = [f for f in world.facts() if f.kind == kind]
        n = round(share * len(facts))
        order = rng.sample(facts, len(facts))
        for i, lang in enumerate(LANGS):
            held += [(f, lang) for f in order[i * n:(i + 1) * n]]
    return held


def _cycle(rng: random.Random, items: list):
    """Endless picks: every item once per shuffled round, so coverage is even."""
    while True:
        yield from rng.sample(items, len(items))


def other_script(lang: str) -> str:
    return {"zh-Hant": "zh-Hans", "zh-Hans": "zh-Hant"}.get(lang, lang)


def qa_conversations(world: World, seed: int = 0, n_train: int = 3000,
                     held_out_people_facts: float = QA_HELD_OUT,
                     math_held_out: float = QA_MATH_HELD_OUT, mixed_script: float = 0.0) -> QAData:
    """Question-answering chats about `world` (and small sums), with a held-out test.

    Train records are {"messages": [...]}: an optional system message, then one or two
    user/assistant turns in one language; a second turn is either another question or a
    follow-up like "And Mei?" (the same kind of fact, another person or town). What is held
    out depends on (world, seed) only, not on n_train. `mixed_script`: the share of Chinese
    fact answers written in the other script, as in data gathered from mixed sources.
    """
    rng_held = random.Random(f"qa-held-out:{seed}")
    held = _held_out_pairs(rng_held, world, held_out_people_facts)
    held_set = set(held)
    pairs = rng_held.sample(_math_pairs(), len(_math_pairs()))
    n_math_held = round(math_held_out * len(pairs))
    math_held, math_train = pairs[:n_math_held], pairs[n_math_held:]

    # A name, town or landmark written alike in both scripts can make the zh-Hant and
    # zh-Hans answers one string ("小珊住在柳岸。"): such a twin is held out as well.
    held_answers = {answer_sentence(f, lang) for f, lang in held}
    allowed = [(f, lang) for f in world.facts() for lang in LANGS
               if (f, lang) not in held_set and answer_sentence(f, lang) not in held_answers]
    by_lang_kind: dict[tuple[str, str], list[Fact]] = {}
    for f, lang in allowed:
        by_lang_kind.setdefault((lang, f.kind), []).append(f)

    rng = random.Random(f"qa-train:{seed}")
    deck = _cycle(rng, allowed)

    def fact_turn(f: Fact, lang: str) -> tuple[str, str]:
        q = _question(f, lang, rng.randrange(8))
        if mixed_script and lang in ZH and rng.random() < mixed_script:
            return q, answer_sentence(f, other_script(lang))
        return q, answer_sentence(f, lang)

    def math_turn(lang: str) -> tuple[str, str]:
        return _math_turn(*rng.choice(math_train), lang, rng.randrange(8))

    train = []
    for _ in range(n_train):
        if rng.random() < QA_MATH_SHARE:
            lang, fact = rng.choice(LANGS), None
            turns = [math_turn(lang)]
        else:
            fact, lang = next(deck)
            turns = [fact_turn(fact, lang)]
        if rng.random() < QA_TWO_TURN_SHARE:
            if fact is not None and rng.random() < 0.5:  # "And Mei?": same kind, other subject
                others = [f for f in by_lang_kind[lang, fact.kind] if f.subject != fact.subject]
                nxt = rng.choice(others)
                turns.append((FOLLOW_UP[lang].format(s=nxt.subject.say(lang)),
                              answer_sentence(nxt, lang)))
            elif rng.random() < QA_MATH_SHARE:
                turns.append(math_turn(lang))
            else:
                kind = rng.choice(QA_KINDS)
                turns.append(fact_turn(rng.choice(by_lang_kind[lang, kind]), lang))
        messages = []
        if rng.random() < QA_SYSTEM_SHARE:
            messages.append({"role": "system", "content": rng.choice(SYSTEMS[lang])})
        for q, a in turns:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        train.append({"messages": messages})

    test = []
    for i, (f, lang) in enumerate(held):
        test.append(QAItem([{"role": "user", "content": _question(f, lang, i)}],
                           answer_sentence(f, lang), f.value.say(lang),
                           [v.say(lang) for v in world.values(f.kind)], lang, f.kind,
                           f.value.say(other_script(lang)) if lang in ZH else ""))
    for i, (a, b, op) in enumerate(math_held):
        lang = LANGS[i % len(LANGS)]
        q, answer = _math_turn(a, b, op, lang, i // len(LANGS))
        c = a + b if op == "+" else a - b
        test.append(QAItem([{"role": "user", "content": q}], answer, str(c),
                           _math_choices(rng_held, c, op), lang, "add" if op == "+" else "sub"))
    return QAData(train, test, [(f.subject.en, f.kind, lang) for f, lang in held])


# ---- multi-hop questions: two facts make one answer ------------------------------------------

# "Which town does Ming's friend live in?" needs Ming's best friend (fact 1) and where that
# friend lives (fact 2). Each chain: (first hop kind, second hop kind); the second hop is a
# fact of the first hop's value (a person, or a town).
CHAINS: dict[str, tuple[str, str]] = {
    "friend_hometown": ("friend", "hometown"), "friend_pet": ("friend", "pet"),
    "friend_job": ("friend", "job"), "hometown_landmark": ("hometown", "landmark"),
}
MULTIHOP_QUESTIONS: dict[str, dict[str, list[str]]] = {
    "friend_hometown": {
        "en": ["Which town does {s}'s friend live in?", "Where does {s}'s best friend live?"],
        "zh-Hant": ["{s}的朋友住在哪個城市？", "{s}最好的朋友住在哪裡？"],
        "zh-Hans": ["{s}的朋友住在哪个城市？", "{s}最好的朋友住在哪里？"],
    },
    "friend_pet": {
        "en": ["What pet does {s}'s best friend have?", "Which animal does {s}'s friend keep?"],
        "zh-Hant": ["{s}最好的朋友養了什麼寵物？", "{s}的朋友家裡養什麼動物？"],
        "zh-Hans": ["{s}最好的朋友养了什么宠物？", "{s}的朋友家里养什么动物？"],
    },
    "friend_job": {
        "en": ["What is the job of {s}'s best friend?", "What work does {s}'s friend do?"],
        "zh-Hant": ["{s}最好的朋友做什麼工作？", "{s}的朋友的職業是什麼？"],
        "zh-Hans": ["{s}最好的朋友做什么工作？", "{s}的朋友的职业是什么？"],
    },
    "hometown_landmark": {
        "en": ["What is near the town where {s} lives?", "Which river or mountain is near {s}'s home town?"],
        "zh-Hant": ["{s}住的鎮附近有什麼？", "{s}的家鄉靠近哪裡？"],
        "zh-Hans": ["{s}住的镇附近有什么？", "{s}的家乡靠近哪里？"],
    },
}
MULTIHOP_ANSWERS: dict[str, dict[str, str]] = {  # the conclusion, one sentence
    "friend_hometown": {"en": "{s}'s best friend lives in {v}.", "zh-Hant": "{s}最好的朋友住在{v}。",
                        "zh-Hans": "{s}最好的朋友住在{v}。"},
    "friend_pet": {"en": "{s}'s best friend has a pet {v}.", "zh-Hant": "{s}最好的朋友養了{v}。",
                   "zh-Hans": "{s}最好的朋友养了{v}。"},
    "friend_job": {"en": "{s}'s best friend works as a {v}.", "zh-Hant": "{s}最好的朋友的工作是{v}。",
                   "zh-Hans": "{s}最好的朋友的工作是{v}。"},
    "hometown_landmark": {"en": "The town where {s} lives is near {v}.", "zh-Hant": "{s}住的鎮靠近{v}。",
                          "zh-Hans": "{s}住的镇靠近{v}。"},
}
SO = {"en": "So ", "zh-Hant": "所以", "zh-Hans": "所以"}
MULTIHOP_HELD_OUT = 0.25  # share of (person, chain) pairs never asked in training, in any language


def multihop_facts(world: World, person: Person, chain: str) -> tuple[Fact, Fact]:
    """The two facts a chain needs: (person's first hop, the first hop's value's second hop)."""
    first, second = CHAINS[chain]
    f1 = person.fact(first)
    if first == "friend":
        f2 = person.friend.fact(second)
    else:  # hometown → the town's landmark
        f2 = Fact(second, person.town.name, person.town.landmark)
    return f1, f2


def multihop_answer(world: World, person: Person, chain: str, lang: str, steps: bool = False) -> str:
    """The reply to a chain's question: the conclusion alone, or (steps) fact 1, fact 2 and
    "So …" the conclusion, one line each, the answer on the last line."""
    f1, f2 = multihop_facts(world, person, chain)
    end = MULTIHOP_ANSWERS[chain][lang].format(s=person.name.say(lang), v=f2.value.say(lang))
    if not steps:
        return end
    return "\n".join([answer_sentence(f1, lang), answer_sentence(f2, lang), SO[lang] + end])


def multihop_conversations(world: World, seed: int = 0, n_train: int = 1500,
                           held_out: float = MULTIHOP_HELD_OUT, steps: bool = False) -> QAData:
    """Two-hop questions about `world`: chats for SFT and a held-out test of `QAItem`s.

    round(held_out · people) people per chain are never asked that chain in training, in any
    language (their test asks it in all three): the model must join two facts it knows (from
    pretraining and the one-hop chats), not recall a joined answer. `steps` changes only the
    replies (fact 1, fact 2, then the conclusion, against the conclusion alone): the questions
    asked, the held-out set and the order are the same for both (the test's answer_text is
    the reply of `steps`' kind).
    """
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be within (0, 1), got {held_out}")
    rng_held = random.Random(f"multihop-held-out:{seed}")
    n = round(held_out * len(world.people))
    held = {(p.name.en, chain) for chain in CHAINS for p in rng_held.sample(world.people, n)}
    pairs = [(p, chain) for chain in CHAINS for p in world.people]
    train_pairs = [(p, c) for p, c in pairs if (p.name.en, c) not in held]
    rng = random.Random(f"multihop-train:{seed}")
    deck = _cycle(rng, [(p, c, lang) for p, c in train_pairs for lang in LANGS])
    train = []
    for _ in range(n_train):
        p, chain, lang = next(deck)
        forms = MULTIHOP_QUESTIONS[chain][lang]
        q = forms[rng.randrange(len(forms))].format(s=p.name.say(lang))
        train.append({"messages": [{"role": "user", "content": q},
                                   {"role": "assistant", "content": multihop_answer(world, p, chain, lang, steps)}]})
    test, held_list = [], []
    for i, (p, chain) in enumerate((p, c) for p, c in pairs if (p.name.en, c) in held):
        _, f2 = multihop_facts(world, p, chain)
        for lang in LANGS:
            forms = MULTIHOP_QUESTIONS[chain][lang]
            q = forms[i % len(forms)].format(s=p.name.say(lang))
            test.append(QAItem([{"role": "user", "content": q}], multihop_answer(world, p, chain, lang, steps),
                               f2.value.say(lang), [v.say(lang) for v in world.values(f2.kind)], lang, chain,
                               f2.value.say(other_script(lang)) if lang in ZH else ""))
            held_list.append((p.name.en, chain, lang))
    return QAData(train, test, held_list)


# ---- a preference: reply in the user's own script ----------------------------------------

def script_chars(world: World) -> dict[str, set[str]]:
    """Per Chinese script, the characters of the world's questions and answers that the other
    script writes differently (龍 vs 龙): enough to tell which script a reply is in."""
    seen = {lang: set() for lang in ZH}
    for lang in ZH:
        for f in world.facts():
            seen[lang] |= set(answer_sentence(f, lang)) | set(_question(f, lang, 0))
    return {lang: seen[lang] - seen[other_script(lang)] for lang in ZH}


def script_of(text: str, chars: dict[str, set[str]]) -> str | None:
    """"zh-Hant" or "zh-Hans" by which script's own characters the text holds more of;
    None when it holds neither's (or as many of each)."""
    hant, hans = (sum(c in chars[lang] for c in text) for lang in ZH)
    return None if hant == hans else ("zh-Hant" if hant > hans else "zh-Hans")


def script_preferences(world: World, seed: int = 0, n_train: int = 1200, n_test: int = 120,
                       ) -> tuple[list[dict], list[QAItem]]:
    """Rankings that prefer a reply in the script the user wrote in.

    Train rows: {"prompt": [user question], "responses": [the answer in the user's script,
    the same answer in the other script, the answer broken off halfway]} (best first),
    for Chinese questions whose answer differs between the scripts. Test: n_test questions
    (both scripts) about facts no train row asks about in either script.
    """
    rng = random.Random(f"script-pref:{seed}")
    facts = [f for f in world.facts() if answer_sentence(f, "zh-Hant") != answer_sentence(f, "zh-Hans")]
    rng.shuffle(facts)
    held = facts[:(n_test + 1) // 2]  # whole facts: a test question's fact is never ranked in either script
    test_pairs = [(f, lang) for f in held for lang in ZH][:n_test]
    train_pairs = [(f, lang) for f in facts[len(held):] for lang in ZH]
    if not train_pairs:
        raise ValueError(f"n_test={n_test} leaves no (fact, script) pair to train on")
    deck = _cycle(rng, train_pairs)
    rows = []
    for _ in range(n_train):
        f, lang = next(deck)
        other = other_script(lang)
        best = answer_sentence(f, lang)
        rows.append({"prompt": [{"role": "user", "content": _question(f, lang, rng.randrange(8))}],
                     "responses": [best, answer_sentence(f, other), best[:len(best) // 2]]})
    test = [QAItem([{"role": "user", "content": _question(f, lang, i)}], answer_sentence(f, lang),
                   f.value.say(lang), [v.say(lang) for v in world.values(f.kind)], lang, f.kind,
                   f.value.say(other_script(lang)))
            for i, (f, lang) in enumerate(test_pairs)]
    return rows, test


# ---- other record formats ------------------------------------------------------------------

SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


def as_format(record: dict, fmt: str) -> dict:
    """A {"messages": [...]} record as "openai" (unchanged), "sharegpt" or "alpaca".

    ShareGPT: {"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}.
    Alpaca: {"instruction": last question, "input": "", "output": last reply}, plus
    "system" and "history" ([[question, reply], ...] earlier turns) when there are any.
    """
    messages = record["messages"]
    if fmt == "openai":
        return {"messages": [dict(m) for m in messages]}
    if fmt == "sharegpt":
        return {"conversations": [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]}
                                  for m in messages]}
    if fmt != "alpaca":
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    system = [m["content"] for m in messages if m["role"] == "system"]
    body = [m["content"] for m in messages if m["role"] != "system"]
    if len(body) < 2 or len(body) % 2:
        raise ValueError("alpaca needs user/assistant pairs ending with an assistant reply")
    out = {"instruction": body[-2], "input": "", "output": body[-1]}
    if system:
        out["system"] = system[0]
    if len(body) > 2:
        out["history"] = [[body[i], body[i + 1]] for i in range(0, len(body) - 2, 2)]
    return out


# ---- translation ----------------------------------------------------------------------------

# Which English template (index into TEMPLATES[kind]["en"]) says the same as which Chinese one
# (the zh-Hant and zh-Hans lists are parallel). One to one, so every source has one reference;
# a template with no close partner (hobby's "The hobby of {s} is {v}." / "{s}週末常常{v}。")
# is left out.
ALIGNED: dict[str, list[tuple[int, int]]] = {
    "hometown": [(0, 0), (1, 2), (2, 1), (3, 3)],
    "pet": [(0, 0), (1, 1), (2, 2), (3, 3)],
    "job": [(0, 0), (1, 1), (2, 2), (3, 3)],
    "colour": [(0, 0), (1, 1), (2, 2), (3, 3)],
    "hobby": [(0, 0), (1, 1), (3, 3)],
    "friend": [(0, 0), (1, 2), (2, 1), (3, 3)],
    "landmark": [(0, 0), (1, 1), (2, 2), (3, 3)],
}
TO_ENGLISH = {  # the instruction is in English or in the source's script
    "en": ["Translate to English: {x}", "Translate this sentence into English: {x}"],
    "zh-Hant": ["翻譯成英文：{x}", "請把這句話翻譯成英文：{x}"],
    "zh-Hans": ["翻译成英文：{x}", "请把这句话翻译成英文：{x}"],
}
TO_CHINESE = {  # a Chinese instruction's own script says which script to answer in
    "zh-Hant": ["Translate to Traditional Chinese: {x}", "Translate this into Chinese (Traditional): {x}",
                "翻譯成中文：{x}", "請翻譯成繁體中文：{x}"],
    "zh-Hans": ["Translate to Simplified Chinese: {x}", "Translate this into Chinese (Simplified): {x}",
                "翻译成中文：{x}", "请翻译成简体中文：{x}"],
}


@dataclass
class TranslationItem:
    messages_without_answer: list[dict]  # [{"role": "user", "content": instruction + source}]
    reference: str   # the expected translation
    source: str      # the sentence to translate
    src_lang: str
    tgt_lang: str
    kind: str        # the fact's kind


def _translations(world: World, facts: list[Fact]) -> list[tuple[str, str, str, str, str]]:
    """(source, src_lang, target, tgt_lang, kind) for every aligned rendering, both ways."""
    out = []
    for f in facts:
        for i, j in ALIGNED[f.kind]:
            en = render(f, "en", TEMPLATES[f.kind]["en"][i])
            for zh in ZH:
                other = render(f, zh, TEMPLATES[f.kind][zh][j])
                out += [(en, "en", other, zh, f.kind), (other, zh, en, "en", f.kind)]
    return out


def _instruction(rng: random.Random, src: str, src_lang: str, tgt_lang: str) -> str:
    forms = TO_ENGLISH["en"] + TO_ENGLISH[src_lang] if tgt_lang == "en" else TO_CHINESE[tgt_lang]
    return rng.choice(forms).format(x=src)


def translation_pairs(world: World, seed: int = 0, n_train: int = 2000, n_test: int = 120,
                      held_out: float = TRANSLATION_HELD_OUT,
                      ) -> tuple[list[dict], list[TranslationItem]]:
    """Chats that translate a sentence about `world` between English and either Chinese.

    en ↔ zh-Hant and en ↔ zh-Hans, from the pretraining templates of the same fact. Train:
    {"messages": [user instruction + sentence, assistant translation]}. Test: n_test items
    drawn from the held-out facts (round(held_out · facts) per kind), none of whose sentences
    is in train.
    """
    rng = random.Random(f"translation:{seed}")
    held: list[Fact] = []
    for kind in QA_KINDS:
        facts = [f for f in world.facts() if f.kind == kind]
        held += rng.sample(facts, round(held_out * len(facts)))
    held_set = set(held)
    train_pool = _translations(world, [f for f in world.facts() if f not in held_set])
    test_pool = _translations(world, held)
    if n_test > len(test_pool):
        raise ValueError(f"n_test={n_test} but the held-out facts give only {len(test_pool)} "
                         "test sentences; raise held_out or lower n_test")

    deck = _cycle(rng, train_pool)
    train = []
    for _ in range(n_train):
        src, src_lang, tgt, tgt_lang, _kind = next(deck)
        train.append({"messages": [
            {"role": "user", "content": _instruction(rng, src, src_lang, tgt_lang)},
            {"role": "assistant", "content": tgt}]})
    test = [TranslationItem([{"role": "user", "content": _instruction(rng, src, sl, tl)}],
                            tgt, src, sl, tl, kind)
            for src, sl, tgt, tl, kind in rng.sample(test_pool, n_test)]
    return train, test


# ---- spam ---------------------------------------------------------------------------------

# Fields: {a} {b} people, {town}, {landmark}, {pet}, {hobby}, {h} an hour, {n} a small count,
# {small} a little money, {big} a prize, {m} a day's pay, {pct} percent off, {zhe} 折 (tenths
# of the price), {prize}, {url} a scam link, {hurl} a friend's link, {phone}, {wid} a chat id.
# Money, links, phone numbers, "free" and "prize" turn up in both classes on purpose.
HAM = {
    "en": ["{a}, shall we take a walk by the river tomorrow?",
           "{a}, do you want to visit {landmark} this weekend?",
           "Hi {a}, my {pet} is sick. Can you come over at {h} o'clock?",
           "{a}, don't forget our {hobby} on Saturday!",
           "Thanks for the bread, {a}! See you in {town}.",
           "I'll wait for you at the {town} market at {h}:30, bring {n} apples.",
           "{a}, can you lend me ${small} until Friday?",
           "{a}, I got a message saying I won a prize. Is that a scam?",
           "The school fair in {town} has free tea at {h} o'clock, come along!",
           "{a}, here are the photos from {town}: {hurl}",
           "Happy birthday, {a}! {b} and I made you a cake.",
           "{a}, did you call me? I missed it, call me back at {phone}."],
    "zh-Hant": ["{a}，明天一起去河邊散步嗎？",
                "{a}，週末要不要去{landmark}走走？",
                "{a}，我的{pet}生病了，你{h}點能過來看看嗎？",
                "{a}，別忘了星期六一起{hobby}！",
                "謝謝你的麵包，{a}！{town}見。",
                "我{h}點半在{town}市場等你，記得帶{n}個蘋果。",
                "{a}，可以先借我{small}元嗎？星期五還你。",
                "{a}，有人傳簡訊說我中獎了，是不是詐騙？",
                "{town}學校園遊會{h}點有免費的茶，一起來吧！",
                "{a}，{town}的照片在這裡：{hurl}",
                "{a}，生日快樂！我和{b}給你做了蛋糕。",
                "{a}，你剛才打給我嗎？我沒接到，請回撥{phone}。"],
    "zh-Hans": ["{a}，明天一起去河边散步吗？",
                "{a}，周末要不要去{landmark}走走？",
                "{a}，我的{pet}生病了，你{h}点能过来看看吗？",
                "{a}，别忘了星期六一起{hobby}！",
                "谢谢你的面包，{a}！{town}见。",
                "我{h}点半在{town}市场等你，记得带{n}个苹果。",
                "{a}，可以先借我{small}元吗？星期五还你。",
                "{a}，有人发短信说我中奖了，是不是诈骗？",
                "{town}学校园游会{h}点有免费的茶，一起来吧！",
                "{a}，{town}的照片在这里：{hurl}",
                "{a}，生日快乐！我和{b}给你做了蛋糕。",
                "{a}，你刚才打给我吗？我没接到，请回拨{phone}。"],
}
SPAM = {
    "en": ["FREE prize!!! Click now: {url}",
           "Congratulations {a}! You have won ${big} cash. Claim it at {url}",
           "URGENT: your bank account is locked. Verify now at {url}",
           "Limited time offer: {pct}% off everything, today only! Call {phone}",
           "You were selected for a ${m} gift card. Reply YES to claim.",
           "Earn ${m} a day working from home, no experience needed! {url}",
           "Cheap loans, no credit check. Text {phone} now!",
           "WINNER!! Your {prize} is waiting. Claim before midnight: {url}",
           "Dear customer, your parcel is on hold. Pay a ${small} fee at {url}",
           "Lucky draw! Only {n} spots left for a free {prize}, sign up at {url}"],
    "zh-Hant": ["恭喜您中獎！點擊連結領取 ${big} 現金：{url}",
                "{a}您好，您已被選為幸運用戶，免費領取{prize}，立即點擊 {url}",
                "限時優惠！全場{zhe}折起，只限今天，加LINE：{wid}",
                "【緊急通知】您的銀行帳戶已被凍結，請立即登入 {url} 驗證身分",
                "在家兼職，日賺{m}元，無需經驗，詳情加LINE {wid}",
                "低息貸款，免審核，當天放款！來電 {phone}",
                "【退款通知】您有一筆{small}元退款待領取，點擊 {url}",
                "親愛的客戶，您的包裹因地址不全被扣留，請支付{small}元運費：{url}",
                "幸運抽獎！僅剩{n}個名額，免費送{prize}，回覆1立即參加",
                "限時優惠，加LINE領取紅包：{wid}"],
    "zh-Hans": ["恭喜您中奖！点击链接领取 ${big} 现金：{url}",
                "{a}您好，您已被选为幸运用户，免费领取{prize}，立即点击 {url}",
                "限时优惠！全场{zhe}折起，只限今天，加微信：{wid}",
                "【紧急通知】您的银行账户已被冻结，请立即登录 {url} 验证身份",
                "在家兼职，日赚{m}元，无需经验，详情加微信 {wid}",
                "低息贷款，免审核，当天放款！来电 {phone}",
                "【退款通知】您有一笔{small}元退款待领取，点击 {url}",
                "亲爱的客户，您的包裹因地址不全被扣留，请支付{small}元运费：{url}",
                "幸运抽奖！仅剩{n}个名额，免费送{prize}，回复1立即参加",
                "限时优惠，加微信领取红包：{wid}"],
}
PRIZES = {"en": ["iPhone", "gift card", "holiday trip", "laptop", "gold watch"],
          "zh-Hant": ["手機", "禮品卡", "旅遊套票", "筆記本電腦", "金錶"],
          "zh-Hans": ["手机", "礼品卡", "旅游套票", "笔记本电脑", "金表"]}
SPAM_WORDS = ["win", "prize", "bonus", "gift", "lucky", "cash", "vip", "promo"]
SPAM_TLDS = ["top", "xyz", "cc", "win", "biz"]
WORLD_HAM_SHARE = 0.35  # of ham: a plain sentence about the world


def _fill(rng: random.Random, world: World, lang: str) -> dict[str, str]:
    a, b = rng.sample(world.people, 2)
    town = rng.choice(TOWNS)
    code = "".join(rng.choices(string.ascii_lowercase + string.digits, k=5))
    return {
        "a": a.name.say(lang), "b": b.name.say(lang), "town": town.say(lang),
        "landmark": rng.choice(LANDMARKS).say(lang), "pet": rng.choice(ANIMALS).say(lang),
        "hobby": rng.choice(HOBBIES).say(lang), "h": str(rng.randint(1, 12)),
        "n": str(rng.randint(2, 20)), "small": str(rng.randint(2, 60)),
        "big": (f"{rng.choice([1000, 5000, 10000, 50000]):,}" if lang == "en"
                else str(rng.choice([1000, 5000, 10000, 50000]))),
        "m": str(100 * rng.randint(3, 20)), "pct": str(rng.choice([30, 40, 50, 70, 90])),
        "zhe": str(rng.randint(1, 8)), "prize": rng.choice(PRIZES[lang]),
        "url": f"http://{rng.choice(SPAM_WORDS)}{rng.randint(1, 999)}.{rng.choice(SPAM_TLDS)}/{code}",
        "hurl": f"https://photos.{town.en.lower()}.net/{rng.randint(100, 999)}",
        "phone": f"0{rng.randint(900, 999)}-{rng.randint(100, 999)}-{rng.randint(100, 999)}",
        "wid": f"{rng.choice(['vip', 'gift', 'hb', 'lucky'])}{rng.randint(100, 9999)}",
    }


def _spam_text(rng: random.Random, world: World, label: str, lang: str) -> str:
    if label == "ham" and rng.random() < WORLD_HAM_SHARE:
        fact = rng.choice(world.facts())
        return render(fact, lang, rng.choice(TEMPLATES[fact.kind][lang]))
    forms = (HAM if label == "ham" else SPAM)[lang]
    return rng.choice(forms).format(**_fill(rng, world, lang))


def spam_dataset(seed: int = 0, n_train: int = 2000, n_test: int = 400,
                 ) -> tuple[list[dict], list[dict]]:
    """{"text", "label"} records, half "spam" and half "ham" (±1), a third per language each.

    Ham is a sentence about `world_for(seed)` or an everyday message between its people;
    spam is ads and scams. No text occurs twice, and no test text is in train.
    """
    rng = random.Random(f"spam:{seed}")
    world = world_for(seed)
    seen: set[str] = set()

    def split(n: int) -> list[dict]:
        records = []
        for i in range(n):
            label = ("spam", "ham")[i % 2]
            lang = LANGS[(i // 2) % len(LANGS)]
            for _ in range(1000):
                text = _spam_text(rng, world, label, lang)
                if text not in seen:
                    break
            else:
                raise ValueError(f"cannot make {n} distinct {lang} {label} texts; ask for fewer")
            seen.add(text)
            records.append({"text": text, "label": label})
        rng.shuffle(records)
        return records

    train = split(n_train)
    return train, split(n_test)


# ---- look at it ------------------------------------------------------------------------------

def _lang_of(text: str) -> str:
    """Roughly, for picking examples to print: English, or which Chinese script."""
    if text.isascii() or not any("\u4e00" <= c <= "\u9fff" for c in text):
        return "en"
    return "zh-Hant" if any(c in "麼裡誰個請於減寵養職歡顏愛閒鄉從龍認" for c in text) else "zh-Hans"


def _show(record: dict) -> str:
    return "\n".join(f"    {m['role']:>9}: {m['content']}" for m in record["messages"])


if __name__ == "__main__":
    t0 = time.perf_counter()
    world = world_for(0)
    qa = qa_conversations(world, seed=0)
    train_tr, test_tr = translation_pairs(world, seed=0)
    train_spam, test_spam = spam_dataset(seed=0)
    print(f"made in {time.perf_counter() - t0:.2f}s")

    print(f"\n== Q&A: {len(qa.train)} train chats "
          f"({sum(len(r['messages']) > 3 for r in qa.train)} with two turns, "
          f"{sum(r['messages'][0]['role'] == 'system' for r in qa.train)} with a system message), "
          f"{len(qa.test)} held-out questions")
    print("   test by kind:", dict(Counter(q.kind for q in qa.test)))
    for lang in LANGS:
        print(f"\n  [{lang}]")
        for r in [r for r in qa.train if _lang_of(_show(r)) == lang][:2]:
            print(_show(r) + "\n")
        item = next(q for q in qa.test if q.lang == lang and q.kind not in ("add", "sub"))
        print(f"    test: {item.messages_without_answer[0]['content']}  ->  {item.answer_text}"
              f"  (value {item.answer_value!r} of {len(item.choices)} choices)")
    r = next(r for r in qa.train if len(r["messages"]) > 3)
    print("\n  as ShareGPT:", as_format(r, "sharegpt"))
    print("  as alpaca:  ", as_format(r, "alpaca"))

    print(f"\n== Translation: {len(train_tr)} train chats, {len(test_tr)} held-out items")
    for src, tgt in [("zh-Hant", "en"), ("en", "zh-Hant"), ("zh-Hans", "en"), ("en", "zh-Hans")]:
        item = next(t for t in test_tr if (t.src_lang, t.tgt_lang) == (src, tgt))
        print(f"    {item.messages_without_answer[0]['content']}  ->  {item.reference}")

    print(f"\n== Spam: {len(train_spam)} train, {len(test_spam)} test;",
          dict(Counter(r["label"] for r in train_spam)))
    for r in train_spam[:8]:
        print(f"    {r['label']:>4}  {r['text']}")
