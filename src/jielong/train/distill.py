"""Knowledge distillation: a small student learns from a larger teacher.

Run as:
    jielong train distill chats.jsonl runs/sft/model --student_preset test

Logit distillation (teacher and student share a tokenizer): at every reply token the
student matches the teacher's whole next-token distribution, softened by a temperature T,
mixed with the ordinary cross-entropy on the data:

    loss = alpha · CE(student, data) + (1 − alpha) · T² · D(teacher_T, student_T)

with D the forward KL (the student covers all the teacher's likely tokens), the reverse KL
(it locks onto the teacher's main mode) or the Jensen–Shannon divergence (symmetric,
bounded) — Hinton et al. 2015; Gu et al. 2024 (MiniLLM) for the reverse direction.

Sequence-level distillation (Kim & Rush 2016), for different tokenizers: the teacher
writes its own reply to every prompt of the data, and the student is finetuned on those
replies (written to OUT/teacher_data.jsonl, so they can be read).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from jielong.checkpoint import NoInit, save_model
from jielong.config import preset
from jielong.data.chat import IGNORE, encode
from jielong.data.formats import read_conversations
from jielong.errors import UserError
from jielong.files import write_text
from jielong.hub import open_model
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer
from jielong.plots import loss_curve
from jielong.runtime import is_main_process, pick_device
from jielong.train.common import split, summarize_params
from jielong.train.loop import TrainConfig, context_length, fit
from jielong.train.losses import linear_cross_entropy
from jielong.train.packing import PackedStage, attention_mask, pack, packed_rows

DISTILL_TRAIN = TrainConfig(lr=1e-3, steps=300, batch_size=8, warmup_steps=20)  # `train distill` defaults
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, kind: str,
               temperature: float = 1.0) -> torch.Tensor:
    """Per-row divergence between the two softened distributions, (N, V) -> (N,)."""
    t = F.log_softmax(teacher_logits.float() / temperature, -1)
    s = F.log_softmax(student_logits.float() / temperature, -1)
    if kind == "forward_kl":
        return (t.exp() * (t - s)).sum(-1)
    if kind == "reverse_kl":
        return (s.exp() * (s - t)).sum(-1)
    if kind == "jsd":
        m = torch.logaddexp(t, s) - torch.log(torch.tensor(2.0, device=t.device))
        return 0.5 * (t.exp() * (t - m)).sum(-1) + 0.5 * (s.exp() * (s - m)).sum(-1)
    raise UserError(f"--divergence {kind!r}: choose one of {', '.join(DIVERGENCES)}")


def _head(model) -> torch.Tensor:
    return getattr(model, "module", model).lm_head.weight  # unwrap DDP


def both_hidden(student, teacher, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states of student and teacher (no gradient) on a packed batch."""
    mask = attention_mask(batch["docs"])
    hidden = student(batch["input_ids"], batch["positions"], attn_mask=mask, hidden_only=True)
    with torch.no_grad():
        t_hidden = teacher(batch["input_ids"], batch["positions"], attn_mask=mask, hidden_only=True)
    return hidden, t_hidden


def kd_loss(student, teacher, hidden, t_hidden, targets, kind: str, temperature: float,
            chunk: int = 512) -> torch.Tensor:
    """Mean divergence over the learned positions, in chunks (logits are vocabulary-wide)."""
    keep = targets != IGNORE
    h, th = hidden[keep], t_hidden[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk):
        s_logits = h[i:i + chunk] @ _head(student).T
        with torch.no_grad():
            t_logits = th[i:i + chunk] @ teacher.lm_head.weight.T
        total = total + divergence(t_logits, s_logits, kind, temperature).sum()
    return total / max(1, h.shape[0])


class LogitStage(PackedStage):
    """Packed conversations; the loss mixes CE with a divergence from the teacher."""

    def __init__(self, train, val, cfg: TrainConfig, teacher, kind: str, temperature: float,
                 alpha: float, world: int = 1):
        super().__init__(train, val, cfg, world)
        self.teacher, self.kind, self.T, self.alpha = teacher, kind, temperature, alpha

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        hidden, t_hidden = both_hidden(model, self.teacher, batch)
        targets = batch["labels"]
        ce = linear_cross_entropy(hidden, _head(model), targets)
        kd = kd_loss(model, self.teacher, hidden, t_hidden, targets, self.kind, self.T)
        loss = self.alpha * ce + (1 - self.alpha) * self.T ** 2 * kd
        return loss, int((batch["docs"] >= 0).sum())

    def evaluate(self, model) -> dict[str, float]:
        """Held-out CE and the student's forward KL from the teacher (T = 1)."""
        if self.val is None or self.val.inputs.shape[0] == 0:
            return {}
        return {"val_loss": super().evaluate(model)["val_loss"],
                "val_kl": kl_to_teacher(model, self.teacher, self.val, self.batch_size)}


