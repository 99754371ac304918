"""`jielong prompt`: prompting techniques measured on the same questions — accuracy, and the
tokens each spends (every prompt read and every token written, over all its calls).

Run as:
    jielong prompt runs/demo/assistant --questions multihop,demo --out runs/prompt/demo
    jielong prompt runs/demo/assistant --questions ../shared/data/cmmlu-dev --limit 5 --techniques zero,few,cot --out runs/prompt/cmmlu

Techniques (each a conversation through the model's chat template, greedy, in the question's
own language: Traditional Chinese, Simplified Chinese or English):
- zero      the question alone;
- few       k solved examples from a pool (same language, never the question itself) as
            earlier turns, then the question (Brown et al. 2020, "in-context learning");
- cot       the question and "Let's think step by step" / 讓我們一步一步想 (Kojima et al.
            2022's zero-shot chain of thought), the answer read from the reply's last line;
- decompose the model first lists simpler sub-questions, answers each with the earlier
            sub-questions and answers in context, then answers the whole question with all of
            them in context (least-to-most prompting, Zhou et al. 2023);
- reflect   answer, critique the answer, revise it (the Self-Refine loop, Madaan et al. 2023:
            feedback, then a revision with the feedback in context).

Question sets (--questions, comma-separated):
- demo      the demo world's held-out one-fact questions (`jielong.demo.tasks.qa_conversations`);
            few-shot examples from its SFT chats;
- multihop  the demo world's held-out two-fact questions (阿明的朋友住在哪個城市？,
            `multihop_conversations`); few-shot examples from its training chats, answered directly;
- cmmlu, ceval, mmlu, tmmluplus (DATA/NAME) or a folder of benchmark CSVs (such as
            ../shared/data/cmmlu-dev): multiple choice read by `jielong.eval.benchmarks`, asked as
            the generation mode of `jielong eval` asks them, the letter read with `choice_letter`;
            few-shot examples from the subject's dev split (never the question itself).

Reading the answer: from the final reply's last non-blank line (so a chain of thought may
reason above it), else from the whole reply: a letter for multiple choice; otherwise the
candidate value named last (a name the question itself holds, such as its subject, is not
a candidate; English candidates match whole words). No candidate: wrong, counted `no_answer`.
A prompt longer than the model's context less max_new_tokens loses its start (`truncated`).

Writes OUT/results.json (per question set and technique: n, accuracy, per language, tokens:
prompt, generated and total, per question, calls, no_answer, truncated), OUT/report.md (the
table) and OUT/samples.jsonl (each question's calls, replies, answer read and whether right).
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from jielong.demo.tasks import (
    QAItem,
    multihop_conversations,
    qa_conversations,
    script_chars,
    script_of,
    world_for,
)
from jielong.errors import UserError
from jielong.eval.answers import choice_letter, strip_thinking
from jielong.eval.benchmarks import LETTERS, description, pick_shots, tasks_from
from jielong.eval.generation import CHOICE_LANG, choice_message
from jielong.files import write_json, write_text
from jielong.hub import open_model, stop_ids
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.runtime import pick_device

TECHNIQUES = ("zero", "few", "cot", "decompose", "reflect")
DEMO_SETS = ("demo", "multihop")
COT = {"en": "Let's think step by step, and give the answer on the last line.",
       "zh-Hant": "讓我們一步一步想，最後一行寫出答案。",
       "zh-Hans": "让我们一步一步想，最后一行写出答案。"}
PLAN = {"en": "Break this question into simpler questions, one per line, without answering them: {q}",
        "zh-Hant": "把這個問題拆成幾個更簡單的小問題，每行一個，先不要回答：{q}",
        "zh-Hans": "把这个问题拆成几个更简单的小问题，每行一个，先不要回答：{q}"}
CRITIQUE = {"en": "Check your answer: is it right? Point out any mistake.",
            "zh-Hant": "檢查你的答案：對不對？指出錯誤。",
            "zh-Hans": "检查你的答案：对不对？指出错误。"}
REVISE = {"en": "Now give your final answer to the question.",
          "zh-Hant": "現在給出這個問題的最終答案。",
          "zh-Hans": "现在给出这个问题的最终答案。"}
MAX_SUBQUESTIONS = 3
# "1. ", "2) ", "- ", "• ", "(1)", "第一步：", "Q1:" before a sub-question: dropped
ENUMERATION = re.compile(r"^\s*(?:[-*•]|\(\d+\)|\d+[.)、:：]|第[一二三四五六七八九十]+[步個个]?[:：、.]?|"
                         r"(?:sub-?)?q(?:uestion)?\s*\d*\s*[:：.])\s*", re.I)


@dataclass
class Item:
    """One question as every technique asks it."""

    question: str         # the user's message
    lang: str             # "en" | "zh-Hant" | "zh-Hans": the language of the technique's phrases
    answers: list[str]    # what counts as right (a value in either Chinese script, or a letter)
    choices: list[str]    # what an answer is read among (candidate values, or letters)
    where: str            # an id (a file:line, or set:index)
    group: str = ""       # a fact kind, chain or subject
    letters: bool = False  # multiple choice: the answer is a letter
    shots: list[tuple[str, str]] = field(default_factory=list)  # its own solved examples, if any


@dataclass
class QuestionSet:
    name: str
    items: list[Item]
    pool: list[tuple[str, str, str]] = field(default_factory=list)  # (question, reply, lang) for few-shot


@dataclass
class Call:
    messages: list[dict]
    reply: str = ""
    prompt_tokens: int = 0
    new_tokens: int = 0
    truncated: bool = False


# ----------------------------------------------------------------------------- question sets

def from_qa(name: str, items: list[QAItem], chats: list[dict], lang_of) -> QuestionSet:
    """A demo question set: `QAItem`s, and the first question and answer of each chat (sums
    left out) as the few-shot pool; `lang_of(text)` says which language a pool question is in."""
    both: dict[str, list[str]] = {}  # a kind's values in both Chinese scripts: a reply may use either
    for q in items:
        if q.lang != "en":
            both.setdefault(q.kind, []).extend(q.choices)
    out = []
    for i, q in enumerate(items):
        answers = [q.answer_value] + ([q.alt_value] if q.alt_value else [])
        choices = q.choices if q.lang == "en" else list(dict.fromkeys(both[q.kind]))
        out.append(Item(q.messages_without_answer[-1]["content"], q.lang, answers, choices,
                        f"{name}:{i}", q.kind))
    pool = []
    for r in chats:
        turns = [m["content"] for m in r["messages"] if m["role"] != "system"]
        if not any(c.isdigit() for c in turns[0]):
            pool.append((turns[0], turns[1], lang_of(turns[0])))
    return QuestionSet(name, out, pool)


def demo_set(name: str, seed: int = 0) -> QuestionSet:
    """`demo` (one fact) or `multihop` (two facts): the demo world's held-out questions."""
    world = world_for(seed)
    chars = script_chars(world)

    def lang_of(text: str) -> str:
        return "en" if text.isascii() else script_of(text, chars) or "zh-Hant"

    if name == "demo":
        qa = qa_conversations(world, seed=seed)
        return from_qa(name, [q for q in qa.test if q.kind not in ("add", "sub")], qa.train, lang_of)
    hops = multihop_conversations(world, seed=seed)
    return from_qa(name, hops.test, hops.train, lang_of)


