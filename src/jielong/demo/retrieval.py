"""The demo's retrieval stage (17): answering about people and places it never saw.

Eight new people and four new towns (`NEW_PEOPLE`, `NEW_TOWNS`, named with the world's own
characters so the demo tokenizer reads them a character a token) get small documents, one
per person or town and language (繁/简/English, the world's sentence templates), indexed by
jielong.rag (`build_index`, BM25 over jieba words folded to Simplified). Each held-out
question about a documented fact is asked of the aligned assistant closed-book (the question
alone) and with documents, exactly as `jielong rag ask` does it: `retrieve` (k = 1), the
coverage gate's "I don't know" when nothing relevant is found, else `fit_passages` (the
compact prompt: the model has 512 tokens) and the model's greedy reply.

Measured, closed-book and with documents:
- answered: the reply holds the right value (either Chinese script; eval.replies.contains_answer);
- confident wrong: the reply does not hold the right value, does not decline ("don't know" /
  不知道), and names another value of the same kind (a town for a where-question, an
  animal for a pet question) — an invented answer said as fact;
- declined: the reply says it does not know;
- with documents, also: the right document retrieved first (retrieval alone);
and for questions whose facts are in no document (the new people's best friends, people
nobody wrote about): declined and confident wrong (any value of the kind named).

No RAG finetuning: side runs of 100 and 300 steps of SFT on RAG chats about made-up people
(bench/RESULTS.md) did not teach this 1M-parameter model, pretrained on 128-token windows of
a world whose names it memorised, to copy a new name out of a passage (with documents 11% ->
9-12% answered) and cost it half its world answers, so the stage measures the assistant as
it is.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from jielong.checkpoint import load_model
from jielong.demo.finetune import bold, pct, share
from jielong.demo.tasks import (
    QUESTIONS,
    ZH,
    other_script,
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
)
from jielong.errors import UserError
from jielong.eval.replies import chat_replies, contains_answer
from jielong.files import write_text
from jielong.rag.answer import decline_text, fit_passages, retrieve
from jielong.rag.index import Index, build_index

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
K = 1             # passages per question (each document is one passage)
MAX_NEW = 24      # reply tokens: an answer sentence or the decline text


@dataclass
class Question:
    text: str
    lang: str
    kind: str
    value: str       # "" when no document says it
    alt: str = ""    # Chinese: the value in the other script
    subject: str = ""  # the document's file name starts with it (NAME.LANG.txt)


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
                                       f.value.say(lang), f.value.say(other_script(lang)) if lang in ZH else "",
                                       f.subject.en.lower()))
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



@torch.no_grad()
def measure(model, tok, index: Index, answerable: list[Question], none: list[Question],
            max_new: int = MAX_NEW) -> dict:
    """Closed-book and with documents: answered, confident wrong, declined (and per script);
    with documents also the right document retrieved first. Keeps the replies."""
    model.eval()
    n_ctx = model.config.max_position_embeddings
    count = lambda m: len(tok.encode_chat(m, add_generation_prompt=True)[0])  # noqa: E731
    qs = answerable + none
    replies: dict[str, list[str]] = {}
    closed = chat_replies(model, tok, [[{"role": "user", "content": q.text}] for q in qs], max_new, 64)
    replies["closed"] = [r.text for r in closed]
    rag: list[str | None] = []
    asks, found, too_long = [], [], 0
    for q in qs:
        hits = retrieve(index, q.text, k=K)
        if q.subject:
            found.append(bool(hits) and Path(hits[0].chunk.source).name.startswith(q.subject + "."))
        if hits:
            try:
                asks.append(fit_passages(count, q.text, hits, n_ctx - max_new)[1])
            except UserError:  # a tokenizer too small for even the compact prompt (the test's)
                too_long += 1
                rag.append("")
                continue
        rag.append(None if hits else decline_text(q.text))  # the gate: no model asked
    got = iter(chat_replies(model, tok, asks, max_new, 64))
    replies["rag"] = [r if r is not None else next(got).text for r in rag]
    out = {}
    for mode, texts in replies.items():
        a, z = texts[:len(answerable)], texts[len(answerable):]
        pairs = list(zip(a, answerable, strict=True))
        out[mode] = {"answered": share([right(r, q) for r, q in pairs]),
                     "by_lang": {lang: share([right(r, q) for r, q in pairs if q.lang == lang])
                                 for lang in LANGS},
                     "confident_wrong": share([confident_wrong(r, q) for r, q in pairs]),
                     "declined": share([declined(r) for r in a]),
                     "none_declined": share([declined(r) for r in z]),
                     "none_confident_wrong": share([confident_wrong(r, q) for r, q in zip(z, none, strict=True)]),
                     "replies": dict(zip([q.text for q in qs], texts, strict=True))}
    out["rag"]["found"] = share(found)
    out["rag"]["too_long"] = too_long
    return out


def retrieval_stage(run: Path, tok, device: str, max_new: int = MAX_NEW) -> dict:
    """The new people's questions asked of RUN/assistant closed-book and with their documents
    (replies of at most `max_new` tokens)."""
    print(bold("17. retrieval") + " — documents about people and places the model never saw")
    t0 = time.time()
    folder = run / "retrieval"
    facts = new_facts()
    write_documents(folder / "docs", facts)
    report = build_index([folder / "docs"], folder / "index", progress=False)
    index = Index.load(folder / "index")
    answerable, none = questions(facts)
    print(f"   {len(report.indexed)} documents about {len(NEW_PEOPLE)} new people and {len(NEW_TOWNS)} "
          f"new towns indexed; {len(answerable)} questions they answer, {len(none)} they do not")
    model = load_model(run / "assistant").to(device)
    got = measure(model, tok, index, answerable, none, max_new)
    shown = [q.text for q in answerable[:: max(1, len(answerable) // 4)][:4]] + [none[0].text]
    examples = [(t, got["closed"]["replies"][t], got["rag"]["replies"][t]) for t in shown]
    for m in got.values():
        del m["replies"]
    result = {**got, "k": K, "examples": examples, "seconds": round(time.time() - t0, 1),
              "n": {"answerable": len(answerable), "none": len(none), "documents": len(report.indexed),
                    "people": len(NEW_PEOPLE), "towns": len(NEW_TOWNS)}}
    for line in table(result):
        print("   " + line)
    return result



ROWS = (("new facts answered", "answered"), ("  繁", "zh-Hant"), ("  简", "zh-Hans"), ("  en", "en"),
        ("confident wrong answers", "confident_wrong"), ("declined", "declined"),
        ("right document retrieved first", "found"),
        ("in no document: declined", "none_declined"),
        ("in no document: confident wrong", "none_confident_wrong"))


def rows_of(r: dict) -> list[tuple[str, list[str]]]:
    """(label, [closed-book, with documents]) per measure."""
    out = []
    for label, key in ROWS:
        get = (lambda m, key=key: m["by_lang"][key]) if key in LANGS else (lambda m, key=key: m.get(key))
        out.append((label, [pct(get(r[mode])) for mode in ("closed", "rag")]))
    return out


def table(r: dict) -> list[str]:
    n = r["n"]
    lines = [f"held out: {n['answerable']} questions about new facts, {n['none']} about facts in no document",
             f"{'':34}{'closed-book':>14}{'with documents':>16}"]
    lines += [f"{label:34}{a:>14}{b:>16}" for label, (a, b) in rows_of(r)]
    if r["rag"].get("too_long"):
        lines.append(f"({r['rag']['too_long']} questions whose prompt did not fit the context even "
                     "with a cut passage: counted unanswered)")
    return lines


def lesson(r: dict) -> str:
    """What the numbers say, and only that."""
    c, g = r["closed"], r["rag"]
    said = (f"Closed-book the model can only guess: {pct(c['confident_wrong'])} of its answers about "
            f"the new people named a wrong value as fact, and {pct(c['none_confident_wrong'])} of "
            "those about what nobody wrote (the right ones it got are the chance of naming the right "
            f"pet or colour: {pct(c['answered'])}). With documents, retrieval put the right "
            f"document first for {pct(g['found'])} of the questions, and the coverage gate said "
            f"\"I don't know\" to {pct(g['none_declined'])} of the questions no document answers "
            f"(confident wrong {pct(c['none_confident_wrong'])} -> {pct(g['none_confident_wrong'])})"
            f" and to {pct(g['declined'])} of the answerable ones, whose document said it in other "
            "words (職業 where the question asks 工作).")
    if (g["answered"] or 0) <= (c["answered"] or 0):
        said += (f" But the model answered {pct(g['answered'])} with the passage in its prompt: a "
                 "1M-parameter model pretrained on 128-token windows of a world whose names it "
                 "memorised never learnt to copy a new name out of its context (RAG needs a model "
                 "that can read; a short RAG SFT did not teach it, bench/RESULTS.md).")
    return said


def retrieval_report(r: dict) -> list[str]:
    """report.md's section."""
    n = r["n"]
    cell = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return [
        "## Retrieval: answering from documents", "",
        f"{n['documents']} small documents (`retrieval/docs/`) describe {n['people']} people and "
        f"{n['towns']} towns the model never saw, in 繁體, 简体 and English; `jielong.rag` indexes "
        f"them (BM25 over jieba words, 繁 folded to 简). {n['answerable']} questions ask their "
        "facts of the aligned assistant closed-book (the question alone) and with documents as "
        f"`jielong rag ask` does: the best passage (k = {r['k']}) in the compact prompt (the model "
        "has 512 tokens), or \"I don't know\" without asking the model when no passage covers "
        f"the question. {n['none']} more ask what no document says (best friends, people nobody "
        "wrote about). A confident wrong answer names another value of the question's kind "
        "(another town, another animal) without the right one and without declining.", "",
        "| | closed-book | with documents |", "| --- | --- | --- |",
        *[f"| {label.strip() if not label.startswith('  ') else '&nbsp;&nbsp;' + label.strip()} | "
          + " | ".join(cells) + " |" for label, cells in rows_of(r)], "",
        lesson(r), "",
        "| question | closed-book | with documents |", "| --- | --- | --- |",
        *[f"| {cell(q)} | {cell(c)} | {cell(x)} |" for q, c, x in r["examples"]], "",
    ]