@torch.no_grad()
def kl_to_teacher(student, teacher, packed, batch_size: int = 8) -> float:
    """Mean forward KL(teacher ‖ student) at T = 1 over the learned tokens of packed rows."""
    device = next(student.parameters()).device
    total, count = 0.0, 0
    for i in range(0, packed.inputs.shape[0], batch_size):
        b = {k: v.to(device) for k, v in packed_rows(packed, slice(i, i + batch_size)).items()}
        hidden, t_hidden = both_hidden(student, teacher, b)
        n = int((b["labels"] != IGNORE).sum())
        total += kd_loss(student, teacher, hidden, t_hidden, b["labels"], "forward_kl", 1.0).item() * n
        count += n
    return total / max(1, count)


def same_vocabulary(a, b) -> bool:
    return a.backend.get_vocab(with_added_tokens=True) == b.backend.get_vocab(with_added_tokens=True)


def teacher_replies(teacher, tok, conversations: list[list[dict]], max_new_tokens: int,
                    batch_size: int = 16) -> list[list[dict]]:
    """The conversations with their last reply rewritten by the teacher (greedy)."""

    s = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
    stops = tok.end_ids | ({teacher.config.eos_token_id} - {None})
    out = []
    for i in range(0, len(conversations), batch_size):
        chunk = conversations[i:i + batch_size]
        prompts = [tok.encode_chat(c[:-1], add_generation_prompt=True)[0] for c in chunk]
        for c, ids in zip(chunk, generate_ids(teacher, prompts, s, stops), strict=True):
            reply = tok.decode(ids).strip()
            if reply:  # an empty reply teaches nothing
                out.append(c[:-1] + [{"role": "assistant", "content": reply}])
    if not out:
        raise UserError("the teacher wrote no non-empty reply; is it an instruction-tuned model?")
    return out


def keep_layers(model, layers: list[int]):
    """A shallower copy of `model` made of the chosen decoder layers (in that order) with the
    same embeddings, norm and head: the student initialisation of DistilBERT (Sanh et al.
    2019), which took every other layer of its teacher."""
    n = model.config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < n]
    if not layers or bad:
        raise UserError(f"--student_layers {' '.join(map(str, layers))}: the model has layers 0–{n - 1}")
    cfg = replace(model.config, num_hidden_layers=len(layers))
    with torch.device("meta"), NoInit():
        small = Transformer(cfg)
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.layers."):
            i = int(k.split(".")[2])
            for j in (j for j, keep in enumerate(layers) if keep == i):
                state[k.replace(f"model.layers.{i}.", f"model.layers.{j}.", 1)] = v.clone()
        else:
            state[k] = v.clone()
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing = set(small.load_state_dict(state, strict=False, assign=True).missing_keys)
    assert missing <= {"lm_head.weight"}, missing
    if cfg.tie_word_embeddings:
        small.lm_head.weight = small.model.embed_tokens.weight
    small.inv_freq = model.inv_freq.clone()
    return small


def build_student(student: str | None, student_preset: str | None, teacher, tok, seed: int,
                  layers: list[int] | None = None):
    """The student: a model directory / hub id, or a fresh preset-sized model using the
    teacher's tokenizer (and context length); with `layers`, only those layers of the
    student model, or of the teacher when no student is named."""
    if student and student_preset:
        raise UserError("give --student (a model) or --student_preset (a fresh size), not both")
    if layers and student_preset:
        raise UserError("--student_layers takes layers of --student or of the teacher, not of a "
                        "fresh --student_preset")
    if student:
        model, stok, gen = open_model(student, dtype="float32")
        return (keep_layers(model, layers) if layers else model), stok, gen
    if layers:
        return keep_layers(teacher, layers), tok, {}
    if not student_preset:
        raise UserError("no student: pass --student DIR, --student_preset NAME (e.g. test) or "
                        "--student_layers (e.g. 0 3: those layers of the teacher)")
    t = teacher.config
    cfg = preset(student_preset, vocab_size=t.vocab_size, max_position_embeddings=t.max_position_embeddings,
                 eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id)
    torch.manual_seed(seed)
    return Transformer(cfg), tok, {}


