"""The demo's evaluation, after chat (see run.py): a report card of its models, and the
overfitting lesson.

14. Report card: the pretrained base (RUN/model), the SFT assistant (RUN/sft/model) and the
    aligned one (RUN/assistant, RLHF with the reward model) on the same items:
    - the world's held-out questions (demo/tasks.py's SFT test: facts never asked in that
      language, sums never seen): does the greedy reply hold the answer, as the SFT stage
      measures it (`finetune.answered`);
    - bits per byte on the held-out world text (RUN/corpus/val.jsonl, never trained on;
      `jielong.eval.heldout`, what `jielong eval --text` computes);
    - CMMLU dev, real Chinese exam questions, read from `--cmmlu` (../shared/data/cmmlu-dev
      when present, else "skipped"), scored 0-shot with `jielong eval`'s prompts and
      log-likelihoods, next to chance (one in four). A 1M-parameter model of a toy world is
      expected at chance, and the card says so.
    Each score of SFT and aligned comes with its difference from the base and a paired
    bootstrap 95% interval of it (`jielong.eval.compare`, as `jielong eval compare` computes
    them), so the card says which differences are larger than the noise of a small test.
15. Overfitting: a small model trained on 24 documents for many epochs (training loss falls,
    validation loss turns and rises), the same run with early stopping (--patience, the best
    checkpoint kept and loaded at the end), and the same steps on the whole corpus; one plot
    of the three (RUN/overfit/overfit.png) and the numbers.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from jielong.checkpoint import load_model
from jielong.data.shards import prepare_shards
from jielong.demo.finetune import answered, bold, stage_steps
from jielong.demo.tasks import qa_conversations, world_for
from jielong.errors import UserError
from jielong.eval.benchmarks import LETTERS, load_task
from jielong.eval.command import encode_task, score_task
from jielong.eval.compare import compare_md, compare_png, score_row, text_row, verdict
from jielong.eval.heldout import score_texts
from jielong.eval.loglikelihood import pick
from jielong.files import write_json, write_text
from jielong.plots import loss_panels, loss_series
from jielong.train.loop import TrainConfig, fit
from jielong.train.pretrain import PretrainStage, build_model

MODELS = (("base", "model"), ("SFT", "sft/model"), ("aligned", "assistant"))
BOOTSTRAP = 1000  # resamplings: 2,000 (`jielong eval compare`'s default) moves no digit shown here
CMMLU_CHANCE = 0.25
# The overfitting lesson: a "test"-preset model (0.1M parameters besides its embeddings) on
# 24 documents; at 160 steps of 16 × 64 tokens that is ~60 epochs of them, and on the demo's
# corpus validation loss turns after ~70 steps (bench/RESULTS.md).
OVERFIT = dict(preset="test", docs=24, seq_len=64, batch_size=16, lr=3e-3, patience=3, eval_batches=5)


def cmmlu_items(path: str | None, tok, n_ctx: int, limit: int | None) -> tuple[list, dict]:
    """CMMLU questions encoded once for every model, 0-shot, the ones that fit the context;
    and what was scored (or why nothing was)."""
    if not path or not Path(path).is_dir():
        return [], {"skipped": f"CMMLU dev not found ({path or 'no --cmmlu'})"}
    try:
        task = load_task(str(path))
        items = encode_task(tok, task, 0, limit)
    except UserError as e:
        return [], {"skipped": str(e)}
    fits = [it for it in items if len(it[2]) + max(map(len, it[3])) - 1 <= n_ctx]
    return fits, {"path": str(path), "subjects": len(task.subjects), "questions": len(items),
                  "scored": len(fits), "limit": limit}


def cmmlu_right(model, items: list) -> np.ndarray:
    right = []
    for (_, q, _, conts), scores in zip(items, score_task(model, items, 16), strict=True):
        best, _ = pick(scores, list(LETTERS[:len(conts)]))
        right.append(float(best == q.answer))
    return np.array(right)


@torch.no_grad()
def report_card(run: Path, tok, val_docs: list[str], device: str, cmmlu: str | None,
                cmmlu_limit: int | None) -> dict:
    """Every model on the same items; columns for the bootstrap, the card, and its files."""
    t0 = time.time()
    qa = qa_conversations(world_for(0), seed=0, n_train=0).test
    nets = {name: load_model(run / sub).to(device).eval() for name, sub in MODELS}
    n_ctx = min(m.config.max_position_embeddings for m in nets.values())
    items, cm = cmmlu_items(cmmlu, tok, n_ctx, cmmlu_limit)
    qa_cols, text_cols, cm_cols = [], [], []
    for net in nets.values():
        qa_cols.append(np.array(answered(net, tok, qa)[1], dtype=float))
        r = score_texts(net, tok, val_docs, device=next(net.parameters()).device, progress=False)
        text_cols.append((np.array(r.doc_nll), np.array(r.doc_bytes, dtype=float)))
        if items:
            cm_cols.append(cmmlu_right(net, items))
    scores = [score_row("world questions answered", qa_cols, lambda c: float(c.mean()), True,
                        BOOTSTRAP, 0),
              text_row(text_cols, BOOTSTRAP, 0)]
    scores[1]["score"] = "held-out world text, bits per byte"
    if items:
        scores.append(score_row("CMMLU dev accuracy (0-shot)", cm_cols, lambda c: float(c.mean()), True,
                                BOOTSTRAP, 0))
    result = {"runs": [n for n, _ in MODELS], "models": [str(run / s) for _, s in MODELS],
              "bootstrap": BOOTSTRAP, "scores": scores, "cmmlu": cm, "chance": CMMLU_CHANCE,
              "n_qa": len(qa), "val_docs": len(val_docs), "n_ctx": n_ctx,
              "params": nets["base"].config.num_params, "seconds": round(time.time() - t0, 1)}
    out = run / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", result)
    write_text(out / "compare.md", compare_md(result))
    compare_png(result, out / "compare.png")
    return result


def overfitting(run: Path, tok, train_docs: list[str], val_docs: list[str], steps: int,
                device: str) -> dict:
    """Three small runs from one initialisation: too little data, the same with early
    stopping, and the whole corpus (RUN/data, the pretraining shards); their curves and numbers."""
    o = OVERFIT
    root = run / "overfit"
    shutil.rmtree(root, ignore_errors=True)  # seconds of work: always afresh, even with --resume
    little = prepare_shards(train_docs[:o["docs"]], tok, root / "data", val_texts=val_docs)
    every = max(2, steps // 20)
    runs = {}
    for name, data, patience in (("little", root / "data", 0), ("early", root / "data", o["patience"]),
                                 ("varied", run / "data", 0)):
        model = build_model(o["preset"], tok, o["seq_len"], seed=0)
        stage = PretrainStage(data, o["seq_len"], o["batch_size"], seed=0, eval_batches=o["eval_batches"])
        cfg = TrainConfig(steps=steps, batch_size=o["batch_size"], lr=o["lr"], warmup_steps=max(1, steps // 16),
                          eval_every=every, save_every=steps, patience=patience,
                          load_best_at_end=bool(patience), device=device)
        params = model.config.num_params
        summary = fit(model, stage, cfg, root / name, tokenizer=tok, desc=f"overfit ({name})")
        series = loss_series(root / name / "metrics.jsonl")
        runs[name] = {"steps": summary["steps"], "train_first": series["train"][0][1],
                      "train_last": series["train"][-1][1], "val_last": series["val"][-1][1],
                      "best_step": series["best"][0], "best_val": series["best"][1],
                      "stopped_early": series["stopped_early"]}
    tokens = sum(little["train_sizes"])
    png = loss_panels([(root / "little" / "metrics.jsonl", f"{o['docs']} documents"),
                       (root / "early" / "metrics.jsonl", f"{o['docs']} documents, early stopping"),
                       (root / "varied" / "metrics.jsonl", f"all {len(train_docs):,} documents")],
                      root / "overfit.png")
    return {**runs, "docs": o["docs"], "tokens": tokens, "all_docs": len(train_docs),
            "epochs": steps * o["batch_size"] * o["seq_len"] / tokens, "patience": o["patience"],
            "eval_every": every, "png": str(png.relative_to(run)), "params": params}


def evaluate_stages(run: Path, tok, corpus, finetune_steps: int, device: str, cmmlu: str | None,
                    cmmlu_limit: int | None, clock) -> dict:
    print(bold("14. evaluation") + " — base, SFT and aligned models on the same held-out items")
    card = report_card(run, tok, corpus.val, device, cmmlu, cmmlu_limit)
    for row in card["scores"]:
        print(f"   {row['score']}: " + ", ".join(f"{n} {e['value']:.3f}" for n, e in
                                                 zip(card["runs"], row["runs"], strict=True)))
    cm = card["cmmlu"]
    print(f"   CMMLU: skipped: {cm['skipped']}" if "skipped" in cm else
          f"   CMMLU: {cm['scored']} questions of {cm['subjects']} subjects, 0-shot; chance "
          f"{CMMLU_CHANCE:.2f} ({card['seconds']:.0f}s)")
    clock.lap("14. evaluation")
    print(bold("15. overfitting") + f" — a small model on {OVERFIT['docs']} documents, with and "
          "without early stopping, and on all of them")
    t0 = time.time()
    steps = max(20, stage_steps(finetune_steps, "overfit"))
    of = overfitting(run, tok, corpus.train, corpus.val, steps, device)
    lo, es, va = of["little"], of["early"], of["varied"]
    print(f"   {of['docs']} documents, {of['epochs']:.0f} epochs: train loss {lo['train_first']:.2f} → "
          f"{lo['train_last']:.2f}, validation loss best {lo['best_val']:.3f} at step {lo['best_step']}, "
          f"{lo['val_last']:.3f} at the end; early stopping ended at step {es['steps']} with step "
          f"{es['best_step']}'s weights; all documents: {va['val_last']:.3f} at the end "
          f"({time.time() - t0:.0f}s)")
    clock.lap("15. overfitting")
    return {"card": card, "overfit": of}


def _diff(e: dict, higher_better: bool, fmt: str) -> str:
    lo, hi = e["diff_ci"]
    return f"{e['diff']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}] {verdict(e, higher_better)}"


def at_chance(card: dict) -> str:
    """Each model's CMMLU accuracy with its own 95% interval, and whether that holds chance."""
    row = next(r for r in card["scores"] if r["score"].startswith("CMMLU"))
    parts, off = [], []
    for name, e in zip(card["runs"], row["runs"], strict=True):
        lo, hi = e["ci"]
        parts.append(f"{name} {e['value']:.1%} [{lo:.1%}, {hi:.1%}]")
        if not lo <= CMMLU_CHANCE <= hi:
            off.append(f"{name} {'above' if lo > CMMLU_CHANCE else 'below'}")
    verdict = ("every interval holds chance: these models know nothing of it, as expected"
               if not off else f"not every interval holds chance ({', '.join(off)}); on "
               f"{row['n']} questions a model that guesses with a bias toward the letter most "
               "often right can land there")
    return f"Accuracy with its own 95% interval: {'; '.join(parts)} — {verdict}."


