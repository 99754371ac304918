"""Generation tasks run and scored for `jielong eval`: the model writes a reply to each question
(greedy, continuously batched on `jielong.infer.engine`), the answer is read out of the reply
(`jielong.eval.answers`) and scored.

Run as:
    jielong eval Qwen/Qwen2.5-0.5B-Instruct --tasks drcd,cmrc2018 --data ../shared/data --limit 20 --out runs/eval/qa
    jielong eval Qwen/Qwen2.5-0.5B-Instruct --tasks cmmlu --mode generate --data data --out runs/eval/gen

Tasks (their names and files: `jielong.eval.gentasks`) and what each reports:
- extractive QA (`drcd`, `cmrc2018`, `squad:FILE`): EM and F1, 0–100, as CMRC 2018's official
  script computes them (`jielong.eval.metrics`), on the reply's first line;
- translation (`translate:FILE`): corpus BLEU (sacrebleu, its "zh" tokenizer for a Chinese
  target, "13a" otherwise) and chrF, 0–100; each row's own chrF in samples.jsonl;
- summarization (`summarize:FILE`): ROUGE-L F, 0–100, over characters for Chinese (word-level
  ROUGE sees a Chinese sentence as one word and scores 0) and over words for English;
- classification (`classify:FILE`): accuracy and macro-F1 (0–1) over the file's labels, the
  label read from the reply (`pick_label`); a reply naming none is wrong, counted `no_answer`;
- closed-book QA (`closedbook:FILE`): accuracy, refusal rate, and hallucination rate (answered
  and wrong, over all questions), as `jielong.eval.qa.closed_book` sorts the replies;
- multiple choice answered by generation (`--mode generate` with cmmlu, ceval, mmlu, tmmluplus
  or a folder of CSVs): the question, its options and "answer with the letter" as the user's
  message (solved --shots as earlier turns, the first led by the task's description line);
  acc (0–1) over all questions and per subject, an unreadable reply wrong and counted
  `no_answer`. Without a chat template the prompt is lm-eval's, the same as loglikelihood
  mode's, and the letter is read from what the model writes after "答案：" / "Answer:".

Prompts go through the model's chat template when its tokenizer has one (`--chat auto`, the
default; `--chat off` for a base model whose tokenizer carries one anyway) and stop at its end
of turn; plain prompts stop at a line break. A prompt longer than the model's context less
--max_new_tokens loses its start, as lm-evaluation-harness's generate_until cuts it; how many
were cut is `truncated`, and `hit_max_new_tokens` counts replies that ran out of tokens.
"""

from __future__ import annotations

import queue
import time

from tqdm import tqdm

from jielong.errors import UserError
from jielong.eval.answers import choice_letter, first_line, pick_label, whole_reply
from jielong.eval.benchmarks import LETTERS, Task, context, description, doc_to_text, pick_shots
from jielong.eval.classification import classification_report
from jielong.eval.gentasks import MAX_NEW_TOKENS, GenItem, GenTask, messages, plain_prompt
from jielong.eval.metrics import (
    corpus_bleu,
    corpus_chrf,
    exact_match,
    is_chinese,
    qa_f1,
    rouge_l,
    sentence_chrf,
)
from jielong.eval.qa import closed_book
from jielong.infer.engine import Engine
from jielong.infer.sampling import SamplingParams
from jielong.lora import active_adapter

CHOICE_LANG = {"cmmlu": "zh-Hans", "ceval": "zh-Hans", "tmmluplus": "zh-Hant", "mmlu": "en"}
CHOICE_ASK = {"zh-Hans": "请只回答正确选项的字母。", "zh-Hant": "請只回答正確選項的字母。",
              "en": "Answer with the letter of the correct option only."}
NO_ANSWER = "(no answer)"
HUNDREDS = {"em", "f1", "bleu", "chrf", "rouge_l"}  # scores on a 0–100 scale
# What report.md and the summary line show for each kind: (results key, name).
HEADLINE = {
    "choice": [("acc", "acc"), ("no_answer_rate", "no answer")],
    "squad": [("em", "EM"), ("f1", "F1")],
    "translate": [("bleu", "BLEU"), ("chrf", "chrF")],
    "summarize": [("rouge_l", "ROUGE-L")],
    "classify": [("accuracy", "accuracy"), ("macro_f1", "macro-F1")],
    "closedbook": [("accuracy", "accuracy"), ("refusal_rate", "refused"),
                   ("hallucination_rate", "hallucination")],
}