def choice_sets(names: str, data: str, shots: int, limit: int | None) -> list[QuestionSet]:
    """Multiple-choice benchmarks as question sets: each question with its subject's
    description, options and "answer with the letter", and its own solved examples."""
    out = []
    for task in tasks_from(names, data):
        items = []
        for s in task.subjects:
            head = description(task.kind, s.title)
            for q in s.questions[:limit]:
                letters = list(LETTERS[:len(q.choices)])
                items.append(Item(head + choice_message(task.kind, q), CHOICE_LANG[task.kind],
                                  [LETTERS[q.answer]], letters, q.where, s.name, letters=True,
                                  shots=[(choice_message(task.kind, x), LETTERS[x.answer])
                                         for x in pick_shots(s, q, shots)]))
        out.append(QuestionSet(task.name, items))
    return out


def question_sets(names: str, data: str, shots: int, limit: int | None, seed: int = 0) -> list[QuestionSet]:
    parts = [n.strip() for n in names.split(",") if n.strip()]
    if not parts:
        raise UserError(f"--questions {names!r}: name demo, multihop, cmmlu … or a folder of CSVs")
    sets = []
    for n in parts:
        if n in DEMO_SETS:
            qs = demo_set(n, seed)
            qs.items = qs.items[:limit] if limit else qs.items
            sets.append(qs)
        else:
            sets += choice_sets(n, data, shots, limit)
    return sets