def forgetting(card: dict) -> str:
    """What finetuning did to the plain text the base was trained on, in its bits per byte."""
    row = next(r for r in card["scores"] if not r["higher_is_better"])
    (base, *tuned), names = [e["value"] for e in row["runs"]], card["runs"][1:]
    said = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, tuned, strict=True))
    if min(tuned) <= base:
        return f"Bits per byte on the world's own text: base {base:.3f}, {said}."
    return (f"Finetuning has a price, and the card shows it: on the world's own text the base needs "
            f"{base:.3f} bits per byte and the tuned models more ({said}). SFT trained every weight "
            "on chats alone, and a model this small forgets part of how the documents read as it "
            "learns to answer (catastrophic forgetting). Mixing some pretraining text into the "
            "SFT data keeps more of it, as does LoRA (Biderman et al. 2024, \"LoRA Learns Less "
            "and Forgets Less\").")


def lesson(of: dict) -> str:
    """What the three runs showed, said only where they showed it (a short run may not)."""
    lo, es, va = of["little"], of["early"], of["varied"]
    if lo["best_step"] < lo["steps"] and lo["val_last"] > lo["best_val"]:
        said = (f"On {of['docs']} documents the model learns them by heart: training loss keeps "
                f"falling ({lo['train_last']:.3f} at the end) while validation loss bottoms out at "
                f"step {lo['best_step']} ({lo['best_val']:.3f}) and climbs back to {lo['val_last']:.3f}.")
    else:
        said = (f"In {lo['steps']} steps validation loss was still falling at the end: too few "
                "for this model to overfit (the demo's default settings show it).")
    if es["stopped_early"]:
        said += (f" Early stopping ends the same run {of['patience']} evaluations without improvement "
                 f"later, at step {es['steps']}, and returns step {es['best_step']}'s weights (kept in "
                 "`checkpoints/best/`).")
    else:
        said += (f" Early stopping never stopped: validation loss did not fail to improve "
                 f"{of['patience']} evaluations in a row.")
    still = "still falling at the end" if va["best_step"] == va["steps"] else \
        f"its best at step {va['best_step']}"
    return said + (f" More varied data is the real fix: on all {of['all_docs']:,} documents the same "
                   f"steps bring validation loss to {va['val_last']:.3f}, {still}.")


