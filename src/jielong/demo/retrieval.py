"""The demo's retrieval stage (17): answering about people and places it never saw.

Eight new people and four new towns (`NEW_PEOPLE`, `NEW_TOWNS`, named with the world's own
characters so the demo tokenizer reads them a character a token) get small documents, one
per person or town and language (繁/简/English, the world's sentence templates), indexed by
jielong.rag (`build_index`, BM25 over jieba words folded to Simplified). Each held-out
question about a documented fact is asked closed-book (the question alone) and with
documents, exactly as `jielong rag ask` does it: `retrieve` (k = 1: the demo model's context
is 512 tokens and rag_messages' instruction and quoted-data scaffold take ~340 of them),
the coverage gate's "I don't know" when nothing relevant is found, else `fit_passages` and
the model's greedy reply.

The demo model never learnt to read a passage, so a short SFT of the aligned assistant
(RUN/assistant -> RUN/retrieval/model) on RAG chats teaches it: the passage is a document
about a made-up person or town (4-6 facts in the world's vocabulary and phrasings, in one
language), the question asks one fact and the answer is its sentence; when the asked fact
is not in the passage the answer is rag's decline text (`rag_chats`). The held-out people,
towns and facts are never trained on. Ordinary SFT chats are mixed in so the world is not
forgotten.

Measured before and after that SFT, closed-book and with documents:
- answered: the reply holds the right value (either Chinese script; eval.replies.contains_answer);
- confident wrong: the reply does not hold the right value, does not decline ("don't know" /
  不知道), and names another value of the same kind (a town for a where-question, an
  animal for a pet question) — an invented answer said as fact;
- declined: the reply says it does not know;
and for questions whose facts are in no document (the new people's best friends, people
nobody wrote about): declined and confident wrong (any value of the kind named).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from jielong.checkpoint import load_model, save_model
from jielong.data.chat import encode
from jielong.demo.finetune import bold
from jielong.demo.tasks import (
    QUESTIONS,
    ZH,
    answer_sentence,
    other_script,
    qa_conversations,
    world_for,
)
from jielong.demo.world import (
    ANIMALS,
    COLOURS,
    HOBBIES,
    JOBS,
    LANDMARKS,
    LANGS,
    PEOPLE,
    TEMPLATES,
    TOWNS,
    Fact,
    Term,
    World,
)
from jielong.errors import UserError
from jielong.eval.replies import chat_replies, contains_answer
from jielong.files import write_text
from jielong.rag.answer import decline_text, fit_passages, rag_messages, retrieve
from jielong.rag.chunk import Chunk, chunk_id
from jielong.rag.index import Hit, Index, build_index
from jielong.train.common import split
from jielong.train.loop import TrainConfig, fit
from jielong.train.packing import PackedStage, pack

NEW_PEOPLE = [Term(*t) for t in (
    ("Lin", "阿林", "阿林"), ("Sha", "小沙", "小沙"), ("Yu", "阿玉", "阿玉"), ("Song", "小松", "小松"),
    ("Qiao", "阿橋", "阿桥"), ("Hai", "小海", "小海"), ("Gu", "阿谷", "阿谷"), ("Liu", "小柳", "小柳"))]
NEW_TOWNS = [Term(*t) for t in (
    ("Goldridge", "金嶺", "金岭"), ("Maplebay", "楓灣", "枫湾"), ("Pinevale", "松谷", "松谷"),
    ("Cloudbridge", "雲橋", "云桥"))]
UNKNOWN_PEOPLE = [Term(*t) for t in (("Shi", "阿石", "阿石"), ("Shuang", "小霜", "小霜"))]  # no document
NEW_KINDS = ("hometown", "pet", "job", "colour", "hobby")
VALUES = {"hometown": TOWNS + NEW_TOWNS, "landmark": LANDMARKS, "pet": ANIMALS, "job": JOBS,
          "colour": COLOURS, "hobby": HOBBIES, "friend": PEOPLE + NEW_PEOPLE}
DECLINES = ("don't know", "do not know", "不知道")
K = 1             # passages per question: what the 512-token context leaves room for
MAX_NEW = 24      # reply tokens: an answer sentence or the decline text
N_CHATS = 900     # RAG chats about the world for the SFT
QA_MIX = 300      # ordinary SFT chats mixed in
NOT_IN_PASSAGE = 0.15  # of the RAG chats: the asked fact is not in the passage -> decline
LR = 2e-3


@dataclass
class Question:
    text: str
    lang: str
    kind: str
    value: str       # "" when no document says it
    alt: str = ""    # Chinese: the value in the other script


def new_facts(seed: int = 0) -> list[Fact]:
    """The new people's facts (a new town each, the world's pets, jobs, colours, hobbies)
    and the new towns' landmarks."""
    rng = random.Random(f"retrieval:{seed}")
    facts = []
    for i, p in enumerate(NEW_PEOPLE):
        values = [NEW_TOWNS[i % len(NEW_TOWNS)]] + [rng.choice(VALUES[k]) for k in NEW_KINDS[1:]]
        facts += [Fact(k, p, v) for k, v in zip(NEW_KINDS, values, strict=True)]
    return facts + [Fact("landmark", t, rng.choice(LANDMARKS)) for t in NEW_TOWNS]