def few_shots(qs: QuestionSet, item: Item, k: int, seed: int = 0) -> list[tuple[str, str]]:
    """k solved (question, reply) examples for `item`: its own (a benchmark's dev split), else
    drawn from the pool in its language, never its own question."""
    if item.letters or not qs.pool:
        return item.shots[:k]
    pool = [(q, a) for q, a, lang in qs.pool if lang == item.lang and q != item.question]
    return random.Random(f"{seed}:{item.where}").sample(pool, min(k, len(pool)))


# ----------------------------------------------------------------------------- the techniques

def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def turns(pairs: list[tuple[str, str]]) -> list[dict]:
    return [m for q, a in pairs for m in (user(q), assistant(a))]


def sub_questions(plan: str) -> list[str]:
    """The sub-questions a plan lists, one a line, numbering and bullets dropped (at most
    MAX_SUBQUESTIONS)."""
    lines = (ENUMERATION.sub("", x, count=1).strip() for x in strip_thinking(plan).splitlines())
    return [x for x in lines if x][:MAX_SUBQUESTIONS]


def run_technique(generate, qs: QuestionSet, technique: str, k: int = 2, seed: int = 0) -> list[list[Call]]:
    """Each item's calls under `technique`, in order; the last one's reply is its answer.
    `generate(calls)` fills each call's reply and token counts (all calls of a round at once)."""
    items = qs.items
    if technique == "zero":
        calls = [[Call([user(it.question)])] for it in items]
        generate([c[0] for c in calls])
    elif technique == "few":
        calls = [[Call(turns(few_shots(qs, it, k, seed)) + [user(it.question)])] for it in items]
        generate([c[0] for c in calls])
    elif technique == "cot":
        calls = [[Call([user(f"{it.question}\n{COT[it.lang]}")])] for it in items]
        generate([c[0] for c in calls])
    elif technique == "decompose":
        calls = [[Call([user(PLAN[it.lang].format(q=it.question))])] for it in items]
        generate([c[0] for c in calls])
        subs = [sub_questions(c[0].reply) for c in calls]
        solved: list[list[tuple[str, str]]] = [[] for _ in items]
        for j in range(MAX_SUBQUESTIONS):  # least to most: earlier answers in context
            now = [(i, Call(turns(solved[i]) + [user(s[j])])) for i, s in enumerate(subs) if j < len(s)]
            generate([c for _, c in now])
            for i, c in now:
                calls[i].append(c)
                solved[i].append((subs[i][j], c.reply))
        final = [Call(turns(solved[i]) + [user(it.question)]) for i, it in enumerate(items)]
        generate(final)
        for c, f in zip(calls, final, strict=True):
            c.append(f)
    elif technique == "reflect":
        first = [Call([user(it.question)]) for it in items]
        generate(first)
        critique = [Call(f.messages + [assistant(f.reply), user(CRITIQUE[it.lang])])
                    for f, it in zip(first, items, strict=True)]
        generate(critique)
        revise = [Call(c.messages + [assistant(c.reply), user(REVISE[it.lang])])
                  for c, it in zip(critique, items, strict=True)]
        generate(revise)
        calls = [list(x) for x in zip(first, critique, revise, strict=True)]
    else:
        raise UserError(f"unknown technique {technique!r}; use some of {', '.join(TECHNIQUES)}")
    return calls


# ----------------------------------------------------------------------------- reading answers

def named(text: str, candidates: list[str], question: str = "") -> str | None:
    """The candidate a text names last (the longest of those ending at the same place);
    candidates the question itself holds are skipped; English ones match whole words."""
    best = None
    for c in candidates:
        if not c or c in question:
            continue
        pattern = rf"(?<![A-Za-z]){re.escape(c)}(?![A-Za-z])" if c.isascii() else re.escape(c)
        hits = [m.end() for m in re.finditer(pattern, text, re.I if c.isascii() else 0)]
        if hits and (best is None or (hits[-1], len(c)) > best[0]):
            best = ((hits[-1], len(c)), c)
    return best[1] if best else None


