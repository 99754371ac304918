"""Classification finetuning: a causal language model becomes a text classifier.

Run as:
    jielong train classify reviews.jsonl --model Qwen/Qwen2.5-0.5B --out runs/cls
    jielong train classify spam.jsonl --model runs/demo/model --val held_out.jsonl

Data: JSONL, one `{"text": "...", "label": "spam"}` object a line (a label may be a string
or an integer; `--text_field` / `--label_field` name other fields). Labels are sorted into
ids deterministically: numerically when every label is an integer, else as strings. Unless
`--val FILE` is given, `--val_fraction` of each class is held out (a stratified split).

The model (`jielong.classifier.Classifier`) is the base model's transformer body with a
linear head, `score`, on the last non-padding token — exactly transformers'
`LlamaForSequenceClassification` (and Qwen2/Qwen3/Mistral's). The result, OUT/model, is an
HF directory that `AutoModelForSequenceClassification.from_pretrained` loads, labels
included (`id2label`). Texts are encoded as a Hugging Face tokenizer encodes them by
default, and texts longer than `--max_len` tokens keep their start, like HF's default
`truncation_side="right"`: a `pipeline("text-classification", truncation=True)` on
OUT/model sees the same tokens.

Writes OUT/model, OUT/metrics.jsonl, OUT/loss.png, OUT/report.json and OUT/confusion.png
(rows: true class, columns: predicted), and prints a per-class precision/recall/F1 table
(`jielong.eval.classification`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from jielong.classifier import (
    checkpoint_fns,
    encode_texts,
    from_pretrained_lm,
    pad_batch,
    predict_logits,
    save_classifier,
)
from jielong.data.readers import iter_records
from jielong.errors import UserError
from jielong.eval.classification import classification_report, confusion_png, format_report
from jielong.files import write_json
from jielong.plots import loss_curve
from jielong.runtime import init_distributed, is_main_process, pick_device
from jielong.train.loop import TrainConfig, context_length, fit
from jielong.train.sampler import EpochSampler

CLASSIFY_TRAIN = TrainConfig(lr=2e-5, warmup_steps=10, steps=200, batch_size=16, eval_every=50,
                             save_every=100)  # `train classify` defaults

# ----------------------------------------------------------------------------------- data


@dataclass
class Example:
    text: str
    label: str
    where: str  # file:line


def _label_of(value: object, where: str, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        shown = json.dumps(value, ensure_ascii=False)[:40]
        raise UserError(f"{where}: label field {field!r} is {type(value).__name__} {shown}; a "
                        "label must be a string or an integer")
    label = str(value).strip()
    if not label:
        raise UserError(f"{where}: empty label in field {field!r}; give every line a class name")
    return label


def read_examples(path: str | Path, text_field: str = "text", label_field: str = "label") -> list[Example]:
    """The (text, label) examples of a JSONL file; a user mistake is a `file:line` UserError."""
    out = []
    for where, obj in iter_records(path):
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object like "
                            f'{{"{text_field}": "...", "{label_field}": "..."}}, '
                            f"got {type(obj).__name__}")
        for name in (text_field, label_field):
            if name not in obj:
                have = ", ".join(map(repr, list(obj)[:12])) or "none"
                flag = "--text_field" if name == text_field else "--label_field"
                raise UserError(f"{where}: no {name!r} field (fields: {have}); add it, or pass "
                                f"{flag} NAME to read another field")
        text = obj[text_field]
        if not isinstance(text, str):
            raise UserError(f"{where}: text field {text_field!r} is {type(text).__name__}, not a "
                            "string")
        if not text.strip():
            raise UserError(f"{where}: empty text in field {text_field!r}; remove the line or "
                            "give it text")
        out.append(Example(text, _label_of(obj[label_field], where, label_field), where))
    if not out:
        raise UserError(f"{path}: no examples; each line must be a JSON object with "
                        f"{text_field!r} and {label_field!r} fields")
    return out


def sort_labels(names) -> list[str]:
    """Distinct class names in id order: numerically when all are integers, else as strings."""
    names = set(names)
    if all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def class_names(examples: list[Example], path: str | Path) -> list[str]:
    labels = sort_labels(e.label for e in examples)
    if len(labels) < 2:
        raise UserError(f"{examples[0].where}: every example in {path} has the label "
                        f"{labels[0]!r} ({len(examples)} examples); a classifier needs examples "
                        "of at least two classes")
    return labels


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices: `fraction` of each class held out (at least one of a class with
    two or more examples, never its last), shuffled by `seed`; each list in index order."""
    if not 0 <= fraction < 1:
        raise UserError(f"--val_fraction={fraction} must be in [0, 1)")
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    rng = random.Random(seed)
    val = []
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        n = len(idx)
        k = min(n - 1, max(1, round(n * fraction))) if fraction > 0 and n > 1 else 0
        val += idx[:k]
    held = set(val)
    return [i for i in range(len(labels)) if i not in held], sorted(held)


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