def document(facts: list[Fact], lang: str, rng: random.Random) -> str:
    """The facts as one paragraph, each in one of the world's phrasings."""
    sentences = [rng.choice(TEMPLATES[f.kind][lang]).format(s=f.subject.say(lang), v=f.value.say(lang))
                 for f in facts]
    return (" " if lang == "en" else "").join(sentences)


def write_documents(folder: Path, facts: list[Fact], seed: int = 0) -> list[Path]:
    """One small text file per subject and language: NAME.LANG.txt."""
    rng = random.Random(f"retrieval-docs:{seed}")
    by_subject: dict[Term, list[Fact]] = {}
    for f in facts:
        by_subject.setdefault(f.subject, []).append(f)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for subject, fs in by_subject.items():
        for lang in LANGS:
            path = folder / f"{subject.en.lower()}.{lang}.txt"
            write_text(path, document(fs, lang, rng) + "\n")
            paths.append(path)
    return paths


def questions(facts: list[Fact]) -> tuple[list[Question], list[Question]]:
    """(questions the documents answer, questions about facts in no document), each fact
    asked in two of 繁/简/en in turn (the demo's time: a third of the replies less)."""
    answerable, none = [], []
    two = lambda i: (LANGS[i % 3], LANGS[(i + 1) % 3])  # noqa: E731
    for i, f in enumerate(facts):
        for lang in two(i):
            forms = QUESTIONS[f.kind][lang]
            answerable.append(Question(forms[i % len(forms)].format(s=f.subject.say(lang)), lang, f.kind,
                                       f.value.say(lang), f.value.say(other_script(lang)) if lang in ZH else ""))
    asked = [("friend", p) for p in NEW_PEOPLE] + [(k, p) for p in UNKNOWN_PEOPLE for k in NEW_KINDS]
    for i, (kind, p) in enumerate(asked):
        for lang in two(i):
            forms = QUESTIONS[kind][lang]
            none.append(Question(forms[i % len(forms)].format(s=p.say(lang)), lang, kind, ""))
    return answerable, none


def declined(reply: str) -> bool:
    low = reply.lower().replace("’", "'")
    return any(d in low for d in DECLINES)


def right(reply: str, q: Question) -> bool:
    return bool(q.value) and (contains_answer(reply, q.value) or bool(q.alt and contains_answer(reply, q.alt)))


def confident_wrong(reply: str, q: Question) -> bool:
    """Not the right value, no decline, and another value of the question's kind named."""
    if right(reply, q) or declined(reply):
        return False
    wrong = {t.say(lang) for t in VALUES[q.kind] for lang in LANGS} - {q.value, q.alt}
    return any(contains_answer(reply, w) for w in wrong)


def passage_hit(source: str, text: str) -> Hit:
    """A passage as retrieval returns it (one chunk: the whole small document)."""
    return Hit(Chunk(chunk_id(source, 0), text, source, None, None, 0, len(text)), 1.0, 1, "bm25")


# Made-up people and towns for the SFT's passages: names from the world's own characters and
# English syllables, never one of the held-out names above.
HAN = [("林", "林"), ("沙", "沙"), ("玉", "玉"), ("松", "松"), ("橋", "桥"), ("海", "海"), ("谷", "谷"),
       ("柳", "柳"), ("石", "石"), ("霜", "霜"), ("金", "金"), ("楓", "枫"), ("雲", "云"), ("山", "山"),
       ("河", "河"), ("紅", "红"), ("龍", "龙"), ("鳳", "凤"), ("杉", "杉"), ("灣", "湾"), ("嶺", "岭"),
       ("岸", "岸"), ("明", "明"), ("美", "美"), ("華", "华"), ("偉", "伟"), ("強", "强"), ("軍", "军")]