def read_answer(item: Item, reply: str) -> str | None:
    """The answer a reply gives: read from its last non-blank line, else from all of it."""
    text = strip_thinking(reply)
    lines = [x for x in text.splitlines() if x.strip()]
    for part in ([lines[-1]] if lines else []) + [text]:
        got = (choice_letter(part, len(item.choices)) if item.letters
               else named(part, item.choices, item.question))
        if got is not None:
            return got
    return None


# ----------------------------------------------------------------------------- generating

class Generator:
    """Greedy replies to many conversations at once, through the chat template, counting the
    tokens read (the prompt, after any cut) and written (without the stop token)."""

    def __init__(self, net, tok, stops: set[int], max_new_tokens: int, batch_size: int = 32):
        if not tok.config.get("chat_template"):
            raise UserError("the techniques are conversations, and this model's tokenizer has no "
                            "chat_template; use a chat model, or add a template to tokenizer_config.json")
        n_ctx = net.config.max_position_embeddings
        if max_new_tokens >= n_ctx:
            raise UserError(f"--max_new_tokens {max_new_tokens}: the model's context is {n_ctx} "
                            "tokens; ask for fewer")
        self.net, self.tok, self.stops, self.batch_size = net, tok, stops, batch_size
        self.max_new, self.room = max_new_tokens, n_ctx - max_new_tokens
        self.bar = None

    @torch.no_grad()
    def __call__(self, calls: list[Call]) -> None:
        prompts = []
        for c in calls:
            ids = self.tok.encode_chat(c.messages, add_generation_prompt=True)[0]
            c.truncated = len(ids) > self.room
            prompts.append(ids[-self.room:])
            c.prompt_tokens = len(prompts[-1])
        params = SamplingParams(max_tokens=self.max_new, temperature=0.0)
        order = sorted(range(len(calls)), key=lambda i: len(prompts[i]))  # like with like
        for b in range(0, len(order), self.batch_size):
            batch = order[b:b + self.batch_size]
            for i, ids in zip(batch, generate_ids(self.net, [prompts[i] for i in batch], params, self.stops),
                              strict=True):
                calls[i].reply = self.tok.decode(ids, skip_special_tokens=True).strip()
                calls[i].new_tokens = len(ids)
            if self.bar is not None:
                self.bar.update(len(batch))


# ----------------------------------------------------------------------------- scoring

def score(qs: QuestionSet, technique: str, calls: list[list[Call]]) -> tuple[dict, list[dict]]:
    """(the technique's numbers on the set, one samples row per question)."""
    rows, by_lang = [], {}
    for it, cs in zip(qs.items, calls, strict=True):
        pred = read_answer(it, cs[-1].reply)
        ok = pred is not None and pred in it.answers
        by_lang.setdefault(it.lang, []).append(ok)
        rows.append({"set": qs.name, "technique": technique, "where": it.where, "lang": it.lang,
                     "group": it.group, "question": it.question, "answers": it.answers, "pred": pred,
                     "correct": int(ok), "calls": [{"messages": c.messages, "reply": c.reply,
                                                    "prompt_tokens": c.prompt_tokens,
                                                    "new_tokens": c.new_tokens} for c in cs]})
    n = len(rows)
    prompt = sum(c.prompt_tokens for cs in calls for c in cs)
    new = sum(c.new_tokens for cs in calls for c in cs)
    return {"n": n, "accuracy": sum(r["correct"] for r in rows) / n,
            "by_lang": {k: sum(v) / len(v) for k, v in by_lang.items()},
            "prompt_tokens": prompt, "generated_tokens": new, "total_tokens": prompt + new,
            "tokens_per_question": (prompt + new) / n,
            "calls": sum(len(cs) for cs in calls),
            "no_answer": sum(r["pred"] is None for r in rows),
            "truncated": sum(c.truncated for cs in calls for c in cs)}, rows


