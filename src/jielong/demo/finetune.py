"""The demo's finetuning stages, after pretraining (see run.py). Written so far: SFT (5)
and distillation (8); the LoRA (6) and classifier (7) stages are planned as below.

5. SFT: question-answer chats about the world turn the text-continuer into an assistant;
   measured on held-out questions (asked in a language the fact was never asked in) by
   whether the reply holds the answer and whether it stops by itself.
6. LoRA: an adapter on the assistant for a second task, translating the world's sentences
   between Chinese and English; chrF of the translations with and without it.
7. Classification: a spam / ham classifier from the pretrained body; F1 on held-out texts.
8. Distillation: a model a quarter the size learns from the assistant's logits, against the
   same small model trained on the data alone; held-out loss, KL to the teacher, answers.

Each stage trains in-process on the one loop (`train.loop.fit`) and returns its numbers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from jielong.adapter_files import save_adapter
from jielong.checkpoint import load_model, save_model
from jielong.classifier import Classifier, predict_logits, save_classifier
from jielong.classifier import checkpoint_fns as classifier_checkpoint_fns
from jielong.data.chat import encode
from jielong.demo.tasks import (
    qa_conversations,
    script_chars,
    script_of,
    spam_dataset,
    translation_pairs,
    world_for,
)
from jielong.eval.classification import classification_report, confusion_png
from jielong.eval.replies import chat_replies, chrf, contains_answer
from jielong.lora import LoraConfig, add_adapter, count_parameters, using_adapter
from jielong.model import Transformer
from jielong.train.classify import ClassifyStage, Encoded
from jielong.train.common import checkpoint_fns, split
from jielong.train.distill import LogitStage, keep_layers
from jielong.train.loop import TrainConfig, fit
from jielong.train.packing import PackedStage, pack

SEQ_LEN = 128
MIXED_SCRIPT = 0.3  # of Chinese SFT answers in the other script, as in data from mixed sources
# Temperature 1: at 2 the student learnt the teacher's softened distribution and lost to the
# plain student on held-out loss and KL (bench/RESULTS.md); see also the note in distill_stage.
DISTILL_ALPHA, DISTILL_T = 0.2, 1.0
# Each stage's steps as a share of the demo's one finetuning dial (300 steps of SFT): what
# each needs for its lesson, the demo being held to ten minutes on two CPU cores (the
# measurements are in bench/RESULTS.md). RLHF is the dearest step: it samples 64 replies.
STAGE_STEPS = {"sft": 1, "lora": 1 / 2, "classify": 1 / 4, "distill": 1 / 2, "reward": 4 / 3,
               "dpo": 2 / 3, "rlhf": 2 / 5, "rlhf_math": 2 / 5, "overfit": 8 / 15,
               "guardrail": 5 / 6, "tools": 16 / 15}


def stage_steps(steps: int, stage: str) -> int:
    return max(1, round(steps * STAGE_STEPS[stage]))


def bold(s: str) -> str:
    return f"\033[1m{s}\033[0m" if os.isatty(1) and "NO_COLOR" not in os.environ else s


def share(flags: list[bool]) -> float | None:
    """The share of True among `flags`; None when there are none."""
    return sum(flags) / len(flags) if flags else None


def pct(x: float | None) -> str:
    """A share as a whole percentage for the stages' tables; "—" for none."""
    return "—" if x is None else f"{x:.0%}"


class Clock:
    """Wall and CPU seconds of each demo stage, for the report. CPU time counts every thread
    of this process; on a machine shared with other programs the wall time grows, it does not."""

    def __init__(self):
        self.laps: list[tuple[str, float, float]] = []
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        """Close the stage that ran since the last lap."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.laps.append((name, round(wall - self._wall, 1), round(cpu - self._cpu, 1)))
        self._wall, self._cpu = wall, cpu


def _packed(tok, records: list[dict], pad: int, seed: int = 0):
    return pack([encode(tok, r["messages"]) for r in records], SEQ_LEN, pad, seed)


def qa_chats():
    """The demo's SFT chats: questions about the world in three languages, and sums."""
    return qa_conversations(world_for(0), seed=0, n_train=3000, mixed_script=MIXED_SCRIPT)


