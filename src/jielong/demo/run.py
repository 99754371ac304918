"""The demo: a whole small language model's life on a laptop CPU, in a few minutes.

Run as:
    make demo                      # creates .venv first, then runs the line below
    jielong demo --steps 700 --out runs/demo

1. writes a synthetic corpus about a small fictional world (people, towns, pets, jobs) in
   Traditional Chinese, Simplified Chinese and English, plus arithmetic (demo/world.py);
2. trains a byte-level BPE tokenizer on it (Chinese one character per token: see
   world.py's han_char_pieces for why);
3. measures an untrained model, pretrains it, and measures it again: validation loss against
   the unigram baseline, and held-out facts (sentences never seen in training whose facts
   were stated in other words or languages) picked by likelihood among their alternatives;
4. prints what pretraining did, and looks inside the pretrained model (demo/look.py): the
   next-token view, attention for 「她」, 蘋果's contextual embeddings as fruit and as phone, the
   logit lens, an n-gram baseline's bits per byte beside the model's, scaling in miniature;
5–8. finetunes (demo/finetune.py): SFT into an assistant, a LoRA adapter for translation, a
   spam classifier, and a distilled smaller student, each measured before and after;
9–12. aligns (demo/align.py): a reward model, DPO and RLHF toward a preference SFT did not
   give, and RLHF with a checkable reward on arithmetic;
13. copies the aligned assistant to RUN/assistant (what `jielong serve` serves by default) and
   leaves a few rated conversations in RUN/feedback.db (demo/chat.py);
14. evaluates (demo/evaluate.py): a report card of the base, SFT and aligned models on the
   world's held-out questions, held-out text (bits per byte) and CMMLU dev next to chance,
   with bootstrap intervals of each difference;
15. shows overfitting: a small model on too little data, with and without early stopping,
   and on the whole corpus, in one plot;
16. the guardrail (demo/guardrail.py): a short safety SFT of the assistant on caring replies
   with the crisis lines of the user's region (and normal answers to look-alikes), measured
   on held-out messages before and after, without and with the rails;
17. retrieval (demo/retrieval.py): documents about people and towns the model never saw,
   indexed by jielong.rag; their facts asked of the assistant closed-book and with the
   retrieved passage (answered, confident wrong answers, the right document found, and
   "I don't know" for what no document says);
18. tools (demo/tools.py): a short SFT of a copy of the assistant on chats where a sum gets a
   calculator call, the tool's result and the answer; held-out sums right closed-book vs
   with the calculator (generate, parse the call, calculate, feed the result back, answer);
then writes RUN/report.md with the loss curve, the numbers and samples of every stage.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from datetime import date
from pathlib import Path

import torch

from jielong.checkpoint import save_model
from jielong.data.shards import prepare_shards, unigram_loss
from jielong.demo import finetune as ft
from jielong.demo.align import align_report, align_stages
from jielong.demo.chat import chat_examples
from jielong.demo.evaluate import evaluate_stages, evaluation_report
from jielong.demo.finetune import Clock, bold, stage_steps
from jielong.demo.guardrail import guardrail_report, guardrail_stage
from jielong.demo.look import look_report, look_stage, sweep_budgets
from jielong.demo.retrieval import retrieval_report, retrieval_stage
from jielong.demo.tasks import qa_conversations, world_for
from jielong.demo.tools import tools_report, tools_stage
from jielong.demo.world import build_corpus, demo_prompts, han_char_pieces
from jielong.eval.choice import choice_accuracy
from jielong.files import write_json, write_text
from jielong.infer.generate import generate_text
from jielong.infer.sampling import SamplingParams
from jielong.lora import remove_adapter
from jielong.plots import loss_curve
from jielong.runtime import pick_device
from jielong.tokenizer import bytes_per_token, train_tokenizer
from jielong.train.loop import TrainConfig, fit
from jielong.train.pretrain import PretrainStage, build_model, evaluate_loss

LANG_NAMES = {"en": "English", "zh-Hant": "Traditional Chinese", "zh-Hans": "Simplified Chinese",
              "math": "arithmetic"}



def _write_jsonl(path: Path, docs: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))


def _measure(model, tok, stage, corpus, prompts) -> dict:
    acc = choice_accuracy(model, tok, corpus.questions)
    greedy = SamplingParams(max_tokens=24, temperature=0, stop=["\n"])
    return {
        "val_loss": evaluate_loss(model, stage.val, batch_size=32, max_batches=50),
        "fact_accuracy": acc.accuracy, "chance": acc.chance, "by_lang": acc.by_group,
        "seen_sums": choice_accuracy(model, tok, corpus.seen_sums).accuracy,
        "samples": generate_text(model, tok, prompts, greedy),
    }


def demo(
    out: str = "runs/demo",
    steps: int = 700,
    preset: str = "demo",
    vocab_size: int = 2048,
    seq_len: int = 128,
    batch_size: int = 32,
    lr: float = 3e-3,
    docs: int = 12000,
    finetune_steps: int = 300,
    resume: bool = False,
    device: str = "auto",
    cmmlu: str | None = "../shared/data/cmmlu-dev",
    cmmlu_limit: int | None = None,
) -> dict:
    """Train a tokenizer and a small model on a synthetic trilingual world, and report.

    Args:
        out: Run directory; report.md, loss.png and model/ go here.
        steps: Pretraining steps.
        preset: Model size preset.
        vocab_size: Tokenizer vocabulary size.
        seq_len: Tokens per training window.
        batch_size: Windows per step.
        lr: Peak learning rate.
        docs: Synthetic training documents to generate.
        finetune_steps: Steps of SFT; the other stages take a share of it or a multiple
            (finetune.STAGE_STEPS); 0 stops after pretraining.
        resume: Continue an interrupted demo instead of starting over.
        device: auto, cpu, cuda, mps.
        cmmlu: CMMLU's dev CSVs for the report card (skipped when the folder is absent).
        cmmlu_limit: Score at most this many CMMLU questions per subject.
    """

    t_start, clock = time.time(), Clock()
    run = Path(out)
    if run.exists() and not resume:
        print(f"starting over in {run} (pass --resume to continue an interrupted demo)")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)

    print(bold("1. corpus") + " — a small fictional world in 繁體中文, 简体中文 and English")
    corpus = build_corpus(seed=0, n_docs=docs)
    _write_jsonl(run / "corpus" / "train.jsonl", corpus.train)
    _write_jsonl(run / "corpus" / "val.jsonl", corpus.val)
    n_bytes = sum(len(d.encode()) for d in corpus.train)
    print(f"   {len(corpus.train):,} training documents ({n_bytes / 1e6:.2f} MB), "
          f"{len(corpus.val)} validation documents, {len(corpus.questions)} held-out facts")

    clock.lap("1. corpus")

    print(bold("2. tokenizer") + f" — byte-level BPE, up to {vocab_size} tokens")
    t0 = time.time()
    # Chinese one character per token: see han_char_pieces for what whole documents give
    tok = train_tokenizer(han_char_pieces(corpus.train), vocab_size=vocab_size)
    tok.save(run / "tokenizer")
    by_lang: dict[str, list[str]] = {}
    for q in corpus.questions:
        by_lang.setdefault(q.lang, []).append(q.prompt + q.answer)
    bpt = {lang: bytes_per_token(tok, texts) for lang, texts in by_lang.items()}
    print(f"   {tok.vocab_size} tokens; bytes/token: "
          + ", ".join(f"{LANG_NAMES[k]} {v:.2f}" for k, v in bpt.items())
          + f" ({time.time() - t0:.1f}s)")

    clock.lap("2. tokenizer")

    print(bold("3. pretraining"))
    prepare_shards(corpus.train, tok, run / "data", val_texts=corpus.val)
    base = unigram_loss(run / "data")
    torch.manual_seed(0)
    model = build_model(preset, tok, seq_len, seed=0).to(pick_device(device))
    stage = PretrainStage(run / "data", seq_len, batch_size, seed=0)
    prompts = demo_prompts()
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps // 10),
                      eval_every=max(1, steps // 8), save_every=max(1, steps // 4), device=device)
    model.eval()
    with torch.no_grad():
        before = _measure(model, tok, stage, corpus, prompts)
    print(f"   {model.config.num_params / 1e6:.2f}M parameters; before training: val loss "
          f"{before['val_loss']:.3f} (unigram baseline {base:.3f}), facts "
          f"{before['fact_accuracy']:.0%} (chance {before['chance']:.0%})")
    summary = fit(model, stage, cfg, run, tokenizer=tok, resume=resume, desc="pretrain")
    model.eval()
    with torch.no_grad():
        after = _measure(model, tok, stage, corpus, prompts)
    save_model(run / "model", model, tok)
    loss_curve(run / "metrics.jsonl", run / "loss.png", title="demo pretraining", baseline=base)

    clock.lap("3. pretraining (with the measures before and after)")

    print(bold("4. pretraining result"))
    print(f"   val loss {before['val_loss']:.3f} → {after['val_loss']:.3f} "
          f"(unigram baseline {base:.3f})")
    print(f"   held-out facts {before['fact_accuracy']:.0%} → {after['fact_accuracy']:.0%} "
          f"(chance {after['chance']:.0%}): "
          + ", ".join(f"{LANG_NAMES[k]} {v:.0%}" for k, v in after["by_lang"].items())
          + f" (sums seen in training: {after['seen_sums']:.0%})")
    for p, b, a in zip(prompts, before["samples"], after["samples"], strict=True):
        print(f"   {p!r}: before {b!r}\n   {' ' * len(repr(p))}  after  {a!r}")

    look = look_stage(run, model, tok, corpus.train, corpus.val, seq_len, device, sweep_budgets(steps))
    clock.lap("4. look inside")

    result = {"steps": steps, "vocab": tok.vocab_size, "tokens": summary["tokens"], "tok_s": summary["tok_s"],
              "unigram_loss": base, "before": before, "after": after, "bytes_per_token": bpt,
              "params": model.config.num_params, "look": look}
    if finetune_steps > 0:
        result["finetune"] = _finetune(run, model, tok, finetune_steps, device, resume, clock)
        result["evaluation"] = evaluate_stages(run, tok, corpus, finetune_steps, str(pick_device(device)),
                                               cmmlu, cmmlu_limit, clock)
        result["guardrail"] = guardrail_stage(run, tok, stage_steps(finetune_steps, "guardrail"),
                                              str(pick_device(device)), resume)
        clock.lap("16. guardrail")
        result["retrieval"] = retrieval_stage(run, tok, str(pick_device(device)))
        clock.lap("17. retrieval")
        result["tools"] = tools_stage(run, tok, str(pick_device(device)), resume,
                                      stage_steps(finetune_steps, "tools"))
        clock.lap("18. tools")
    result["seconds"] = round(time.time() - t_start, 1)
    result["cpu_seconds"] = round(sum(c for _, _, c in clock.laps), 1)
    result["stages"] = [{"stage": n, "seconds": w, "cpu_seconds": c} for n, w, c in clock.laps]
    write_json(run / "results.json", result)
    _report(run, result, corpus, prompts)
    print(bold("time") + " — " + ", ".join(f"{n.split('.')[0]}: {w:.0f}s" for n, w, _ in clock.laps))
    print(f"   report: {run / 'report.md'}  model: {run / 'model'}  "
          f"({result['seconds'] / 60:.1f} min, {result['cpu_seconds'] / 60:.1f} CPU min)")
    return result


def _finetune(run: Path, model, tok, steps: int, device: str, resume: bool, clock) -> dict:

    dev = str(pick_device(device))
    sft, assistant = ft.sft_stage(run, model, tok, stage_steps(steps, "sft"), dev, resume)
    clock.lap("5. SFT")
    qa_test = qa_conversations(world_for(0), seed=0, n_train=0).test
    lora = ft.lora_stage(run, assistant, tok, stage_steps(steps, "lora"), dev, resume, qa_test)
    clock.lap("6. LoRA")
    remove_adapter(assistant, "translate")  # the teacher below is the assistant alone
    spam = ft.classify_stage(run, run / "model", tok, stage_steps(steps, "classify"), dev, resume)
    clock.lap("7. classification")
    distill = ft.distill_stage(run, run / "model", assistant, tok, stage_steps(steps, "distill"), dev,
                               resume)
    clock.lap("8. distillation")

    align = align_stages(run, tok, steps, dev, resume, clock)

    print(bold("13. chat") + " — the assistant to talk to, with some feedback already given")
    chat = chat_examples(run, tok)
    print(f"   {chat['conversations']} example conversations in {run / 'feedback.db'}: "
          f"{chat['up']} 👍, {chat['down']} 👎, {chat['edits']} edited answer, "
          f"{chat['regenerations']} unrated regeneration\n"
          f"   talk to it: jielong serve --model {run / 'assistant'}  (then open http://127.0.0.1:8000)")
    clock.lap("13. chat")
    return {"sft": sft, "lora": lora, "classify": spam, "distill": distill, "align": align,
            "chat": chat}


def _report(run: Path, r: dict, corpus, prompts: list[str]) -> None:
    b, a = r["before"], r["after"]
    rows = [("validation loss (nats/token)", f"{b['val_loss']:.3f}", f"{a['val_loss']:.3f}"),
            ("unigram baseline", f"{r['unigram_loss']:.3f}", f"{r['unigram_loss']:.3f}"),
            ("held-out facts right", f"{b['fact_accuracy']:.1%}", f"{a['fact_accuracy']:.1%}"),
            ("  chance", f"{b['chance']:.1%}", f"{a['chance']:.1%}")]
    rows += [(f"  {LANG_NAMES[k]}", f"{b['by_lang'][k]:.1%}", f"{v:.1%}") for k, v in a["by_lang"].items()]
    rows += [("sums seen in training, asked alike (memorised, not held out)",
              f"{b['seen_sums']:.1%}", f"{a['seen_sums']:.1%}")]
    lines = [
        "# jielong demo report", "",
        f"{date.today()} · {platform.machine()} · {os.cpu_count()} CPU threads · torch {torch.__version__} "
        f"· {r['seconds'] / 60:.1f} minutes in all", "",
        f"A {r['params'] / 1e6:.2f}M-parameter model pretrained for {r['steps']} steps "
        f"({r['tokens']:,} tokens, {r['tok_s']:,.0f} tokens/s) on {len(corpus.train):,} synthetic "
        "documents about a small fictional world, in Traditional Chinese, Simplified Chinese and "
        "English, plus arithmetic.", "",
        "Held-out facts are sentences that never occur in the training text; each fact was stated "
        "there in other words or another language. The model picks the likeliest of the "
        "alternatives (e.g. all eight towns), each with the sentence's end (its full stop) and "
        "all scored from the same point; chance is one over their number.", "",
        "| | before training | after training |", "| --- | --- | --- |",
        *[f"| {n} | {x} | {y} |" for n, x, y in rows], "",
        f"The tokenizer ({r['vocab']:,} tokens) learnt Chinese one character per token; trained "
        "on whole documents it spent most of its vocabulary on whole fact sentences, and a fact "
        "was then a different token in every phrasing. Compression (bytes/token): "
        + ", ".join(f"{LANG_NAMES[k]} {v:.2f}" for k, v in r["bytes_per_token"].items()) + ".", "",
        "![loss curve](loss.png)", "",
        "## Time", "",
        f"{r['seconds'] / 60:.1f} minutes in all ({r['cpu_seconds'] / 60:.1f} CPU minutes: every "
        "thread's time; when other programs share the machine, wall time grows and CPU time "
        "does not).", "",
        "| stage | seconds | CPU seconds |", "| --- | --- | --- |",
        *[f"| {t['stage']} | {t['seconds']:.0f} | {t['cpu_seconds']:.0f} |" for t in r["stages"]], "",
        "## Greedy continuations", "",
        "| prompt | before | after |", "| --- | --- | --- |",
        *[f"| {p} | {x!r} | {y!r} |" for p, x, y in zip(prompts, b["samples"], a["samples"], strict=True)],
        "",
    ]
    if "look" in r:
        lines += look_report(r["look"])
    if "finetune" in r:

        lines += _finetune_report(r["finetune"]) + align_report(r["finetune"]["align"])
        lines += _chat_report(r["finetune"]["chat"], run)
    if "evaluation" in r:
        lines += evaluation_report(r["evaluation"])
    if "guardrail" in r:
        lines += guardrail_report(r["guardrail"])
    if "retrieval" in r:
        lines += retrieval_report(r["retrieval"])
    if "tools" in r:
        lines += tools_report(r["tools"])
    write_text(run / "report.md", "\n".join(lines))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _chat_report(c: dict, run: Path) -> list[str]:
    return [
        "## Chat, and feedback for the next round", "",
        f"`jielong serve` serves the RLHF-aligned assistant (`{run / 'assistant'}`) over an "
        "OpenAI-compatible API and as a web chat at http://127.0.0.1:8000, keeping chats and "
        f"👍/👎 in `{run / 'feedback.db'}`. The demo put {c['conversations']} conversations there: "
        f"{c['up']} answers rated 👍 and {c['down']} 👎 (two answers to one question, in the "
        f"question's script and in the other), {c['edits']} answer corrected by hand, and "
        f"{c['regenerations']} regeneration left unrated. Turn them into training data and train:",
        "", "```bash",
        f"jielong feedback export --db {run / 'feedback.db'} --format dpo --out {run / 'feedback-dpo.jsonl'}",
        f"jielong train dpo {run / 'feedback-dpo.jsonl'} --model {run / 'assistant'} --method lora",
        "```", ""]


def _finetune_report(f: dict) -> list[str]:
    s, lo, c, d = f["sft"], f["lora"], f["classify"], f["distill"]
    langs = [k for k in LANG_NAMES if k in s["after"]["by_lang"]]
    spam_b, spam_a = c["before"]["per_class"]["spam"], c["after"]["per_class"]["spam"]
    lines = [
        "## Finetuning", "",
        f"### SFT: from text-continuer to assistant ({s['steps']} steps, "
        f"{s['n_train']:,} question–answer chats)", "",
        f"{s['n_test']} held-out questions: facts stated in pretraining but never asked about in "
        "that language during SFT, and sums never seen. A reply counts as answered when it holds "
        "the answer; it stops by itself when it ends with the end-of-turn token.", "",
        "| | base model | after SFT |", "| --- | --- | --- |",
        f"| questions answered | {s['before']['accuracy']:.1%} | {s['after']['accuracy']:.1%} |",
        *[f"|   {LANG_NAMES[k]} | {s['before']['by_lang'][k]:.1%} | {s['after']['by_lang'][k]:.1%} |"
          for k in langs],
        f"| replies that stop by themselves | {s['before']['stop_rate']:.1%} | "
        f"{s['after']['stop_rate']:.1%} |",
        f"| Chinese replies in the question's script | {_pct(s['before']['script_match'])} | "
        f"{_pct(s['after']['script_match'])} |", "",
        f"A share of the Chinese SFT answers ({s['mixed_script']:.0%}) is written in the other "
        "script, as in data gathered from mixed sources; alignment below teaches the preference "
        "for the user's own script.", "",
        "| question | reply after SFT |", "| --- | --- |",
        *[f"| {_cell(q)} | {_cell(a)} |" for q, a in s["after"]["examples"]], "",
        f"### LoRA: a translation adapter ({lo['steps']} steps, {lo['trainable']:,} of "
        f"{lo['total']:,} parameters trained)", "",
        f"chrF (character n-gram F-score, 0–100) of {lo['n_test']} translations of sentences "
        "about held-out facts. With the adapter switched off, the same base answers "
        f"{lo['qa_with_adapter_off']:.1%} of the SFT questions.", "",
        "| direction | assistant | + adapter |", "| --- | --- | --- |",
        f"| all | {lo['before']['chrf']:.1f} | {lo['after']['chrf']:.1f} |",
        *[f"| {k} | {lo['before']['by_direction'][k]:.1f} | {v:.1f} |"
          for k, v in lo["after"]["by_direction"].items()], "",
        "| source | reference | with the adapter |", "| --- | --- | --- |",
        *[f"| {_cell(x)} | {_cell(y)} | {_cell(z)} |" for x, y, z in lo["after"]["examples"]], "",
        f"### Classification: a spam filter ({c['steps']} steps, {c['n_train']:,} messages)", "",
        f"{c['n_test']} held-out messages in the three languages; the head starts random.", "",
        "| | random head | trained |", "| --- | --- | --- |",
        f"| accuracy | {c['before']['accuracy']:.1%} | {c['after']['accuracy']:.1%} |",
        f"| spam precision | {spam_b['precision']:.3f} | {spam_a['precision']:.3f} |",
        f"| spam recall | {spam_b['recall']:.3f} | {spam_a['recall']:.3f} |",
        f"| spam F1 | {spam_b['f1']:.3f} | {spam_a['f1']:.3f} |",
        f"| macro F1 | {c['before']['macro']['f1']:.3f} | {c['after']['macro']['f1']:.3f} |", "",
        "![confusion matrix](confusion.png)", "",
        f"### Distillation: a {d['distilled']['params'] / 1e6:.2f}M-parameter student of the "
        f"{d['teacher']['params'] / 1e6:.2f}M assistant", "",
        d["note"], "",
        "| | held-out loss | KL to the teacher | questions answered | stop by themselves |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {name} | {d[k]['val_loss']:.3f} | {d[k]['val_kl']:.3f} | {d[k]['accuracy']:.1%} | "
          f"{d[k]['stop_rate']:.1%} |"
          for k, name in (("teacher", "teacher (the assistant)"), ("distilled", "student, distilled"),
                          ("plain", "student, same data without the teacher"))], "",
    ]
    return lines