# ----------------------------------------------------------------------------- multiple choice

def choice_message(kind: str, q) -> str:
    """A question, its options and the instruction to answer with the letter."""
    cue = "答案：" if kind in ("cmmlu", "ceval") else "Answer:"
    return doc_to_text(kind, q).removesuffix(cue) + CHOICE_ASK[CHOICE_LANG[kind]]


def choice_tasks(tasks: list[Task], shots: int, limit: int | None = None) -> list[GenTask]:
    """Multiple-choice benchmarks as generation tasks (at most `limit` questions a subject)."""
    out = []
    for task in tasks:
        items = []
        for s in task.subjects:
            head = description(task.kind, s.title)
            for q in s.questions[:limit]:
                turns = [(choice_message(task.kind, x), LETTERS[x.answer])
                         for x in pick_shots(s, q, shots)]
                final = choice_message(task.kind, q)
                if turns:
                    turns[0] = (head + turns[0][0], turns[0][1])
                else:
                    final = head + final
                items.append(GenItem(q.where, final, "", [LETTERS[q.answer]], turns,
                                     plain=context(task.kind, s, q, shots), subject=s.name,
                                     letters=LETTERS[:len(q.choices)]))
        out.append(GenTask(task.name, "choice", task.path, CHOICE_LANG[task.kind], items,
                           categories={s.name: s.categories for s in task.subjects}))
    return out


# ----------------------------------------------------------------------------- generating

def wants_chat(tok, chat: str) -> bool:
    has = bool(tok.config.get("chat_template"))
    if chat == "on" and not has:
        raise UserError("--chat on: this model's tokenizer has no chat_template; use --chat off "
                        "(plain completion prompts) or a tokenizer with a template")
    return has if chat == "auto" else chat == "on"


def render(tok, item: GenItem, chat: bool) -> list[int]:
    """The prompt's token ids: the chat template's, or the plain text's with what the
    tokenizer itself adds (a Llama-style BOS), as transformers encodes a prompt."""
    if chat:
        return tok.encode_chat(messages(item), add_generation_prompt=True)[0]
    return tok.backend.encode(plain_prompt(item), add_special_tokens=True).ids


def generate_replies(net, tok, prompts: list[list[int]], max_new: int, stop_ids: set[int],
                     stop: list[str], slots: int, desc: str) -> tuple[list[str], dict]:
    """Greedy replies to every prompt, decoded together on the engine; (replies, counts of
    prompts truncated and of replies that hit max_new)."""
    n_ctx = net.config.max_position_embeddings
    if max_new >= n_ctx:
        raise UserError(f"--max_new_tokens {max_new}: the model's context is {n_ctx} tokens; "
                        "ask for fewer new tokens")
    room = n_ctx - max_new
    truncated = sum(len(p) > room for p in prompts)
    prompts = [p[-room:] for p in prompts]
    params = SamplingParams(max_tokens=max_new, temperature=0.0, stop=stop)
    adapter = active_adapter(net)  # the engine runs each request on the adapter it names
    engine = Engine(net, tok, stop_ids=stop_ids, slots=max(1, min(slots, len(prompts))),
                    context=max(map(len, prompts)) + max_new).start()
    finished: queue.SimpleQueue = queue.SimpleQueue()
    replies: list[str] = [""] * len(prompts)
    hit = 0
    try:
        for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i])):  # like with like
            engine.submit(prompts[i], params, adapter,
                          on_event=lambda e, i=i: finished.put((i, e)) if e.finish_reason else None)
        for _ in tqdm(range(len(prompts)), desc=desc, unit=" q", dynamic_ncols=True):
            i, e = finished.get()
            if e.finish_reason == "error":
                raise RuntimeError(f"generation failed: {e.error}")
            replies[i] = e.request.text
            hit += e.finish_reason == "length"
    finally:
        engine.close()
    return replies, {"truncated": truncated, "hit_max_new_tokens": hit}


# ----------------------------------------------------------------------------- scoring