def answered(model, tok, items, max_new_tokens: int = 40) -> tuple[list, list[bool]]:
    """Greedy replies to held-out questions, and whether each holds the answer (in either
    Chinese script)."""
    model.eval()
    replies = chat_replies(model, tok, [i.messages_without_answer for i in items], max_new_tokens)
    return replies, [contains_answer(r.text, i.answer_value) or bool(i.alt_value and contains_answer(r.text, i.alt_value))
                     for r, i in zip(replies, items, strict=True)]


def answer_scores(model, tok, items, max_new_tokens: int = 40) -> dict:
    """Held-out questions: share of replies holding the answer (in either Chinese script),
    share that stop by themselves, per language; share of Chinese replies in the question's
    script; and a few examples."""
    replies, right = answered(model, tok, items, max_new_tokens)
    chars = script_chars(world_for(0))
    scripts = [(script_of(r.text, chars), i.lang) for r, i in zip(replies, items, strict=True)
               if i.lang in chars]
    scripts = [(s, lang) for s, lang in scripts if s is not None]
    by_lang: dict[str, list[bool]] = {}
    for ok, i in zip(right, items, strict=True):
        by_lang.setdefault(i.lang if i.kind not in ("add", "sub") else "math", []).append(ok)
    return {"accuracy": sum(right) / len(right),
            "stop_rate": sum(r.stopped for r in replies) / len(replies),
            "script_match": sum(s == lang for s, lang in scripts) / len(scripts) if scripts else None,
            "by_lang": {k: sum(v) / len(v) for k, v in by_lang.items()},
            "examples": [(i.messages_without_answer[-1]["content"], r.text)
                         for i, r in list(zip(items, replies, strict=True))[:: max(1, len(items) // 6)]]}


def sft_stage(run: Path, model, tok, steps: int, device: str, resume: bool) -> tuple[dict, Transformer]:
    print(bold("5. SFT") + " — question-answer chats turn the model into an assistant")
    data = qa_chats()
    pad = model.config.pad_token_id or 0
    train_r, val_r = split(data.train, 0.05, seed=0)
    packed, packed_val = _packed(tok, train_r, pad), _packed(tok, val_r, pad)
    before = answer_scores(model, tok, data.test)
    cfg = TrainConfig(steps=steps, batch_size=16, lr=1e-3, warmup_steps=20, eval_every=max(1, steps // 4),
                      save_every=steps, device=device)
    print(f"   {len(train_r):,} chats packed into {packed.inputs.shape[0]} rows; {len(data.test)} "
          f"held-out questions; before SFT: {before['accuracy']:.0%} answered, "
          f"{before['stop_rate']:.0%} stop by themselves")
    t0 = time.time()
    summary = fit(model, PackedStage(packed, packed_val, cfg), cfg, run / "sft", tokenizer=tok,
                  resume=resume, desc="sft")
    after = answer_scores(model, tok, data.test)
    save_model(run / "sft" / "model", model, tok)
    print(f"   after SFT: {after['accuracy']:.0%} answered, {after['stop_rate']:.0%} stop by "
          f"themselves ({time.time() - t0:.0f}s)")
    return {"before": before, "after": after, "val_loss": summary.get("val_loss"),
            "steps": steps, "mixed_script": MIXED_SCRIPT, "n_train": len(train_r), "n_test": len(data.test)}, model


def distill_stage(run: Path, base_dir: Path, teacher, tok, steps: int, device: str, resume: bool,
                  alpha: float = DISTILL_ALPHA, temperature: float = DISTILL_T) -> dict:
    """A half-depth student (layers 0 and n-1 of the pretrained base) trained on the SFT chats
    twice from the same start: once with the teacher's logits mixed in, once on the data alone."""

    print(bold("8. distillation") + " — a shallower student learns from the assistant's logits")
    data = qa_chats()
    pad = teacher.config.pad_token_id or 0
    train_r, val_r = split(data.train, 0.05, seed=0)
    packed, packed_val = _packed(tok, train_r, pad), _packed(tok, val_r, pad)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    base = load_model(base_dir)
    n = base.config.num_hidden_layers
    layers = [0, n - 1] if n >= 4 else [0]
    results = {}
    for name, a in (("distilled", alpha), ("plain", 1.0)):  # alpha 1: cross-entropy only
        student = keep_layers(base, layers)
        cfg = TrainConfig(steps=steps, batch_size=16, lr=1e-3, warmup_steps=20, eval_every=steps,
                          save_every=steps, device=device)
        stage = LogitStage(packed, packed_val, cfg, teacher, "forward_kl", temperature, a)
        fit(student, stage, cfg, run / f"student-{name}", tokenizer=tok, resume=resume,
            desc=f"student ({name})")
        student.eval()
        with torch.no_grad():
            ev = stage.evaluate(student)
        results[name] = {"val_loss": ev["val_loss"], "val_kl": ev["val_kl"],
                         "params": student.config.num_params,
                         **{k: v for k, v in answer_scores(student, tok, data.test).items()
                            if k in ("accuracy", "stop_rate")}}
        if name == "distilled":
            save_model(run / "student-distilled" / "model", student, tok)
    with torch.no_grad():
        teacher_loss = PackedStage(packed, packed_val, TrainConfig()).evaluate(teacher)["val_loss"]
    results["teacher"] = {"val_loss": teacher_loss, "val_kl": 0.0, "params": teacher.config.num_params,
                          **{k: v for k, v in answer_scores(teacher, tok, data.test).items()
                             if k in ("accuracy", "stop_rate")}}
    d, p = results["distilled"], results["plain"]
    results["note"] = (
        f"Both students keep layer{'s' * (len(layers) > 1)} {' and '.join(map(str, layers))} of the pretrained base "
        f"({len(layers)} of {base.config.num_hidden_layers}) and train {steps} steps on the SFT "
        f"chats; the distilled one learns {1 - alpha:.0%} from the teacher's distribution "
        f"(forward KL at temperature {temperature:g}) and {alpha:.0%} from the data.")
    print(f"   student {d['params'] / 1e6:.2f}M vs teacher {teacher.config.num_params / 1e6:.2f}M "
          f"parameters: held-out loss {d['val_loss']:.3f} distilled vs {p['val_loss']:.3f} without "
          f"(teacher {teacher_loss:.3f}); KL to teacher {d['val_kl']:.3f} vs {p['val_kl']:.3f}; "
          f"answered {d['accuracy']:.0%} vs {p['accuracy']:.0%} (teacher "
          f"{results['teacher']['accuracy']:.0%})")
    return results


def translation_scores(model, tok, items, max_new_tokens: int = 48) -> dict:
    """chrF of greedy translations against the references, overall and per direction."""
    model.eval()
    replies = chat_replies(model, tok, [i.messages_without_answer for i in items], max_new_tokens)
    scores = [chrf(r.text, i.reference) for r, i in zip(replies, items, strict=True)]
    by_dir: dict[str, list[float]] = {}
    for sc, i in zip(scores, items, strict=True):
        by_dir.setdefault(f"{i.src_lang}→{i.tgt_lang}", []).append(sc)
    return {"chrf": sum(scores) / len(scores),
            "by_direction": {k: sum(v) / len(v) for k, v in sorted(by_dir.items())},
            "examples": [(i.source, i.reference, r.text)
                         for i, r in list(zip(items, replies, strict=True))[:: max(1, len(items) // 4)]]}


def lora_stage(run: Path, model, tok, steps: int, device: str, resume: bool, qa_test) -> dict:
    print(bold("6. LoRA") + " — an adapter teaches the assistant a second task: translation")
    train_r, test = translation_pairs(world_for(0), seed=0, n_train=2000, n_test=120)
    pad = model.config.pad_token_id or 0
    fit_r, val_r = split(train_r, 0.05, seed=0)
    packed, packed_val = _packed(tok, fit_r, pad), _packed(tok, val_r, pad)
    before = translation_scores(model, tok, test)
    add_adapter(model, LoraConfig(r=16, alpha=32, dropout=0.0), name="translate")
    trainable, total = count_parameters(model)
    cfg = TrainConfig(steps=steps, batch_size=16, lr=3e-3, warmup_steps=20, eval_every=max(1, steps // 4),
                      save_every=steps, device=device)
    print(f"   {len(fit_r):,} translation chats (en ↔ 繁/简); adapter r=16 on every linear layer: "
          f"{trainable:,} trainable of {total:,} parameters ({trainable / total:.1%}); "
          f"before: chrF {before['chrf']:.1f}")
    t0 = time.time()
    save_fn, load_fn = checkpoint_fns("lora", "translate")
    summary = fit(model, PackedStage(packed, packed_val, cfg), cfg, run / "lora", tokenizer=tok,
                  resume=resume, desc="lora", save_fn=save_fn, load_fn=load_fn)
    model.eval()
    after = translation_scores(model, tok, test)
    save_adapter(model, run / "lora" / "adapter", name="translate")
    with using_adapter(model, None):  # the same base without the adapter: still the assistant
        qa_off = answer_scores(model, tok, qa_test)["accuracy"]
    print(f"   after: chrF {before['chrf']:.1f} → {after['chrf']:.1f} ("
          + ", ".join(f"{k} {v:.1f}" for k, v in after["by_direction"].items())
          + f"); adapter off, the assistant still answers {qa_off:.0%} ({time.time() - t0:.0f}s)")
    return {"before": before, "after": after, "val_loss": summary.get("val_loss"), "steps": steps,
            "trainable": trainable, "total": total, "qa_with_adapter_off": qa_off,
            "n_train": len(fit_r), "n_test": len(test)}


def classify_stage(run: Path, lm_dir: Path, tok, steps: int, device: str, resume: bool) -> dict:

    print(bold("7. classification") + " — a spam filter from the pretrained model's body")
    train_r, test_r = spam_dataset(seed=0, n_train=2000, n_test=400)
    labels = ["ham", "spam"]
    lm = load_model(lm_dir)
    pad = lm.config.pad_token_id = lm.config.pad_token_id or 0
    torch.manual_seed(0)
    clf = Classifier.from_causal_lm(lm, labels)

    def encoded(records):
        ids = [tok.encode(r["text"])[: clf.config.max_position_embeddings] for r in records]
        return Encoded(ids, [labels.index(r["label"]) for r in records])

    train, test = encoded(train_r), encoded(test_r)
    cfg = TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup_steps=10, eval_every=max(1, steps // 4),
                      save_every=steps, device=device)
    stage = ClassifyStage(train, test, labels, pad, cfg)

    def report():
        clf.eval()
        pred = predict_logits(clf, test.ids, pad).argmax(-1).tolist()
        return classification_report([labels[i] for i in test.labels], [labels[i] for i in pred], labels)

    before = report()
    t0 = time.time()
    save_fn, load_fn = classifier_checkpoint_fns()
    fit(clf, stage, cfg, run / "spam", tokenizer=tok, resume=resume, desc="classify",
        save_fn=save_fn, load_fn=load_fn)
    after = report()
    save_classifier(run / "spam" / "model", clf, tok)
    confusion_png(after, run / "confusion.png", title="spam filter, held-out messages")
    print(f"   {len(train_r):,} training / {len(test_r)} held-out messages (繁/简/English); spam F1 "
          f"{before['per_class']['spam']['f1']:.2f} → {after['per_class']['spam']['f1']:.2f}, accuracy "
          f"{before['accuracy']:.0%} → {after['accuracy']:.0%} ({time.time() - t0:.0f}s)")
    return {"before": before, "after": after, "steps": steps, "n_train": len(train_r),
            "n_test": len(test_r)}