SYLLABLES = "ba da ka la ma na pa ra sa ta wa ya ko lo mo no ro so to bi di ki li mi ni ri si ti".split()
TOWN_PARTS = (["Gold", "Maple", "Pine", "Stone", "Cloud", "Frost", "Willow", "Red", "Jade", "Bay"],
              ["ridge", "bay", "vale", "bridge", "field", "wood", "port", "hill", "ford"])


def made_up(rng: random.Random, town: bool, taken: set[str]) -> Term:
    """A new name (a person's or a town's) in the three scripts, none of `taken`."""
    while True:
        if town:
            a, b = rng.sample(HAN, 2)
            t = Term(rng.choice(TOWN_PARTS[0]) + rng.choice(TOWN_PARTS[1]), a[0] + b[0], a[1] + b[1])
        else:
            c = rng.choice(HAN)
            head = rng.choice("阿小")
            en = "".join(rng.sample(SYLLABLES, rng.randint(1, 2))).capitalize()
            t = Term(en, head + c[0], head + c[1])
        if not {t.en, t.hant, t.hans} & taken:
            return t


def rag_chats(world: World, folder: Path, n: int, seed: int = 0) -> list[dict]:
    """SFT chats in rag_messages' format: a document about a made-up person (4-6 facts: the
    world's pets, jobs, colours, hobbies, a made-up or the world's town, a made-up friend) or
    a made-up town (its river or mountain), in the world's phrasings; a question about one
    fact, answered with its sentence, or, NOT_IN_PASSAGE of the time, about one the document
    leaves out, answered with the decline text. The people are made up so that the answer
    can only be read from the passage: passages of the world's own facts taught the model to
    answer from memory (a new person got a world person's pet)."""
    rng = random.Random(f"retrieval-sft:{seed}")
    taken = {t.say(lang) for t in NEW_PEOPLE + NEW_TOWNS + UNKNOWN_PEOPLE + world.values("friend")
             for lang in LANGS}
    chats = []
    for _ in range(n):
        lang = rng.choice(LANGS)
        name = made_up(rng, False, taken)
        if rng.random() < 0.15:
            town = made_up(rng, True, taken)
            facts = [Fact("landmark", town, rng.choice(LANDMARKS)), Fact("hometown", name, town)]
        else:
            home = made_up(rng, True, taken) if rng.random() < 0.5 else rng.choice(TOWNS)
            values = [home] + [rng.choice(VALUES[k]) for k in NEW_KINDS[1:]] + [made_up(rng, False, taken)]
            facts = [Fact(k, name, v) for k, v in zip((*NEW_KINDS, "friend"), values, strict=True)]
            rng.shuffle(facts)
        kept = facts[: rng.randint(4, len(facts) - 1)] if len(facts) > 2 else facts[:1]
        asked = rng.choice(facts[len(kept):] if rng.random() < NOT_IN_PASSAGE else kept)
        forms = QUESTIONS[asked.kind][lang]
        q = rng.choice(forms).format(s=asked.subject.say(lang))
        source = str(folder / f"{kept[0].subject.en.lower()}.{lang}.txt")
        messages = rag_messages(q, [passage_hit(source, document(kept, lang, rng))], compact=True)
        reply = answer_sentence(asked, lang) if asked in kept else decline_text(q)
        chats.append({"messages": messages + [{"role": "assistant", "content": reply}]})
    return chats


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


@torch.no_grad()
def measure(model, tok, index: Index, answerable: list[Question], none: list[Question],
            world: list, max_new: int = MAX_NEW) -> dict:
    """Closed-book and with documents: answered, confident wrong, declined (and per script)."""
    model.eval()
    n_ctx = model.config.max_position_embeddings
    count = lambda m: len(tok.encode_chat(m, add_generation_prompt=True)[0])  # noqa: E731
    qs = answerable + none
    replies: dict[str, list[str]] = {}
    closed = chat_replies(model, tok, [[{"role": "user", "content": q.text}] for q in qs], max_new, 64)
    replies["closed"] = [r.text for r in closed]
    rag: list[str | None] = []
    asks = []
    too_long = 0
    for q in qs:
        hits = retrieve(index, q.text, k=K)
        if hits:
            try:
                asks.append(fit_passages(count, q.text, hits, n_ctx - max_new)[1])
            except UserError:  # a tokenizer too small for the scaffold (the demo's test)
                too_long += 1
                rag.append("")
                continue
        rag.append(None if hits else decline_text(q.text))  # the gate: no model asked
    got = iter(chat_replies(model, tok, asks, max_new, 64))
    replies["rag"] = [r if r is not None else next(got).text for r in rag]
    out = {}
    for mode, texts in replies.items():
        a, z = texts[:len(answerable)], texts[len(answerable):]
        by = {lang: _share([right(r, q) for r, q in zip(a, answerable, strict=True) if q.lang == lang])
              for lang in LANGS}
        out[mode] = {"answered": _share([right(r, q) for r, q in zip(a, answerable, strict=True)]),
                     "by_lang": by,
                     "confident_wrong": _share([confident_wrong(r, q) for r, q in zip(a, answerable, strict=True)]),
                     "declined": _share([declined(r) for r in a]),
                     "none_declined": _share([declined(r) for r in z]),
                     "none_confident_wrong": _share([confident_wrong(r, q) for r, q in zip(z, none, strict=True)]),
                     "replies": dict(zip([q.text for q in qs], texts, strict=True))}
    out["rag"]["too_long"] = too_long
    world_replies = chat_replies(model, tok, [q.messages_without_answer for q in world], max_new, 64)
    out["closed"]["world_answered"] = _share(
        [contains_answer(r.text, q.answer_value) or bool(q.alt_value and contains_answer(r.text, q.alt_value))
         for r, q in zip(world_replies, world, strict=True)])
    return out