def report_md(results: dict) -> str:
    lines = [f"# Prompting techniques: {results['model']}", ""]
    lines += ["| questions | technique | n | accuracy | tokens / question | prompt | generated | "
              "calls | no answer | truncated |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, by in results["sets"].items():
        for t, r in by.items():
            lines.append(f"| {name} | {t} | {r['n']} | {r['accuracy']:.3f} | {r['tokens_per_question']:.1f} | "
                         f"{r['prompt_tokens']} | {r['generated_tokens']} | {r['calls']} | "
                         f"{r['no_answer']} | {r['truncated']} |")
    lines += ["", f"Greedy, at most {results['max_new_tokens']} new tokens a call; few-shot: "
              f"{results['shots']} examples. Tokens: every prompt token read and every token "
              "written, over all of a technique's calls. Each question's calls: samples.jsonl.", ""]
    return "\n".join(lines)


def prompt_cmd(
    model: str,
    questions: str = "multihop,demo",
    techniques: str = ",".join(TECHNIQUES),
    shots: int = 2,
    data: str = "data",
    limit: int | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    adapter: list[str] | None = None,
    out: str = "runs/prompt/run",
) -> dict:
    """Ask the same questions under each prompting technique; report accuracy and tokens.

    Techniques: zero (the question), few (k solved examples first), cot (think step by
    step; the answer on the last line), decompose (sub-questions planned and answered, then
    the question), reflect (answer, critique, revise). See jielong.eval.prompting.

    Args:
        model: model folder or Hugging Face hub id (a chat model: its tokenizer has a template).
        questions: comma-separated: demo (the demo world's one-fact questions), multihop (its
            two-fact questions), cmmlu, ceval, mmlu, tmmluplus (DATA/NAME) or a folder of CSVs.
        techniques: comma-separated, of zero, few, cot, decompose, reflect.
        shots: examples the few technique shows.
        data: the folder holding cmmlu/ … for named benchmarks.
        limit: at most this many questions per demo set or benchmark subject.
        max_new_tokens: longest reply of each call.
        batch_size: conversations generated together.
        seed: the demo world's seed, and the few-shot draw's.
        device: auto, cpu, cuda, mps.
        dtype: auto, float32, bfloat16, float16.
        adapter: LoRA adapter folder(s) on the model, NAME=DIR or DIR; the first is used.
        out: where results.json, report.md and samples.jsonl go.
    """
    chosen = [t.strip() for t in techniques.split(",") if t.strip()]
    bad = [t for t in chosen if t not in TECHNIQUES]
    if bad or not chosen:
        raise UserError(f"--techniques {techniques!r}: use some of {', '.join(TECHNIQUES)}")
    if shots < 0 or (limit is not None and limit < 1) or max_new_tokens < 1 or batch_size < 1:
        raise UserError(f"--shots {shots} --limit {limit} --max_new_tokens {max_new_tokens} "
                        f"--batch_size {batch_size}: shots 0 or more, the others 1 or more")
    sets = question_sets(questions, data, shots, limit, seed)  # every file read before the model loads
    net, tok, gen_config = open_model(model, device=pick_device(device), dtype=dtype, adapters=adapter)
    gen = Generator(net, tok, stop_ids(tok, gen_config, net.config.eos_token_id), max_new_tokens, batch_size)
    results = {"model": str(model), "shots": shots, "max_new_tokens": max_new_tokens, "seed": seed, "sets": {}}
    samples: list[dict] = []
    for qs in sets:
        results["sets"][qs.name] = {}
        for t in chosen:
            start = time.time()
            gen.bar = tqdm(desc=f"{qs.name} {t}", unit=" call", dynamic_ncols=True)
            calls = run_technique(gen, qs, t, shots, seed)
            gen.bar.close()
            r, rows = score(qs, t, calls)
            results["sets"][qs.name][t] = {**r, "seconds": round(time.time() - start, 2)}
            samples += rows
            print(f"{qs.name} {t}: accuracy {r['accuracy']:.3f}, {r['tokens_per_question']:.0f} tokens "
                  f"a question ({r['n']} questions)")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    write_text(out_dir / "report.md", report_md(results))
    write_text(out_dir / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in samples))
    print(f"results: {out_dir / 'results.json'}  report: {out_dir / 'report.md'}")
    return results
