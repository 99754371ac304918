"""The demo's finetuning stages, after pretraining (see demo.py). Written so far: SFT (5)
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

from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.data.synthetic_tasks import (
    qa_conversations,
    world_for,
)
from jielong.eval.replies import chat_replies, contains_answer
from jielong.model import Transformer
from jielong.train.distill import LogitStage
from jielong.train.loop import TrainConfig, fit
from jielong.train.sft import PackedStage, encode, pack, split

SEQ_LEN = 128


def _bold(s: str) -> str:
    return f"\033[1m{s}\033[0m" if os.isatty(1) and "NO_COLOR" not in os.environ else s


def _packed(tok, records: list[dict], pad: int, seed: int = 0):
    return pack([encode(tok, r["messages"]) for r in records], SEQ_LEN, pad, seed)


def answer_scores(model, tok, items, max_new_tokens: int = 40) -> dict:
    """Held-out questions: share of replies holding the answer, share that stop by
    themselves, per language; and a few examples."""
    model.eval()
    replies = chat_replies(model, tok, [i.messages_without_answer for i in items], max_new_tokens)
    right = [contains_answer(r.text, i.answer_value) for r, i in zip(replies, items, strict=True)]
    by_lang: dict[str, list[bool]] = {}
    for ok, i in zip(right, items, strict=True):
        by_lang.setdefault(i.lang if i.kind not in ("add", "sub") else "math", []).append(ok)
    return {"accuracy": sum(right) / len(right),
            "stop_rate": sum(r.stopped for r in replies) / len(replies),
            "by_lang": {k: sum(v) / len(v) for k, v in by_lang.items()},
            "examples": [(i.messages_without_answer[-1]["content"], r.text)
                         for i, r in list(zip(items, replies, strict=True))[:: max(1, len(items) // 6)]]}


def sft_stage(run: Path, model, tok, steps: int, device: str, resume: bool) -> tuple[dict, Transformer]:
    print(_bold("5. SFT") + " — question-answer chats turn the model into an assistant")
    data = qa_conversations(world_for(0), seed=0, n_train=3000)
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
            "steps": steps, "n_train": len(train_r), "n_test": len(data.test)}, model


def distill_stage(run: Path, teacher, tok, steps: int, device: str, resume: bool) -> dict:
    print(_bold("8. distillation") + " — a smaller student learns from the assistant's logits")
    data = qa_conversations(world_for(0), seed=0, n_train=3000)
    pad = teacher.config.pad_token_id or 0
    train_r, val_r = split(data.train, 0.05, seed=0)
    packed, packed_val = _packed(tok, train_r, pad), _packed(tok, val_r, pad)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t = teacher.config
    size = dict(vocab_size=t.vocab_size, max_position_embeddings=t.max_position_embeddings,
                eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id)
    results = {}
    for name, alpha in (("distilled", 0.5), ("plain", 1.0)):  # alpha 1: cross-entropy only
        torch.manual_seed(0)
        student = Transformer(preset("test", **size))
        cfg = TrainConfig(steps=steps, batch_size=16, lr=3e-3, warmup_steps=20, eval_every=steps,
                          save_every=steps, device=device)
        stage = LogitStage(packed, packed_val, cfg, teacher, "forward_kl", 2.0, alpha)
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
    results["teacher"] = {"val_loss": teacher_loss, "params": t.num_params,
                          **{k: v for k, v in answer_scores(teacher, tok, data.test).items()
                             if k in ("accuracy", "stop_rate")}}
    d, p = results["distilled"], results["plain"]
    print(f"   student {d['params'] / 1e6:.2f}M vs teacher {t.num_params / 1e6:.2f}M parameters: "
          f"held-out loss {d['val_loss']:.3f} distilled vs {p['val_loss']:.3f} without "
          f"(teacher {teacher_loss:.3f}); KL to teacher {d['val_kl']:.3f} vs {p['val_kl']:.3f}")
    return results