def evaluation_report(ev: dict) -> list[str]:
    card, of = ev["card"], ev["overfit"]
    names = card["runs"]
    lines = [
        "## Evaluation", "",
        "### Report card: base, SFT and aligned", "",
        f"The pretrained base (`model/`), the SFT assistant (`sft/model/`) and the aligned one "
        f"(`assistant/`, RLHF with the reward model) on the same items. World questions: the "
        f"{card['n_qa']} held-out SFT questions (greedy reply holds the answer). Bits per byte: "
        f"the {card['val_docs']} held-out world documents (`corpus/val.jsonl`; lower is better). "
        f"Each difference from the base has a paired bootstrap 95% interval ({card['bootstrap']:,} "
        "resamplings of the questions or documents, as `jielong eval compare`); an interval "
        "holding 0 is within noise.", "",
        "| score | n | " + " | ".join(names) + " | " + " | ".join(f"{n} − base [95% CI]" for n in names[1:]) + " |",
        "| --- | --- |" + " --- |" * (2 * len(names) - 1),
    ]
    for row in card["scores"]:
        up = row["higher_is_better"]  # the accuracies, in per cent; bits per byte as they are
        fmt = ".1%" if up else ".3f"
        lines.append(f"| {row['score']} | {row['n']} | " + " | ".join(f"{e['value']:{fmt}}" for e in row["runs"])
                     + " | " + " | ".join(_diff(e, up, "+" + fmt) for e in row["runs"][1:]) + " |")
    cm = card["cmmlu"]
    lines.append("")
    if "skipped" in cm:
        lines += [f"CMMLU dev: skipped: {cm['skipped']}. Give the demo `--cmmlu DIR` (CMMLU's dev "
                  "CSVs) to add real Chinese exam questions to the card.", ""]
    else:
        subset = "all" if cm["limit"] is None else f"the first {cm['limit']} per subject of the"
        left = cm["questions"] - cm["scored"]
        lines += [
            f"CMMLU dev (`{cm['path']}`): {subset} {cm['questions']} questions of {cm['subjects']} "
            "subjects, 0-shot, with `jielong eval`'s prompts and scoring"
            + (f"; {left} whose prompt does not fit the model's context are left out" if left else "")
            + f". Chance is {CMMLU_CHANCE:.0%}: a {card['params'] / 1e6:.1f}M-parameter model that "
            "has read nothing but a toy world knows no Chinese law, medicine or history. "
            + at_chance(card) + " 0-shot, because five solved examples make a prompt about six "
            f"times as long, past the model's context of {card['n_ctx']} tokens.", ""]
    lines += [forgetting(card), "",
              "![report card](eval/compare.png)", "",
              "Run 1 is the base, run 2 SFT, run 3 aligned; each bar with its own 95% interval.", ""]
    lo, es, va = of["little"], of["early"], of["varied"]
    lines += [
        "### Overfitting, and what fixes it", "",
        f"A {of['params'] / 1e6:.2f}M-parameter model trained from scratch on {of['docs']} documents "
        f"({of['tokens']:,} tokens) for {lo['steps']} steps, about {of['epochs']:.0f} passes over them, "
        f"validation loss measured every {of['eval_every']} steps on the held-out world text:", "",
        "| run | steps | train loss, first → last | best validation loss (step) | validation loss at the end |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {label} | {r['steps']} | {r['train_first']:.3f} → {r['train_last']:.3f} | "
          f"{r['best_val']:.3f} ({r['best_step']}) | {r['val_last']:.3f} |"
          for label, r in ((f"{of['docs']} documents", lo),
                           (f"{of['docs']} documents, `--patience {of['patience']} --load_best_at_end`", es),
                           (f"all {of['all_docs']:,} documents", va))], "",
        lesson(of), "",
        f"![overfitting]({of['png']})", "",
    ]
    return lines