class ClassifyStage:
    """The loop's stage: shuffled examples, right-padded to the batch's longest, and
    cross-entropy on the pooled logits."""

    def __init__(self, train: Encoded, val: Encoded | None, labels: list[str], pad_id: int,
                 cfg: TrainConfig, world: int = 1):
        self.train, self.val, self.labels, self.pad_id = train, val, labels, pad_id
        self.batch_size = cfg.batch_size
        self.sampler = EpochSampler(len(train), cfg.batch_size, cfg.grad_accum, world, cfg.seed)

    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        idx = self.sampler.indices(step, micro, rank)
        seqs = [self.train.ids[i] for i in idx]
        return {"input_ids": pad_batch(seqs, self.pad_id),
                "labels": torch.tensor([self.train.labels[i] for i in idx]),
                "lengths": torch.tensor([len(s) for s in seqs])}

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        logits = model(batch["input_ids"])
        return F.cross_entropy(logits.float(), batch["labels"]), int(batch["lengths"].sum())

    def evaluate(self, model) -> dict[str, float]:
        if self.val is None or not len(self.val):
            return {}
        logits = predict_logits(model, self.val.ids, self.pad_id, self.batch_size)
        y = torch.tensor(self.val.labels)
        report = classification_report(self.val.labels, logits.argmax(-1).tolist(),
                                       list(range(len(self.labels))))
        return {"val_loss": F.cross_entropy(logits, y).item(), "accuracy": report["accuracy"],
                "macro_precision": report["macro"]["precision"],
                "macro_recall": report["macro"]["recall"], "macro_f1": report["macro"]["f1"]}


# -------------------------------------------------------------------------------- command


def _encode(tok, examples: list[Example], index: dict[str, int], max_len: int, pad_id: int) -> tuple[Encoded, int]:
    ids, cut = encode_texts(tok, [e.text for e in examples], max_len)
    for e, s in zip(examples, ids, strict=True):
        if all(t == pad_id for t in s):
            raise UserError(f"{e.where}: the text is only padding tokens ({tok.decode(s)!r}); "
                            "give it real text")
    return Encoded(ids, [index[e.label] for e in examples]), cut