WORLD_TEST = 32


def retrieval_stage(run: Path, tok, steps: int, device: str, resume: bool, max_new: int = MAX_NEW,
                    n_chats: int = N_CHATS) -> dict:
    """RAG SFT of RUN/assistant into RUN/retrieval/model on the world's documents; new
    people's questions measured closed-book and with their documents, before and after
    (replies of at most `max_new` tokens)."""
    print(bold("17. retrieval") + " — documents about people and places the model never saw")
    t0 = time.time()
    folder = run / "retrieval"
    facts = new_facts()
    write_documents(folder / "docs", facts)
    report = build_index([folder / "docs"], folder / "index", progress=False)
    index = Index.load(folder / "index")
    answerable, none = questions(facts)
    world = qa_conversations(world_for(0), seed=0, n_train=0).test
    world = world[:: max(1, len(world) // WORLD_TEST)][:WORLD_TEST]
    model = load_model(run / "assistant").to(device)
    before = measure(model, tok, index, answerable, none, world, max_new)

    pad = model.config.pad_token_id or 0
    n_ctx = model.config.max_position_embeddings
    qa = qa_conversations(world_for(0), seed=0, n_train=QA_MIX).train
    chats = rag_chats(world_for(0), folder / "world", n_chats)
    train, val = split(chats + qa, 0.05, seed=0)
    encoded = [encode(tok, c["messages"]) for c in train]
    seq_len = min(n_ctx, -(-max(len(ids) for ids, _ in encoded) // 64) * 64)
    packed = pack(encoded, seq_len, pad, seed=0)
    packed_val = pack([encode(tok, c["messages"]) for c in val], seq_len, pad, seed=0)
    print(f"   {len(report.indexed)} documents about {len(NEW_PEOPLE)} new people and {len(NEW_TOWNS)} "
          f"new towns indexed; {len(answerable)} questions they answer, {len(none)} they do not; "
          f"SFT on {len(chats)} RAG chats about the world + {len(qa)} plain ones"
          + (f" ({packed.n_skipped} longer than {n_ctx} tokens left out)" if packed.n_skipped else "")
          + f", {steps} steps")
    cfg = TrainConfig(steps=steps, batch_size=8, lr=LR, warmup_steps=min(5, steps), eval_every=steps,
                      save_every=steps, device=device)
    summary = fit(model, PackedStage(packed, packed_val, cfg), cfg, folder, tokenizer=tok,
                  resume=resume, desc="retrieval")
    after = measure(model, tok, index, answerable, none, world, max_new)
    save_model(folder / "model", model, tok)
    shown = [q.text for q in answerable[:: max(1, len(answerable) // 4)][:4]] + [none[0].text]
    examples = [(t, after["closed"]["replies"][t], before["rag"]["replies"][t], after["rag"]["replies"][t])
                for t in shown]
    for r in (before, after):
        for m in r.values():
            del m["replies"]
    result = {"before": before, "after": after, "steps": steps, "k": K,
              "n": {"answerable": len(answerable), "none": len(none), "world": len(world),
                    "documents": len(report.indexed), "people": len(NEW_PEOPLE), "towns": len(NEW_TOWNS)},
              "n_train": {"rag": len(chats), "qa": len(qa)}, "skipped": packed.n_skipped,
              "val_loss": summary.get("val_loss"), "examples": examples,
              "seconds": round(time.time() - t0, 1)}
    for line in table(result):
        print("   " + line)
    return result


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


ROWS = (("new facts answered", "answered"), ("  繁", "zh-Hant"), ("  简", "zh-Hans"), ("  en", "en"),
        ("confident wrong answers", "confident_wrong"), ("declined", "declined"),
        ("in no document: declined", "none_declined"),
        ("in no document: confident wrong", "none_confident_wrong"),
        ("world questions answered", "world_answered"))


def rows_of(r: dict) -> list[tuple[str, list[str]]]:
    """(label, [closed-book before, after, with documents before, after]) per measure."""
    out = []
    for label, key in ROWS:
        get = (lambda m, key=key: m["by_lang"][key]) if key in LANGS else (lambda m, key=key: m.get(key))
        out.append((label, [_pct(get(r[w][mode])) for mode in ("closed", "rag") for w in ("before", "after")]))
    return out


def table(r: dict) -> list[str]:
    n = r["n"]
    lines = [f"held out: {n['answerable']} questions about new facts, {n['none']} about facts in no "
             f"document, {n['world']} world questions",
             f"{'':34}{'closed-book':>18}{'with documents':>18}",
             f"{'':34}{'before':>9}{'after':>9}{'before':>9}{'after':>9}"]
    lines += [f"{label:34}" + "".join(f"{c:>9}" for c in cells) for label, cells in rows_of(r)]
    if r["after"]["rag"].get("too_long"):
        lines.append(f"({r['after']['rag']['too_long']} questions whose prompt did not fit the context "
                     "even with a cut passage: counted unanswered)")
    return lines


def lesson(r: dict) -> str:
    """What the numbers say, and only that."""
    a, b = r["after"], r["before"]
    said = (f"Closed-book the model can only guess (the answers it got right are the chance of "
            f"naming the right pet or colour): {_pct(a['closed']['confident_wrong'])} of its answers "
            "about the new people were confidently wrong after the RAG SFT "
            f"({_pct(b['closed']['confident_wrong'])} before). With the documents it answered "
            f"{_pct(b['rag']['answered'])} before and {_pct(a['rag']['answered'])} after the SFT. "
            f"The coverage gate declined {_pct(a['rag']['declined'])} of the answerable questions "
            "(the document said it in other words: 職業 where the question asks 工作) and "
            f"{_pct(a['rag']['none_declined'])} of those no document answers; the model itself "
            "did not learn to decline.")
    if (a["rag"]["answered"] or 0) < 0.5:
        said += (" A 1M-parameter model pretrained on 128-token windows, finetuned for "
                 f"{r['steps']} steps on ~450-token prompts, mostly learnt the answer's form, not to "
                 "copy a new name from the passage; more steps, or a model pretrained on longer "
                 "windows, are the remedy.")
    if a["closed"]["world_answered"] < b["closed"]["world_answered"] - 0.05:
        said += (f" World questions answered fell from {_pct(b['closed']['world_answered'])} to "
                 f"{_pct(a['closed']['world_answered'])} (forgetting).")
    return said


def retrieval_report(r: dict) -> list[str]:
    """report.md's section."""
    n, t = r["n"], r["n_train"]
    cell = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return [
        "## Retrieval: answering from documents", "",
        f"{n['documents']} small documents (`retrieval/docs/`) describe {n['people']} people and "
        f"{n['towns']} towns the model never saw, in 繁體, 简体 and English; `jielong.rag` indexes "
        f"them (BM25 over jieba words, 繁 folded to 简). {n['answerable']} questions ask their "
        "facts closed-book (the question alone) and with documents as `jielong rag ask` does: "
        f"the best passage (k = {r['k']}: the prompt's instruction and quoted-data scaffold take "
        "~340 of the model's 512 tokens), or \"I don't know\" without asking the model when no "
        f"passage covers the question. {n['none']} more ask what no document says (best friends, "
        "people nobody wrote about). The aligned assistant was then finetuned "
        f"{r['steps']} steps (into `retrieval/model/`) on {t['rag']} RAG chats about made-up "
        "people in the world's words (answer from the passage; decline when it does not say) and "
        f"{t['qa']} plain chats; the new facts were never trained on. A confident wrong answer "
        "names another value of the question's kind (another town, another animal) without the "
        "right one and without declining.", "",
        "| | closed-book, before | after | with documents, before | after |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {label.strip() if not label.startswith('  ') else '&nbsp;&nbsp;' + label.strip()} | "
          + " | ".join(cells) + " |" for label, cells in rows_of(r)], "",
        lesson(r), "",
        "| question | closed-book (after) | with documents, before | with documents, after |",
        "| --- | --- | --- | --- |",
        *[f"| {cell(q)} | {cell(c)} | {cell(x)} | {cell(y)} |" for q, c, x, y in r["examples"]], "",
    ]
