"""The built-in demo corpus: a tiny fictional world told in English, Traditional and
Simplified Chinese, plus small arithmetic.

Two dozen people live in eight towns; each keeps a pet, has a job, a favourite colour,
a hobby and one best friend, and each town lies near a river or a mountain. The world is
plain data (`World`, `Person`, `Town`, `Fact`); sentences are rendered from it by several
templates per fact and language, so a tiny model sees each fact phrased many ways. One
rendering of every person fact is held out of the training text and becomes a
`FactQuestion` (prompt + the exact continuation + all candidate continuations), and so is
~15% of the arithmetic, which lets the demo measure knowledge, not memorised strings.

Every 20th training document (`AMBIGUOUS_EVERY`; drawn apart, so the other documents and
the validation text stay as they were) uses words whose sense depends on their
context, said by the world's people: 蘋果/苹果/apple as a fruit (on a tree, eaten, given)
and as a phone (bought, charged), 小米 as a grain and as a phone, "bank" of a river and for
money (`SENSES`). The demo's "look inside" stage follows 蘋果's hidden state through the
layers in both senses (demo/look.py). English writes the brand "apple" in lower case, so
that the two senses are one token and only the context can tell them apart; most templates
give the cue before the word (樹上, 買了一支), as a causal model reads only to the left.

Later stages (SFT conversations, preference pairs, RAG documents) can render the same
`World` with their own templates. `han_char_pieces` is the text the demo trains its
tokenizer on (Chinese one character per token: see there for why).

Look at it:  python -m jielong.demo.world      (stats, a document per language, questions)
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

LANGS = ("en", "zh-Hant", "zh-Hans")
MATH_SHARE, TOWN_SHARE = 0.15, 0.18  # of documents; the rest are about one person
AMBIGUOUS_EVERY = 20                 # every 20th training document is about ambiguous words
MATH_MAX = 20                        # operands are 0..MATH_MAX
MATH_HELD_OUT = 0.15                 # share of (a, b, op) pairs never shown in training
MATH_CHOICES = 10                    # candidate answers per arithmetic question
# Half the documents about the world are English, a quarter in each Chinese script: the two
# scripts share most of the world's characters (阿明, 小美, 下棋, 白色), so what one script says
# teaches much of the other, and Chinese still gets more of the training tokens (it takes a
# token per character; English, a token per word). With a third each, English got 24% of the
# tokens and 71% of its held-out facts, Chinese 100% (bench/RESULTS.md).
LANG_WEIGHTS = (2.0, 1.0, 1.0)       # en, zh-Hant, zh-Hans


@dataclass(frozen=True)
class Term:
    """A name or word in the three scripts (both Chinese forms written out by hand)."""

    en: str
    hant: str
    hans: str

    def say(self, lang: str) -> str:
        return {"en": self.en, "zh-Hant": self.hant, "zh-Hans": self.hans}[lang]


def _terms(rows: list[tuple[str, str, str]]) -> list[Term]:
    return [Term(*row) for row in rows]


# ---- vocabulary --------------------------------------------------------------------------

PEOPLE = _terms([
    ("Ming", "阿明", "阿明"), ("Mei", "小美", "小美"), ("Loong", "阿龍", "阿龙"),
    ("Hua", "小華", "小华"), ("Feng", "阿鳳", "阿凤"), ("Wei", "大偉", "大伟"),
    ("Lili", "麗麗", "丽丽"), ("Qiang", "阿強", "阿强"), ("Jun", "小軍", "小军"),
    ("Dong", "東東", "东东"), ("Hong", "小紅", "小红"), ("Lan", "阿蘭", "阿兰"),
    ("Yun", "小雲", "小云"), ("Tao", "阿濤", "阿涛"), ("Jing", "小靜", "小静"),
    ("Bo", "阿博", "阿博"), ("Xin", "小欣", "小欣"), ("Hui", "阿輝", "阿辉"),
    ("Ting", "婷婷", "婷婷"), ("Kai", "阿凱", "阿凯"), ("Ning", "寧寧", "宁宁"),
    ("Peng", "阿鵬", "阿鹏"), ("Shan", "小珊", "小珊"), ("Chen", "阿晨", "阿晨"),
])
TOWNS = _terms([
    ("Maple", "楓林", "枫林"), ("Willow", "柳岸", "柳岸"), ("Stonebridge", "石橋", "石桥"),
    ("Cloudfir", "雲杉", "云杉"), ("Bayside", "海灣", "海湾"), ("Pineridge", "松嶺", "松岭"),
    ("Goldsand", "金沙", "金沙"), ("Frostvale", "霜谷", "霜谷"),
])
LANDMARKS = _terms([
    ("the Jade River", "玉河", "玉河"), ("the Red River", "紅河", "红河"),
    ("Dragon Mountain", "龍山", "龙山"), ("Phoenix Mountain", "鳳凰山", "凤凰山"),
])
ANIMALS = _terms([
    ("cat", "貓", "猫"), ("dog", "狗", "狗"), ("rabbit", "兔子", "兔子"),
    ("parrot", "鸚鵡", "鹦鹉"), ("turtle", "烏龜", "乌龟"), ("horse", "馬", "马"),
    ("goose", "鵝", "鹅"), ("goldfish", "金魚", "金鱼"),
])
JOBS = _terms([
    ("teacher", "老師", "老师"), ("doctor", "醫生", "医生"), ("farmer", "農夫", "农夫"),
    ("baker", "麵包師", "面包师"), ("painter", "畫家", "画家"), ("fisher", "漁夫", "渔夫"),
])
COLOURS = _terms([
    ("red", "紅色", "红色"), ("blue", "藍色", "蓝色"), ("green", "綠色", "绿色"),
    ("yellow", "黃色", "黄色"), ("white", "白色", "白色"), ("purple", "紫色", "紫色"),
])
HOBBIES = _terms([
    ("reading", "讀書", "读书"), ("singing", "唱歌", "唱歌"), ("swimming", "游泳", "游泳"),
    ("chess", "下棋", "下棋"), ("fishing", "釣魚", "钓鱼"), ("dancing", "跳舞", "跳舞"),
])

# ---- templates: {s} is the subject, {v} the value. A template that ends in "{v}." or
# "{v}。" can become a question (its text before {v} is the prompt). Keep templates from
# containing one another: a held-out sentence must not hide inside another phrasing.

TEMPLATES: dict[str, dict[str, list[str]]] = {
    "hometown": {
        "en": ["{s} lives in {v}.", "{s} lives in the town of {v}.",
               "The home town of {s} is {v}.", "{v} is home to {s}."],
        "zh-Hant": ["{s}住在{v}。", "{s}的家鄉是{v}。", "{s}的家在{v}。", "{v}是{s}的家鄉。"],
        "zh-Hans": ["{s}住在{v}。", "{s}的家乡是{v}。", "{s}的家在{v}。", "{v}是{s}的家乡。"],
    },
    "pet": {
        "en": ["{s} has a pet {v}.", "{s} keeps a {v} at home.", "The pet of {s} is a {v}.",
               "{s} takes good care of a pet {v}."],
        "zh-Hant": ["{s}的寵物是{v}。", "{s}家裡養了{v}。", "{v}是{s}的寵物。", "{s}每天照顧自己的{v}。"],
        "zh-Hans": ["{s}的宠物是{v}。", "{s}家里养了{v}。", "{v}是{s}的宠物。", "{s}每天照顾自己的{v}。"],
    },
    "job": {
        "en": ["{s} works as a {v}.", "{s} has a job as a {v}.", "By trade, {s} is a {v}.",
               "Everyone in town knows {s} as a {v}."],
        "zh-Hant": ["{s}的工作是{v}。", "{s}的職業是{v}。", "{s}是一位{v}。", "{s}在鎮上當{v}。"],
        "zh-Hans": ["{s}的工作是{v}。", "{s}的职业是{v}。", "{s}是一位{v}。", "{s}在镇上当{v}。"],
    },
    "colour": {
        "en": ["{s}'s favourite colour is {v}.", "The colour {s} likes best is {v}.",
               "{s} loves the colour {v}.", "{v} is the favourite colour of {s}."],
        "zh-Hant": ["{s}最喜歡的顏色是{v}。", "{s}最愛的顏色是{v}。", "{s}特別喜歡{v}。",
                    "{v}是{s}最喜歡的顏色。"],
        "zh-Hans": ["{s}最喜欢的颜色是{v}。", "{s}最爱的颜色是{v}。", "{s}特别喜欢{v}。",
                    "{v}是{s}最喜欢的颜色。"],
    },
    "hobby": {
        "en": ["{s}'s hobby is {v}.", "In free time, {s} enjoys {v}.", "The hobby of {s} is {v}.",
               "{s} is very fond of {v}."],
        "zh-Hant": ["{s}的愛好是{v}。", "{s}空閒時喜歡{v}。", "{s}週末常常{v}。", "{v}是{s}的愛好。"],
        "zh-Hans": ["{s}的爱好是{v}。", "{s}空闲时喜欢{v}。", "{s}周末常常{v}。", "{v}是{s}的爱好。"],
    },
    "friend": {
        "en": ["{s}'s best friend is {v}.", "The best friend of {s} is {v}.",
               "{s} and {v} are best friends.", "{s} trusts no one more than {v}."],
        "zh-Hant": ["{s}最好的朋友是{v}。", "{s}和{v}是最好的朋友。", "{v}是{s}最好的朋友。",
                    "{s}最信任的朋友是{v}。"],
        "zh-Hans": ["{s}最好的朋友是{v}。", "{s}和{v}是最好的朋友。", "{v}是{s}最好的朋友。",
                    "{s}最信任的朋友是{v}。"],
    },
    "landmark": {
        "en": ["{s} lies near {v}.", "The town of {s} is close to {v}.",
               "From {s} you can see {v}.", "People in {s} live near {v}."],
        "zh-Hant": ["{s}靠近{v}。", "{s}鎮就在{v}旁邊。", "從{s}可以看到{v}。", "{s}附近有{v}。"],
        "zh-Hans": ["{s}靠近{v}。", "{s}镇就在{v}旁边。", "从{s}可以看到{v}。", "{s}附近有{v}。"],
    },
}

# ---- words with two senses: {s} and {o} are two of the world's people ---------------------------

AMBIGUOUS_WORDS: dict[str, dict[str, str]] = {
    "apple": {"en": "apple", "zh-Hant": "蘋果", "zh-Hans": "苹果"},
    "millet": {"zh-Hant": "小米", "zh-Hans": "小米"},   # the grain, and a phone brand
    "bank": {"en": "bank"},                          # of a river, and for money
}
SENSES: dict[str, dict[str, dict[str, list[str]]]] = {
    "apple": {
        "fruit": {
            "en": ["{s} picked a red apple from the tree.", "{s} ate a sweet apple after lunch.",
                   "On the tree by the house of {s} the apples are ripe.",
                   "{s} gave a ripe apple to {o}, and {o} was happy."],
            "zh-Hant": ["{s}從樹上摘了一個紅蘋果。", "{s}吃了一個很甜的蘋果。", "樹上的蘋果熟了，{s}摘了幾個。",
                        "{s}把一個熟透的蘋果送給{o}，{o}很開心。"],
            "zh-Hans": ["{s}从树上摘了一个红苹果。", "{s}吃了一个很甜的苹果。", "树上的苹果熟了，{s}摘了几个。",
                        "{s}把一个熟透的苹果送给{o}，{o}很开心。"],
        },
        "phone": {
            "en": ["{s} bought a new apple phone.", "The new phone of {s} is an apple.",
                   "At night {s} charged the apple phone.", "{s} sent a message to {o} from an apple phone."],
            "zh-Hant": ["{s}買了一支新的蘋果手機。", "{s}的新手機是蘋果的。", "{s}晚上給那支蘋果手機充電。",
                        "{s}用蘋果手機傳訊息給{o}。"],
            "zh-Hans": ["{s}买了一支新的苹果手机。", "{s}的新手机是苹果的。", "{s}晚上给那支苹果手机充电。",
                        "{s}用苹果手机传讯息给{o}。"],
        },
    },
    "millet": {
        "grain": {"zh-Hant": ["{s}在田裡種了小米。", "{s}用小米煮了一鍋粥。"],
                  "zh-Hans": ["{s}在田里种了小米。", "{s}用小米煮了一锅粥。"]},
        "phone": {"zh-Hant": ["{s}買了一支小米手機。", "{s}的新手機是小米的。"],
                  "zh-Hans": ["{s}买了一支小米手机。", "{s}的新手机是小米的。"]},
    },
    "bank": {
        "river": {"en": ["{s} sat on the bank of the river to fish.", "Reeds grow on the river bank near {s}."]},
        "money": {"en": ["{s} keeps money in the bank.", "{s} went to the bank to get some money."]},
    },
}


def ambiguous_templates(lang: str) -> list[tuple[str, str, str]]:
    """(word, sense, template) of every two-sense sentence in `lang`."""
    return [(w, sense, t) for w, senses in SENSES.items() for sense, by in senses.items()
            for t in by.get(lang, [])]


# ---- the world -----------------------------------------------------------------------------

PERSON_KINDS = ("hometown", "pet", "job", "colour", "hobby", "friend")


@dataclass(frozen=True)
class Fact:
    kind: str      # a key of TEMPLATES
    subject: Term
    value: Term


@dataclass(eq=False)
class Town:
    name: Term
    landmark: Term  # the river or mountain it lies near


@dataclass(eq=False)
class Person:
    name: Term
    town: Town
    pet: Term
    job: Term
    colour: Term
    hobby: Term
    friend: Person | None = field(default=None, repr=False)  # symmetric, one each

    def fact(self, kind: str) -> Fact:
        assert self.friend is not None, "make_world pairs everyone up"
        value = {"hometown": self.town.name, "pet": self.pet, "job": self.job,
                 "colour": self.colour, "hobby": self.hobby, "friend": self.friend.name}[kind]
        return Fact(kind, self.name, value)

    def facts(self) -> list[Fact]:
        return [self.fact(kind) for kind in PERSON_KINDS]


@dataclass
class World:
    people: list[Person]
    towns: list[Town]

    def values(self, kind: str) -> list[Term]:
        """Every value a fact of this kind can take, in a fixed order."""
        if kind == "friend":
            return [p.name for p in self.people]
        return {"hometown": TOWNS, "landmark": LANDMARKS, "pet": ANIMALS, "job": JOBS,
                "colour": COLOURS, "hobby": HOBBIES}[kind]

    def residents(self, town: Town) -> list[Person]:
        return [p for p in self.people if p.town is town]

    def facts(self) -> list[Fact]:
        return [f for p in self.people for f in p.facts()] + [
            Fact("landmark", t.name, t.landmark) for t in self.towns]


def _balanced(rng: random.Random, items: list, n: int) -> list:
    """n picks using every item equally often (±1), so guessing the commonest is ~chance."""
    picks = [items[i % len(items)] for i in range(n)]
    rng.shuffle(picks)
    return picks


def make_world(rng: random.Random) -> World:
    landmarks = _balanced(rng, LANDMARKS, len(TOWNS))
    towns = [Town(name, lm) for name, lm in zip(TOWNS, landmarks, strict=True)]
    n = len(PEOPLE)
    columns = [_balanced(rng, values, n) for values in (towns, ANIMALS, JOBS, COLOURS, HOBBIES)]
    people = [Person(*row) for row in zip(PEOPLE, *columns, strict=True)]
    order = rng.sample(people, n)
    for a, b in zip(order[0::2], order[1::2], strict=True):
        a.friend, b.friend = b, a
    return World(people, towns)


# ---- rendering and questions ----------------------------------------------------------------

@dataclass
class FactQuestion:
    prompt: str        # a sentence prefix, e.g. "Mei lives in the town of" or "阿明住在"
    answer: str        # the exact continuation (" Maple" in English, "楓林" in Chinese)
    choices: list[str] # every candidate continuation of this kind, answer included
    lang: str          # "en" | "zh-Hant" | "zh-Hans" | "math"
    kind: str          # a TEMPLATES key ("hometown", "pet", ...) or "add" | "sub"
    end: str = ""      # what follows the answer ("." / "。" / a line break): scored with each
                       # choice, or " 1" would always beat " 12", of which it is a prefix


@dataclass
class Corpus:
    train: list[str]
    val: list[str]
    questions: list[FactQuestion]
    world: World
    # Sums the training text does state, asked the same way: what a model memorised, to set
    # against the held-out sums, which it must work out.
    seen_sums: list[FactQuestion] = field(default_factory=list)


def render(fact: Fact, lang: str, template: str) -> str:
    return template.format(s=fact.subject.say(lang), v=fact.value.say(lang))


def askable(template: str) -> bool:
    return template.endswith(("{v}.", "{v}。"))


def _continuation(word: str, lang: str) -> str:
    return " " + word if lang == "en" else word  # English continues after a space


def make_question(world: World, fact: Fact, lang: str, template: str) -> FactQuestion:
    head = template[: template.index("{v}")].format(s=fact.subject.say(lang))
    choices = [_continuation(t.say(lang), lang) for t in world.values(fact.kind)]
    return FactQuestion(head.rstrip(" "), _continuation(fact.value.say(lang), lang), choices,
                        lang, fact.kind, template[template.index("{v}") + 3:])


def _math_line(a: int, b: int, op: str) -> str:
    return f"{a} {op} {b} = {a + b if op == '+' else a - b}"


def _math_question(rng: random.Random, a: int, b: int, op: str) -> FactQuestion:
    c = a + b if op == "+" else a - b
    top = 2 * MATH_MAX if op == "+" else MATH_MAX
    # a window of MATH_CHOICES numbers around c, shifted at random so position gives nothing away
    lo = min(max(0, c - rng.randrange(MATH_CHOICES)), top + 1 - MATH_CHOICES)
    return FactQuestion(f"{a} {op} {b} =", f" {c}", [f" {n}" for n in range(lo, lo + MATH_CHOICES)],
                        "math", "add" if op == "+" else "sub", "\n")


# ---- documents --------------------------------------------------------------------------------

def _ambiguous_document(rng: random.Random, world: World, lang: str, k: int) -> str:
    """k sentences in `lang` using words with two senses, each about some of the world's people."""
    templates = ambiguous_templates(lang)
    out = []
    for _ in range(k):
        s, o = rng.sample(world.people, 2)
        out.append(rng.choice(templates)[2].format(s=s.name.say(lang), o=o.name.say(lang)))
    return (" " if lang == "en" else "").join(out)