def distill(
    data: list[str],
    teacher: str,
    student: str | None = None,
    student_preset: str | None = None,
    student_layers: list[int] | None = None,
    out: str = "runs/distill",
    mode: Literal["auto", "logits", "sequences"] = "auto",
    divergence_kind: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl",
    temperature: float = 2.0,
    alpha: float = 0.5,
    val_fraction: float = 0.05,
    system: str | None = None,
    seq_len: int | None = None,
    max_new_tokens: int = 256,
    resume: bool = False,
    train: TrainConfig = DISTILL_TRAIN,
) -> dict:
    """Distill a teacher into a smaller student on conversation data.

    Args:
        data: Conversation JSONL files (OpenAI messages, ShareGPT or alpaca).
        teacher: The teacher model (directory or hub id).
        student: The student model (directory or hub id), e.g. a smaller pretrained one.
        student_preset: Or a fresh student of this preset size with the teacher's tokenizer.
        student_layers: Or a student made of these layers of --student or of the teacher
            (e.g. 0 3), with its embeddings and head.
        out: Run directory (student model in OUT/model).
        mode: logits (same tokenizer), sequences (teacher-written replies), or auto.
        divergence_kind: forward_kl, reverse_kl or jsd between teacher and student.
        temperature: Softening temperature for logit distillation.
        alpha: Weight of the ordinary cross-entropy; 1 - alpha goes to the divergence.
        val_fraction: Share of conversations held out for validation.
        system: System prompt for conversations that have none.
        seq_len: Tokens per packed row (default: the shorter of the two models' contexts).
        max_new_tokens: Longest teacher reply in sequence mode.
        resume: Continue from the last checkpoint in OUT.
        train: Optimisation settings (steps, batch size, learning rate, …).
    """
    train.validate()
    if not 0 <= alpha <= 1 or temperature <= 0:
        raise UserError(f"--alpha {alpha} must be in [0, 1] and --temperature {temperature} > 0")
    device = pick_device(train.device)
    t_model, t_tok, _ = open_model(teacher, device=device, dtype="float32")
    for p in t_model.parameters():
        p.requires_grad_(False)
    s_model, s_tok, gen = build_student(student, student_preset, t_model, t_tok, train.seed,
                                        student_layers)
    shared = same_vocabulary(t_tok, s_tok) and t_model.config.vocab_size == s_model.config.vocab_size
    if mode == "auto":
        mode = "logits" if shared else "sequences"
    if mode == "logits" and not shared:
        raise UserError("logit distillation needs the teacher's and student's tokenizers to be the "
                        "same; use --mode sequences")
    seq_len = context_length(seq_len, min(s_model.config.max_position_embeddings,
                                          t_model.config.max_position_embeddings))
    run = Path(out)
    conversations = [m for _, m in read_conversations(data, system)]
    train_c, val_c = split(conversations, val_fraction, train.seed)
    if mode == "sequences":
        path = run / "teacher_data.jsonl"
        if is_main_process():
            if path.exists() and resume:
                train_c = [json.loads(ln)["messages"] for ln in path.read_text().splitlines()]
            else:
                print(f"the teacher writes replies to {len(train_c):,} prompts …")
                n_prompts = len(train_c)
                train_c = teacher_replies(t_model, t_tok, train_c, max_new_tokens)
                if len(train_c) < n_prompts:
                    print(f"note: {n_prompts - len(train_c)} empty teacher replies dropped")
                run.mkdir(parents=True, exist_ok=True)
                write_text(path, "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n"
                                         for c in train_c))
    pad = s_model.config.pad_token_id if s_model.config.pad_token_id is not None else s_tok.eos_id
    packed = pack([encode(s_tok, c) for c in train_c], seq_len, pad, train.seed)
    packed_val = pack([encode(s_tok, c) for c in val_c], seq_len, pad, train.seed) if val_c else None
    if mode == "logits":
        stage = LogitStage(packed, packed_val, train, t_model, divergence_kind, temperature, alpha)
    else:
        stage = PackedStage(packed, packed_val, train)
    if is_main_process():
        print(f"distill ({mode}{', ' + divergence_kind if mode == 'logits' else ''}): teacher "
              f"{t_model.config.num_params / 1e6:.2f}M → student {s_model.config.num_params / 1e6:.2f}M "
              f"parameters; {packed.n_examples:,} conversations; {summarize_params(s_model)}")
    summary = fit(s_model, stage, train, run, tokenizer=s_tok, resume=resume, desc=f"distill-{mode}")
    if not is_main_process():
        return summary
    path = save_model(run / "model", s_model, s_tok, generation=gen)
    loss_curve(run / "metrics.jsonl", run / "loss.png", title=f"distillation ({mode})")
    print(f"done: {summary['steps']} steps, loss {summary['loss']:.3f}"
          + (f", val_kl {summary['val_kl']:.3f}" if "val_kl" in summary else "")
          + f"\nstudent: {path}  curve: {run / 'loss.png'}")
    return {**summary, "mode": mode, "path": str(path)}