def answer_of(task: GenTask, item: GenItem, reply: str, chat: bool):
    """What is scored from a reply: a letter, a label, a span or the text (None: no answer).
    A plain prompt's reply is its first line; a chat reply is read whole, but for a span."""
    text = reply if chat else first_line(reply)
    if task.kind == "choice":
        return choice_letter(text, len(item.letters))
    if task.kind == "classify":
        return pick_label(text, task.labels)
    if task.kind == "squad":
        return first_line(reply)
    return whole_reply(text)


def score_choice(task: GenTask, preds: list, rows: list[dict]) -> dict:
    by_subject: dict[str, list[tuple[int, bool]]] = {}
    for it, p, row in zip(task.items, preds, rows, strict=True):
        row.update(subject=it.subject, answer=it.answers[0], acc=int(p == it.answers[0]))
        by_subject.setdefault(it.subject, []).append((row["acc"], p is None))
    subjects = {s: {"n": len(v), "acc": sum(a for a, _ in v) / len(v),
                    "no_answer": sum(b for _, b in v)} for s, v in by_subject.items()}
    categories: dict[str, list[str]] = {}
    for s in subjects:
        for c in task.categories.get(s, []):
            categories.setdefault(c, []).append(s)

    def group(names: list[str]) -> dict:
        n = sum(subjects[s]["n"] for s in names)
        return {"subjects": len(names), "n": n,
                "acc": sum(subjects[s]["acc"] * subjects[s]["n"] for s in names) / n}

    missing = sum(p is None for p in preds)
    return {"acc": sum(r["acc"] for r in rows) / len(rows),
            "acc_macro": sum(v["acc"] for v in subjects.values()) / len(subjects),
            "no_answer": missing, "no_answer_rate": missing / len(rows),
            "categories": {c: group(v) for c, v in categories.items()}, "subjects": subjects}


def score_squad(task: GenTask, preds: list, rows: list[dict]) -> dict:
    for it, p, row in zip(task.items, preds, rows, strict=True):
        row.update(answers=it.answers, em=exact_match(p, it.answers), f1=qa_f1(p, it.answers))
    return {"em": 100 * sum(r["em"] for r in rows) / len(rows),
            "f1": 100 * sum(r["f1"] for r in rows) / len(rows)}


def score_translate(task: GenTask, preds: list, rows: list[dict]) -> dict:
    refs = [it.answers[0] for it in task.items]
    for ref, p, row in zip(refs, preds, rows, strict=True):
        row.update(reference=ref, chrf=sentence_chrf(p, ref))
    return {"bleu": corpus_bleu(preds, refs), "chrf": corpus_chrf(preds, refs),
            "bleu_tokenize": "zh" if is_chinese(refs) else "13a", "direction": task.direction}


def score_summarize(task: GenTask, preds: list, rows: list[dict]) -> dict:
    refs = [it.answers[0] for it in task.items]
    for ref, p, row in zip(refs, preds, rows, strict=True):
        row.update(reference=ref, rouge_l=rouge_l(p, ref))
    return {"rouge_l": 100 * sum(r["rouge_l"] for r in rows) / len(rows),
            "rouge_over": "characters" if is_chinese(refs) else "words"}


def score_classify(task: GenTask, preds: list, rows: list[dict]) -> dict:
    """Accuracy, and macro-F1 over the file's labels (a reply naming none is a class of its
    own in the confusion matrix, left out of the macro average)."""
    gold = [it.answers[0] for it in task.items]
    for y, p, row in zip(gold, preds, rows, strict=True):
        row.update(label=y, correct=int(p == y))
    missing = sum(p is None for p in preds)
    labels = task.labels + ([NO_ANSWER] if missing else [])
    report = classification_report(gold, [NO_ANSWER if p is None else p for p in preds], labels)
    per_class = {k: v for k, v in report["per_class"].items() if k != NO_ANSWER}
    return {"accuracy": report["accuracy"],
            "macro_f1": sum(v["f1"] for v in per_class.values()) / len(per_class),
            "no_answer": missing, "labels": task.labels, "per_class": per_class,
            "confusion": report["confusion"]}


