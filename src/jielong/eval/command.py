"""`jielong eval`: multiple-choice benchmarks (CMMLU, C-Eval, MMLU, TMMLU+, or a folder of
your own) from local files, scored by log-likelihood as lm-evaluation-harness scores them;
and perplexity and bits per byte on held-out text (`jielong.eval.heldout`).

Run as:
    jielong eval runs/demo/model --tasks cmmlu,mmlu --data data --out runs/eval/demo
    jielong eval Qwen/Qwen2.5-0.5B --tasks cmmlu,ceval --shots 5 --limit 20 --out runs/eval/qwen
    jielong eval runs/mine/model --tasks path/to/my_exam --shots 0 --out runs/eval/mine
    jielong eval runs/demo/model --text held_out.jsonl notes/ --out runs/eval/text
    jielong eval runs/sft/model --tasks drcd,cmrc2018,translate:zh-en:news.jsonl --limit 50 --out runs/eval/gen

Writes OUT/results.json (per task: acc and acc_norm overall, per category, per subject; n,
shots, chance, model, seconds; for --text: documents, tokens, bytes, perplexity, bits per byte),
OUT/report.md (the same as tables, with charts: scores.png, each task's scores next to chance,
and TASK.png, its accuracy per category and subject) and OUT/samples.jsonl (each question's answer, choice and
log-likelihoods, each document's nll and bytes: what `jielong eval compare` pairs up).

Generation tasks (extractive QA on DRCD, CMRC 2018 or a SQuAD-style file, translation,
summarization, classification, closed-book QA) and `--mode generate` (the multiple-choice
benchmarks answered in writing) are `jielong.eval.generation`'s: their scores go under
"generate" in results.json, each reply and its score into samples.jsonl.

Speed: a subject's questions share their instructions and shots, so that shared prefix runs
once, and questions run `--batch_size` at a time after it (`jielong.eval.loglikelihood`).
On a GPU, `--dtype bfloat16` halves the memory of a float32 checkpoint (ours are saved in
float32) and speeds it up; `auto` keeps the checkpoint's own dtype there, as lm-eval's
`dtype=auto` does, so that numbers compare with its defaults. Under torchrun (`torchrun
--nproc_per_node 2 -m jielong.cli eval …`, gloo on CPUs, NCCL on GPUs) each rank scores every
world-th batch and rank 0 writes the files: the batches one process makes, so its numbers.

Averaging: a task's and a category's score is the mean over all their questions — lm-eval's
groups (`_cmmlu.yaml`, `_mmlu.yaml`, `_ceval-valid.yaml`, `_tmmluplus.yaml`) aggregate with
`weight_by_size: true`, a micro average; the mean over subjects (macro) is given beside it as
`acc_macro`. A CMMLU subject in two categories counts in both.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Literal

import torch.distributed as dist
from tqdm import tqdm

from jielong.data.readers import find_files
from jielong.errors import UserError
from jielong.eval.benchmarks import LETTERS, Task, context, continuations, tasks_from
from jielong.eval.charts import report_charts, safe
from jielong.eval.generation import choice_tasks, generation_md, headline, run_generation
from jielong.eval.gentasks import split_tasks
from jielong.eval.heldout import heldout_text
from jielong.eval.loglikelihood import (
    batches_of,
    encode_choices,
    encode_pair,
    pick,
    score_questions,
)
from jielong.files import write_json, write_text
from jielong.hub import open_model, stop_ids
from jielong.runtime import finish_distributed, init_distributed, is_main_process, pick_device


def encode_task(tok, task: Task, shots: int, limit: int | None) -> list[tuple]:
    """(subject, question, context ids, [continuation ids]) for each scored question."""
    out = []
    for subject in task.subjects:
        for q in subject.questions[:limit]:
            pairs = encode_choices(tok, context(task.kind, subject, q, shots), continuations(q))
            out.append((subject, q, pairs[0][0], [p[1] for p in pairs]))
    return out


def check_fits(tok, task: Task, items: list[tuple], shots: int, n_ctx: int) -> None:
    """Refuse, before any scoring, a prompt longer than the model's context, saying how many
    shots would fit (fewer shots give a shorter prompt: they are the first k of one list).
    The model reads the context and each continuation but its last token, as lm-eval's
    `max_length + 1`."""
    too_long = [it for it in items if len(it[2]) + max(map(len, it[3])) - 1 > n_ctx]
    if not too_long:
        return
    subject, q, ctx, conts = max(too_long, key=lambda it: len(it[2]))

    def length(s, x, k: int) -> int:
        pairs = [encode_pair(tok, context(task.kind, s, x, k), c) for c in continuations(x)]
        return len(pairs[0][0]) + max(len(c) for _, c in pairs) - 1

    fit = next((k for k in range(shots - 1, -1, -1)
                if all(length(s, x, k) <= n_ctx for s, x, _, _ in too_long)), -1)
    need = len(ctx) + max(map(len, conts)) - 1
    hint = f"{fit} shots fit: use --shots {fit}" if fit >= 0 else \
        "even 0 shots do not fit: the question alone is longer than the model's context"
    raise UserError(f"{q.where}: with {shots} shots the prompt takes {need} tokens, more than the "
                    f"model's context of {n_ctx}; {hint}")


def shares(items: list[tuple], batch_size: int, rank: int = 0, world: int = 1) -> list[tuple]:
    """(indices, batches, questions) per subject (the questions that share instructions and
    shots): which of its batches, numbered across the task, rank `rank` of `world` scores
    (batch b: rank b % world), and how many questions they hold."""
    out, first = [], 0
    for _, g in itertools.groupby(range(len(items)), key=lambda i: items[i][0].name):
        idx = list(g)
        n = batches_of(len(idx), batch_size)
        mine = {b for b in range(n) if (first + b) % world == rank}
        out.append((idx, mine, sum(min(batch_size, len(idx) - b * batch_size) for b in mine)))
        first += n
    return out


def score_task(net, items: list[tuple], batch_size: int, bar=None, rank: int = 0,
               world: int = 1) -> list[list[float]]:
    """Each question's choice log-likelihoods, a subject's questions scored together (their
    shared prefix run once). Under torchrun each rank scores its share of the batches and
    every rank gathers all; the batches are the ones one process makes, so are the numbers.
    `bar` (a tqdm), when given, moves on with each question."""
    got: dict[int, list[float]] = {}
    for idx, mine, _ in shares(items, batch_size, rank, world):
        for j, scores in score_questions(net, [(items[i][2], items[i][3]) for i in idx], batch_size,
                                         take=mine.__contains__):
            got[idx[j]] = scores
            if bar is not None:
                bar.update()
    if world > 1:
        parts: list[dict | None] = [None] * world
        dist.all_gather_object(parts, got)
        got = {i: s for part in parts for i, s in part.items()}
    return [got[i] for i in range(len(items))]


def summarize(per_subject: dict[str, dict], task: Task) -> dict:
    """Overall and per-category acc/acc_norm: micro (over questions) and macro (over subjects)."""
    def group(names: list[str]) -> dict:
        rows = [per_subject[n] for n in names]
        n = sum(r["n"] for r in rows)
        out = {"n": n, "subjects": len(rows)}
        for m in ("acc", "acc_norm"):
            out[m] = sum(r[m] * r["n"] for r in rows) / n
            out[m + "_macro"] = sum(r[m] for r in rows) / len(rows)
        return out

    categories: dict[str, list[str]] = {}
    for s in task.subjects:
        if s.name in per_subject:
            for c in s.categories:
                categories.setdefault(c, []).append(s.name)
    return {**group(list(per_subject)), "categories": {c: group(v) for c, v in categories.items()}}


def report_md(results: dict, charts: list[str] = ()) -> str:
    lines = [f"# Evaluation: {results['model']}", ""]
    lines += [f"![{Path(c).stem}]({c})" for c in charts[:1]] + ([""] if charts else [])
    if results["tasks"]:
        lines += ["| task | shots | n | acc | acc_norm | acc (macro) | chance |",
                  "|---|---|---|---|---|---|---|"]
    for name, t in results["tasks"].items():
        lines.append(f"| {name} | {t['shots']} | {t['n']} | {t['acc']:.4f} | {t['acc_norm']:.4f} | "
                     f"{t['acc_macro']:.4f} | {t['chance']:.4f} |")
    for name, t in results["tasks"].items():
        lines += ["", f"## {name}", ""]
        lines += [f"![{name}]({c})" for c in charts[1:] if c == f"{safe(name)}.png"]
        lines += ["", "| category | subjects | n | acc | acc_norm |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {g['subjects']} | {g['n']} | {g['acc']:.4f} | {g['acc_norm']:.4f} |"
                  for c, g in sorted(t["categories"].items())]
        lines += ["", "| subject | n | acc | acc_norm |", "|---|---|---|---|"]
        lines += [f"| {s} | {r['n']} | {r['acc']:.4f} | {r['acc_norm']:.4f} |"
                  for s, r in t["subjects"].items()]
    if results["tasks"]:
        lines += ["", "acc and acc_norm of a task or category: the mean over its questions "
                  "(lm-eval's weight_by_size); acc (macro): the mean over its subjects."]
    if "text" in results:
        t = results["text"]
        lines += ["", "## Held-out text", "", "| documents | tokens | bytes | perplexity | bits per byte |",
                  "|---|---|---|---|---|",
                  f"| {t['documents']} | {t['tokens']} | {t['bytes']} | {t['ppl']:.3f} | "
                  f"{t['bits_per_byte']:.4f} |", "",
                  f"Files: {', '.join(t['files'])}. Bits per byte does not depend on the tokenizer: "
                  "models with different vocabularies compare on it; perplexity is per token."]
    lines += generation_md(results.get("generate", {}))
    return "\n".join(lines + [""])


def eval_cmd(
    model: str,
    tasks: str | None = None,
    data: str = "data",
    out: str = "runs/eval/run",
    shots: int = 5,
    limit: int | None = None,
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "auto",
    adapter: list[str] | None = None,
    text: list[str] | None = None,
    field: str = "text",
    stride: int | None = None,
    mode: Literal["loglikelihood", "generate"] = "loglikelihood",
    chat: Literal["auto", "on", "off"] = "auto",
    max_new_tokens: int | None = None,
    slots: int = 32,
    quantize: str | None = None,
) -> dict:
    """Score a model on multiple-choice benchmarks from local files, as lm-eval does, and on
    generation tasks: the model writes each answer, which is read out of its reply and scored.

    Generation tasks in --tasks (jielong.eval.gentasks):
      drcd, cmrc2018            DATA/drcd-dev.json, DATA/cmrc2018-dev.json: EM, F1 (CMRC 2018's)
      squad:FILE.json           any SQuAD-style file: EM, F1
      translate:FILE.jsonl      {"source", "target"} rows: BLEU, chrF; translate:A-B:FILE.jsonl
                                translates field A into field B ({"zh", "en"} rows, or WMT's)
      summarize:FILE.jsonl      {"text", "summary"} rows: ROUGE-L (characters for Chinese)
      classify:FILE.jsonl       {"text", "label"} rows: accuracy, macro-F1
      closedbook:FILE.jsonl     {"question", "answers": [...]} rows: accuracy, refusal and
                                hallucination rates
    Prompts are in the data's language (Traditional, Simplified Chinese, English), through the
    model's chat template when it has one; decoding is greedy.

    Args:
        model: model folder or Hugging Face hub id.
        tasks: comma-separated: cmmlu, ceval, mmlu, tmmluplus (read from DATA/NAME), or folders
            of your own in one of their CSV layouts; and generation tasks (above).
        data: the folder holding cmmlu/, ceval/, mmlu/, tmmluplus/ in their published layouts,
            drcd-dev.json and cmrc2018-dev.json.
        out: where results.json and report.md go.
        shots: solved examples before each question, the first of the subject's dev split.
        limit: score at most this many questions per subject or generation task (a quick look).
        batch_size: questions per forward pass (the choices of each come on top).
        device: auto, cpu, cuda, mps.
        dtype: auto (the checkpoint's own on a GPU, as lm-eval's dtype=auto; float32 on a
            CPU), float32, bfloat16 (faster on a GPU), float16.
        adapter: LoRA adapter folder(s) on the model, NAME=DIR or DIR; the first is used.
        text: held-out text files or folders (.txt, .jsonl, .parquet): perplexity and bits
            per byte, each document scored whole (sliding windows past the context).
        field: the JSONL field or parquet column of --text documents.
        stride: new tokens scored per window of a document longer than the context (default:
            half the context; smaller gives each token more context and costs more).
        mode: loglikelihood: the multiple-choice letters scored by likelihood; generate: the
            model writes its answer and the letter is read from the reply (chat models).
        chat: auto: prompts through the tokenizer's chat template when it has one; on; off:
            plain completion prompts (a base model).
        max_new_tokens: longest reply (default per task: 32 for a letter or label, 64 for QA,
            128 for a summary, 256 for a translation).
        slots: replies generated together (continuous batching).
        quantize: int8 or int4: weight-only quantized linear layers (faster on a CPU, 4-8x
            smaller); default: the weights as stored.
    """
    if not tasks and not text:
        raise UserError("nothing to evaluate: pass --tasks (cmmlu, ceval, mmlu, tmmluplus, a "
                        "folder of CSVs, drcd, cmrc2018 or KIND:FILE) and/or --text FILE")
    if shots < 0:
        raise UserError(f"--shots {shots}: must be 0 or more")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be 1 or more")
    if (max_new_tokens is not None and max_new_tokens < 1) or slots < 1:
        raise UserError(f"--max_new_tokens {max_new_tokens} --slots {slots}: must be 1 or more")
    if batch_size < 1:
        raise UserError(f"--batch_size {batch_size}: must be 1 or more")
    tasks, generated = split_tasks(tasks, data, limit) if tasks else ("", [])  # generation tasks
    loaded = tasks_from(tasks, data) if tasks else []  # every file checked before the model loads
    if mode == "generate":  # the multiple-choice tasks answered in writing, not scored by likelihood
        generated, loaded = choice_tasks(loaded, shots, limit) + generated, []
    if text:
        find_files(text)  # a wrong path fails here, not after loading a large model
    dev = pick_device(device)
    rank, world = init_distributed(dev)  # under torchrun: each rank scores its share
    net, tok, gen_config = open_model(model, device=dev, dtype=dtype, adapters=adapter,
                                        quantize=quantize)
    n_ctx = net.config.max_position_embeddings
    encoded = {}
    for task in loaded:
        encoded[task.name] = encode_task(tok, task, shots, limit)
        check_fits(tok, task, encoded[task.name], shots, n_ctx)
    results = {"model": str(model), "adapter": adapter or [], "device": str(device), "tasks": {}}
    total = sum(n for items in encoded.values() for *_, n in shares(items, batch_size, rank, world))
    bar = tqdm(total=total, desc="eval", unit=" q", dynamic_ncols=True, disable=not total or rank > 0)
    samples: list[dict] = []  # one row per question and per document: what `eval compare` pairs
    for task in loaded:
        start = time.time()
        right: dict[str, list[tuple[bool, bool]]] = {}
        chance = 0.0
        items = encoded[task.name]
        for (subject, q, _, conts), scores in zip(items, score_task(net, items, batch_size, bar, rank, world),
                                                  strict=True):
            best, best_norm = pick(scores, list(LETTERS[:len(conts)]))
            right.setdefault(subject.name, []).append((best == q.answer, best_norm == q.answer))
            chance += 1 / len(conts)
            samples.append({"task": task.name, "subject": subject.name, "where": q.where,
                            "answer": LETTERS[q.answer], "pred": LETTERS[best],
                            "pred_norm": LETTERS[best_norm], "acc": int(best == q.answer),
                            "acc_norm": int(best_norm == q.answer), "logprobs": scores})
        per_subject = {s: {"n": len(r), "acc": sum(a for a, _ in r) / len(r),
                           "acc_norm": sum(b for _, b in r) / len(r)} for s, r in right.items()}
        results["tasks"][task.name] = {"path": str(task.path), "prompt": task.kind, "shots": shots,
                                       "limit": limit, **summarize(per_subject, task),
                                       "chance": chance / max(1, len(encoded[task.name])),
                                       "subjects": per_subject,
                                       "seconds": round(time.time() - start, 2)}
    bar.close()
    if not is_main_process():
        finish_distributed()  # rank 0 scores the text, runs the generation tasks, writes the files
        return results
    if text:
        r = heldout_text(net, tok, text, field=field, stride=stride, device=next(net.parameters()).device)
        results["text"] = {"files": [str(t) for t in text], "documents": r.documents,
                           "tokens": r.tokens, "bytes": r.bytes, "nll": r.nll, "ppl": r.ppl,
                           "bits_per_byte": r.bits_per_byte}
        samples += [{"task": "text", "document": i, "nll": n, "bytes": b}
                    for i, (n, b) in enumerate(zip(r.doc_nll, r.doc_bytes, strict=True))]
    if generated:  # jielong.eval.generation: replies written, answers read out and scored
        stops = stop_ids(tok, gen_config, net.config.eos_token_id)
        results["generate"], rows = run_generation(net, tok, stops, generated, chat, max_new_tokens,
                                                   slots, limit)
        samples += rows
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    charts = report_charts(results, out_dir)
    write_text(out_dir / "report.md", report_md(results, charts))
    write_text(out_dir / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in samples))
    for name, t in results["tasks"].items():
        print(f"{name}: acc {t['acc']:.4f}  acc_norm {t['acc_norm']:.4f}  "
              f"({t['n']} questions, {len(t['subjects'])} subjects, {shots}-shot, {t['seconds']:.1f} s)")
    if text:
        t = results["text"]
        print(f"held-out text: bits per byte {t['bits_per_byte']:.4f}  perplexity {t['ppl']:.3f}  "
              f"({t['documents']} documents, {t['tokens']} tokens)")
    for name, t in results.get("generate", {}).items():
        print(f"{name}: {headline(t)}  ({t['n']} questions, {t['prompt']} prompts, {t['seconds']:.1f} s)")
    print(f"results: {out_dir / 'results.json'}  report: {out_dir / 'report.md'}")
    finish_distributed()
    return results