def classify(
    data: str,
    model: str = "runs/demo/model",
    out: str = "runs/classify",
    val: str | None = None,
    val_fraction: float = 0.2,
    text_field: str = "text",
    label_field: str = "label",
    max_len: int | None = None,
    resume: bool = False,
    train: TrainConfig = CLASSIFY_TRAIN,
) -> dict:
    """Finetune a language model into a text classifier (JSONL lines with text and label).

    Args:
        data: Training JSONL: one {"text": ..., "label": ...} object a line.
        model: Base causal language model: a jielong or Hugging Face model directory, or a hub id.
        out: Run directory (checkpoints, metrics.jsonl, loss.png, report.json, confusion.png, model/).
        val: Validation JSONL (default: hold out --val_fraction of each class of the data).
        val_fraction: Share of each class held out when --val is not given (0: none).
        text_field: The text field of each line.
        label_field: The label field of each line (a string or an integer).
        max_len: Tokens per text (default: the model's context); longer texts keep their start.
        resume: Continue from the last checkpoint in OUT.
        train: Optimisation settings (steps, batch size, learning rate, …).
    """
    train.validate()
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction={val_fraction} must be in [0, 1)")
    examples = read_examples(data, text_field, label_field)
    labels = class_names(examples, data)
    index = {name: i for i, name in enumerate(labels)}
    if val:
        held = read_examples(val, text_field, label_field)
        for e in held:
            if e.label not in index:
                raise UserError(f"{e.where}: label {e.label!r} does not occur in the training "
                                f"data {data} (its labels: {', '.join(labels)})")
    else:
        keep, hold = stratified_split([index[e.label] for e in examples], val_fraction, train.seed)
        examples, held = [examples[i] for i in keep], [examples[i] for i in hold]

    device = pick_device(train.device)
    _, world = init_distributed(device)
    clf, tok = from_pretrained_lm(model, labels, seed=train.seed)
    cfg = clf.config
    max_len = context_length(max_len, cfg.max_position_embeddings, "--max_len", minimum=1)
    pad_id = cfg.pad_token_id
    train_set, cut = _encode(tok, examples, index, max_len, pad_id)
    val_set, cut_val = _encode(tok, held, index, max_len, pad_id) if held else (None, 0)
    tok.config = {**tok.config, "model_max_length": max_len}  # what HF truncates to, too
    stage = ClassifyStage(train_set, val_set, labels, pad_id, train, world)
    run = Path(out)
    main = is_main_process()
    if main:
        counts = ", ".join(f"{name} {sum(1 for e in examples if e.label == name)}" for name in labels)
        n_params = sum(p.numel() for p in clf.parameters())
        print(f"classify: {len(labels)} classes ({counts}); {len(train_set):,} train / "
              f"{len(held):,} validation examples, {stage.sampler.epochs(train.steps):.1f} epochs; "
              f"{n_params / 1e6:.3g}M parameters ({cfg.model_type})")
        if cut or cut_val:
            print(f"note: {cut + cut_val:,} texts longer than --max_len {max_len} tokens keep "
                  "their start")
    save_fn, load_fn = checkpoint_fns()
    summary = fit(clf, stage, train, run, tokenizer=tok, resume=resume, desc="classify",
                  save_fn=save_fn, load_fn=load_fn)
    if not main:
        return summary
    path = save_classifier(run / "model", clf, tok)
    loss_curve(run / "metrics.jsonl", run / "loss.png", title="classification finetuning")
    result = {**summary, "model": str(path), "metrics": str(run / "metrics.jsonl"),
              "curve": str(run / "loss.png")}
    if val_set is None:
        print(f"done: {summary['steps']} steps, loss {summary['loss']:.3f} (nothing held out: "
              f"no validation report)\nmodel: {path}  curve: {run / 'loss.png'}")
        return result
    clf.eval()
    pred = predict_logits(clf, val_set.ids, pad_id, train.batch_size).argmax(-1).tolist()
    report = classification_report([labels[i] for i in val_set.labels], [labels[i] for i in pred],
                                   labels)
    write_json(run / "report.json", report)
    confusion_png(report, run / "confusion.png", title="validation")
    print(format_report(report))
    print(f"done: {summary['steps']} steps, loss {summary['loss']:.3f}; validation accuracy "
          f"{report['accuracy']:.3f}, macro F1 {report['macro']['f1']:.3f}\n"
          f"model: {path}  report: {run / 'report.json'}  confusion: {run / 'confusion.png'}  "
          f"curve: {run / 'loss.png'}")
    return {**result, "accuracy": report["accuracy"], "macro_f1": report["macro"]["f1"],
            "report": str(run / "report.json"), "confusion": str(run / "confusion.png")}