def score_closedbook(task: GenTask, preds: list, rows: list[dict]) -> dict:
    for it, p, row in zip(task.items, preds, rows, strict=True):
        one = closed_book([p], [it.answers])
        row.update(answers=it.answers,
                   verdict="correct" if one.correct else "refused" if one.refused else "wrong")
    r = closed_book(preds, [it.answers for it in task.items])
    return {"accuracy": r.accuracy, "refusal_rate": r.refusal_rate,
            "hallucination_rate": r.hallucination_rate, "correct": r.correct, "refused": r.refused,
            "wrong": r.wrong}


SCORERS = {"choice": score_choice, "squad": score_squad, "translate": score_translate,
           "summarize": score_summarize, "classify": score_classify, "closedbook": score_closedbook}


def score(task: GenTask, preds: list, rows: list[dict]) -> dict:
    """The task's scores from its answers; each row gets its own score (what samples.jsonl
    holds, so the task's score can be recomputed from it)."""
    return SCORERS[task.kind](task, preds, rows)


def run_generation(net, tok, stop_ids: set[int], tasks: list[GenTask], chat: str = "auto",
                   max_new_tokens: int | None = None, slots: int = 32,
                   limit: int | None = None) -> tuple[dict, list[dict]]:
    """({task name: its results}, the samples.jsonl rows: each reply, its answer and score)."""
    use_chat = wants_chat(tok, chat)
    results, samples = {}, []
    for task in tasks:
        start = time.time()
        new = max_new_tokens or MAX_NEW_TOKENS[task.kind]
        prompts = [render(tok, it, use_chat) for it in task.items]
        replies, counts = generate_replies(net, tok, prompts, new, stop_ids,
                                           [] if use_chat else ["\n"], slots, task.name)
        preds = [answer_of(task, it, r, use_chat) for it, r in zip(task.items, replies, strict=True)]
        rows = [{"task": task.name, "kind": task.kind, "where": it.where, "reply": r, "pred": p}
                for it, r, p in zip(task.items, replies, preds, strict=True)]
        scores = score(task, preds, rows)
        results[task.name] = {"kind": task.kind, "path": str(task.path), "lang": task.lang,
                              "prompt": "chat" if use_chat else "plain", "n": len(task.items),
                              "limit": limit, "max_new_tokens": new, **counts, **scores,
                              "example_prompt": tok.decode(prompts[0]),
                              "seconds": round(time.time() - start, 2)}
        samples += rows
    return results, samples


# ----------------------------------------------------------------------------- reporting

def headline(t: dict) -> str:
    """"EM 61.20  F1 78.35" — a task's main scores."""
    return "  ".join(f"{name} {t[key]:.2f}" if key in HUNDREDS else f"{name} {t[key]:.4f}"
                     for key, name in HEADLINE[t["kind"]])


def generation_md(gen: dict) -> list[str]:
    """report.md's lines for the generation tasks."""
    if not gen:
        return []
    lines = ["", "## Generation tasks", "", "| task | kind | prompt | n | scores | truncated | "
             "hit max_new_tokens |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {t['kind']} | {t['prompt']} | {t['n']} | {headline(t)} | "
              f"{t['truncated']} | {t['hit_max_new_tokens']} |" for name, t in gen.items()]
    for name, t in gen.items():
        if t["kind"] == "choice":
            lines += ["", f"### {name} (generated)", "", "| subject | n | acc | no answer |",
                      "|---|---|---|---|"]
            lines += [f"| {s} | {r['n']} | {r['acc']:.4f} | {r['no_answer']} |"
                      for s, r in t["subjects"].items()]
        elif t["kind"] == "classify":
            lines += ["", f"### {name}", "", "| label | precision | recall | f1 | support |",
                      "|---|---|---|---|---|"]
            lines += [f"| {k} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | "
                      f"{v['support']} |" for k, v in t["per_class"].items()]
    lines += ["", "EM and F1 as CMRC 2018's script computes them (characters for Chinese); BLEU "
              "(sacrebleu, tokenizer zh for a Chinese target) and chrF; ROUGE-L over characters for "
              "Chinese: all 0–100. Accuracy, macro-F1 and the rates: 0–1. Hallucination: answered "
              "and wrong, over all questions. `no answer`: replies no answer could be read from "
              "(counted wrong). Each reply and its score: samples.jsonl."]
    return lines