def _document(rng: random.Random, world: World, pool: dict[tuple[Fact, str], list[str]],
              equations: list[str]) -> str:
    """One paragraph in one language about a person or a town, or a few lines of sums."""
    r, k = rng.random(), rng.randint(4, 8)
    if r < MATH_SHARE:
        return "\n".join(rng.choice(equations) for _ in range(k))
    lang = rng.choices(LANGS, LANG_WEIGHTS)[0]
    if r < MATH_SHARE + TOWN_SHARE:
        town = rng.choice(world.towns)
        people = world.residents(town)
        facts = [Fact("landmark", town.name, town.landmark)]
        facts += [p.fact("hometown") for p in people] + [p.fact("job") for p in people]
    else:
        person = rng.choice(world.people)
        facts = person.facts() + [Fact("friend", person.friend.name, person.name),
                                   Fact("landmark", person.town.name, person.town.landmark)]
    facts = [f for f in facts if pool[f, lang]]
    sentences = [rng.choice(pool[f, lang]) for f in rng.sample(facts, min(k, len(facts)))]
    return (" " if lang == "en" else "").join(sentences)


def build_corpus(seed: int = 0, n_docs: int = 4000) -> Corpus:
    """Make the world for `seed`, hold out questions, and render train/val documents."""
    rng = random.Random(seed)
    world = make_world(rng)

    # One (language, template) rendering per world fact becomes the question; languages
    # rotate within each kind so every language gets its share.
    questions: list[FactQuestion] = []
    held_out: set[tuple[Fact, str, str]] = set()
    for kind in TEMPLATES:
        facts = [f for f in world.facts() if f.kind == kind]
        langs = _balanced(rng, list(LANGS), len(facts))
        for fact, lang in zip(facts, langs, strict=True):
            template = rng.choice([t for t in TEMPLATES[kind][lang] if askable(t)])
            held_out.add((fact, lang, template))
            questions.append(make_question(world, fact, lang, template))
    held_strings = [q.prompt + q.answer for q in questions]

    # Every other rendering may be trained on, unless it happens to contain a held-out string.
    pool: dict[tuple[Fact, str], list[str]] = {}
    for fact in world.facts():
        for lang in LANGS:
            said = [render(fact, lang, t) for t in TEMPLATES[fact.kind][lang]
                    if (fact, lang, t) not in held_out]
            pool[fact, lang] = [s for s in said if not any(h in s for h in held_strings)]

    pairs = [(a, b, "+") for a in range(MATH_MAX + 1) for b in range(MATH_MAX + 1)]
    pairs += [(a, b, "-") for a in range(MATH_MAX + 1) for b in range(a + 1)]
    rng.shuffle(pairs)
    n_held = round(MATH_HELD_OUT * len(pairs))
    equations = [_math_line(*p) for p in pairs[n_held:]]
    for p in pairs[:n_held]:
        q = _math_question(rng, *p)
        # "0 + 1 = 1" hides inside "10 + 1 = 11": such pairs stay out of train but are not asked
        if not any(q.prompt + q.answer in e for e in equations):
            questions.append(q)

    train = [_document(rng, world, pool, equations) for _ in range(n_docs)]
    rng_two = random.Random(f"ambiguous:{seed}")  # its own stream: the rest stays as it was
    for i in range(AMBIGUOUS_EVERY - 1, n_docs, AMBIGUOUS_EVERY):
        lang = rng_two.choices(LANGS, LANG_WEIGHTS)[0]
        train[i] = _ambiguous_document(rng_two, world, lang, rng_two.randint(4, 8))
    seen, val = set(train), []
    n_val, tries = max(20, n_docs // 20), 0
    while len(val) < n_val and tries < 100 * n_val:
        doc, tries = _document(rng, world, pool, equations), tries + 1
        if doc not in seen:
            seen.add(doc)
            val.append(doc)
    # From a generator of their own, so that asking them leaves the corpus as it was.
    rng_seen = random.Random(f"seen-sums:{seed}")
    n_asked = sum(q.lang == "math" for q in questions)
    seen_sums = [_math_question(rng_seen, *p) for p in rng_seen.sample(pairs[n_held:], n_asked)]
    return Corpus(train, val, questions, world, seen_sums)


# ---- what the tokenizer learns from ----------------------------------------------------------

HAN_CHAR = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")


def han_char_pieces(docs: Iterable[str]) -> Iterator[str]:
    """The documents as texts for BPE training, with every Han character a text of its own,
    so that the tokenizer learns Chinese characters but no merges across them.

    English has a space before every word, and BPE merges never cross one. A run of Han
    characters has no such boundary, and this corpus says each fact in a few fixed ways
    thousands of times: trained on whole documents, a 2,048-token BPE spends most of its
    vocabulary on whole fact sentences (小云和阿龙是最好的朋友 is one token, 11 bytes per
    Chinese token against 4.6 in English). A fact is then a different token in every
    phrasing, so nothing learnt from one phrasing carries to another, and a held-out phrasing
    is a token the model never saw. Trained one character at a time, no merge joins two
    characters (nor their bytes: a merge across a boundary would pair a UTF-8 continuation
    byte with a lead byte, which never meet inside one character), so the tokenizer encodes
    running Chinese text one character per token, like these pieces (tested)."""
    for doc in docs:
        yield from (piece for piece in HAN_CHAR.split(doc) if piece)


def demo_prompts() -> list[str]:
    """Short prompts whose continuations show what the demo model learned."""
    return ["Ming lives in", "The best friend of Mei is", "阿明的寵物是", "小華最喜歡的顏色是",
            "阿龙的工作是", "大伟住在", "7 + 5 =", "15 - 8 ="]


def _script_chars(lang: str) -> set[str]:
    terms = [t for ts in (PEOPLE, TOWNS, LANDMARKS, ANIMALS, JOBS, COLOURS, HOBBIES) for t in ts]
    return set("".join([t.say(lang) for t in terms] + [s for by in TEMPLATES.values() for s in by[lang]]
                       + [t for _, _, t in ambiguous_templates(lang)]))


def _doc_lang(doc: str) -> str:
    """The language of a document (for stats); "zh" when no character tells the scripts apart."""
    if doc[0].isdigit():
        return "math"
    if doc.isascii():
        return "en"
    hant, hans = _script_chars("zh-Hant"), _script_chars("zh-Hans")
    if set(doc) & (hans - hant):
        return "zh-Hans"
    return "zh-Hant" if set(doc) & (hant - hans) else "zh"


if __name__ == "__main__":
    t0 = time.perf_counter()
    corpus = build_corpus()
    took = time.perf_counter() - t0
    n_bytes = sum(len(d.encode()) for d in corpus.train)
    print(f"built in {took:.2f}s: {len(corpus.train)} train docs ({n_bytes / 1e6:.2f} MB, "
          f"{sum(map(len, corpus.train)):,} chars), {len(corpus.val)} val docs")
    print("train docs by language:", dict(Counter(map(_doc_lang, corpus.train))))
    print(f"{len(corpus.questions)} held-out questions by language:",
          dict(Counter(q.lang for q in corpus.questions)))
    print("  by kind:", dict(Counter(q.kind for q in corpus.questions)))
    for lang in ("en", "zh-Hant", "zh-Hans", "math"):
        doc = next(d for d in corpus.train if _doc_lang(d) == lang)
        print(f"\n[{lang}] {doc}")
    print()
    for q in corpus.questions[::40]:
        print(f"Q [{q.lang}/{q.kind}] {q.prompt!r} -> {q.answer!r}  ({len(q.choices)} choices)")
    print("\ndemo prompts:", demo_prompts())
