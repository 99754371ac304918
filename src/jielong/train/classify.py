"""Classification finetuning: a causal language model becomes a text classifier.

    jielong train classify reviews.jsonl --model Qwen/Qwen2.5-0.5B --out runs/cls
    jielong train classify spam.jsonl --model runs/demo/model --val held_out.jsonl

Data: JSONL, one `{"text": "...", "label": "spam"}` object a line (a label may be a string
or an integer; `--text_field` / `--label_field` name other fields). Labels are sorted into
ids deterministically: numerically when every label is an integer, else as strings. Unless
`--val FILE` is given, `--val_fraction` of each class is held out (a stratified split).

The model is the base model's transformer body with a linear head, `score`, that reads the
final hidden state of the last token — exactly transformers' `LlamaForSequenceClassification`
(and Qwen2/Qwen3/Mistral's): parameter names `model.*` and `score.weight`, no lm_head, and
the pooled token is the rightmost one whose id is not `pad_token_id`. Because attention is
causal, that token has read the whole text. (So a text that itself ends in the pad token,
e.g. a literal <|endoftext|> when pad = eos, is read up to the token before it, in
transformers and here alike. A base model without a pad token gets its tokenizer's, else
its eos token, written into config.json.) The result, OUT/model, is an HF directory that
`AutoModelForSequenceClassification.from_pretrained` loads, labels included (`id2label`).

Texts are encoded as a Hugging Face tokenizer encodes them by default (with the special
tokens its post-processor adds, e.g. Llama 3's <|begin_of_text|>), and texts longer than
`--max_len` tokens keep their start, like HF's default `truncation_side="right"`: a
`pipeline("text-classification", truncation=True)` on OUT/model sees the same tokens.

Writes OUT/model, OUT/metrics.jsonl, OUT/loss.png, OUT/report.json and OUT/confusion.png
(rows: true class, columns: predicted), and prints a per-class precision/recall/F1 table.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from jielong.checkpoint import TRAINER_STATE, NoInit, read_safetensors, save_weights, weight_files
from jielong.config import ARCHITECTURES, ModelConfig
from jielong.errors import UserError
from jielong.files import atomic_dir, atomic_path, write_json
from jielong.model import Transformer, rope_frequencies
from jielong.train.loop import TrainConfig, fit

CLASSIFY_TRAIN = TrainConfig(lr=2e-5, warmup_steps=10, steps=200, batch_size=16, eval_every=50,
                             save_every=100)  # `train classify` defaults

# ---------------------------------------------------------------------------------- model


class Classifier(nn.Module):
    """A transformer body (`model.*`) and a bias-free linear head (`score`) on the last
    non-padding token: transformers' `<Family>ForSequenceClassification`, name for name.
    One label makes it a scalar scorer (num_labels=1, e.g. a reward model)."""

    # The body's forward pass is the causal LM's, reused as is: it reads only `config`,
    # `model`, `inv_freq` and `rope_scale`, which a Classifier has too.
    hidden_states = Transformer.hidden_states

    def __init__(self, cfg: ModelConfig, labels: Sequence[str], body: Transformer | None = None):
        super().__init__()
        if len(labels) < 1:
            raise UserError("a classifier needs at least one label (one: a scalar score)")
        body = body if body is not None else Transformer(cfg)
        self.config = cfg
        self.labels = [str(x) for x in labels]
        self.model = body.model  # the lm_head is left behind
        self.rope_scale = body.rope_scale
        self.register_buffer("inv_freq", body.inv_freq, persistent=False)
        self.score = nn.Linear(cfg.hidden_size, len(self.labels), bias=False)
        nn.init.normal_(self.score.weight, std=cfg.initializer_range)  # as HF initialises it

    @classmethod
    def from_causal_lm(cls, lm: Transformer, labels: Sequence[str]) -> Classifier:
        """A classifier on `lm`'s body (shared, not copied), with a small random head."""
        return cls(lm.config, labels, body=lm)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def pool_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) the position of each row's rightmost token that is not the pad token (0 for
        a row of padding only) — transformers' rule, whichever side was padded."""
        pad = self.config.pad_token_id
        if pad is None:
            return torch.full(input_ids.shape[:1], input_ids.shape[1] - 1, device=input_ids.device)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return (positions * (input_ids != pad)).argmax(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_labels) for right-padded `input_ids` (B, T).

        attention_mask: optional (B, T), 1 for real tokens and 0 for padding, as in
        transformers; needed only for left padding (with right padding, causal attention
        already keeps every real token from seeing the padding after it).
        """
        mask = None
        if attention_mask is not None:
            T = input_ids.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            eye = torch.eye(T, dtype=torch.bool, device=input_ids.device)  # no empty softmax row
            mask = ((causal & attention_mask.bool()[:, None, :]) | eye)[:, None]
        hidden = self.hidden_states(input_ids, None, None, mask)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return self.score(hidden[rows, self.pool_index(input_ids)])


def _pad_id(cfg: ModelConfig, tok) -> int:
    """The model's pad id; else the tokenizer's pad token; else the eos token."""
    if cfg.pad_token_id is not None:
        return cfg.pad_token_id
    pad = tok.config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    if pad and tok.backend.token_to_id(pad) is not None:
        return tok.backend.token_to_id(pad)
    return cfg.eos_token_id if cfg.eos_token_id is not None else tok.eos_id


def from_pretrained_lm(name: str | Path, labels: Sequence[str], seed: int = 0):
    """(Classifier, Tokenizer) from a causal LM directory or hub id: its body, a new head
    (seeded by `seed`), and pad_token_id set (transformers needs it to find the last token)."""
    from jielong.checkpoint import load_model
    from jielong.hub import resolve_model
    from jielong.tokenizer import Tokenizer

    path = resolve_model(name)
    lm = load_model(path, dtype=torch.float32)
    tok = Tokenizer.from_dir(path)
    lm.config.pad_token_id = _pad_id(lm.config, tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = Classifier.from_causal_lm(lm, labels)
    return clf, tok


# ------------------------------------------------------------------------- save and load


def hf_config(clf: Classifier) -> dict:
    """config.json for `AutoModelForSequenceClassification`."""
    d = clf.config.to_hf()
    d["architectures"] = [ARCHITECTURES[clf.config.model_type].replace(
        "ForCausalLM", "ForSequenceClassification")]
    d["id2label"] = {str(i): name for i, name in enumerate(clf.labels)}
    d["label2id"] = {name: i for i, name in enumerate(clf.labels)}
    d["num_labels"] = clf.num_labels
    # transformers' name for one output is "regression" (a reward model is one).
    d["problem_type"] = "regression" if clf.num_labels == 1 else "single_label_classification"
    d["use_cache"] = False
    return d


def save_classifier(out_dir: str | Path, clf: Classifier, tokenizer=None,
                    labels: Sequence[str] | None = None, trainer_state: dict | None = None,
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `clf` as an HF sequence-classification directory, atomically: config.json
    (with id2label, label2id, num_labels, pad_token_id), safetensors weights, the tokenizer
    files, and trainer_state.pt when given (a training checkpoint)."""
    if labels is not None and [str(x) for x in labels] != clf.labels:
        raise ValueError(f"labels {list(labels)} differ from the classifier's {clf.labels}")
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        clf.config.torch_dtype = str(next(clf.parameters()).dtype).removeprefix("torch.")
        write_json(tmp / "config.json", hf_config(clf))
        sd = {k: v.detach().contiguous().cpu() for k, v in clf.state_dict().items()}
        save_weights(sd, tmp, max_shard_bytes)
        if tokenizer is not None:
            tokenizer.save(tmp)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
    return out


def read_labels(path: str | Path) -> list[str]:
    """The class names of a classifier directory, from config.json's id2label."""
    f = Path(path) / "config.json"
    try:
        id2label = json.loads(f.read_text(encoding="utf-8")).get("id2label") or {}
        labels = [id2label[str(i)] for i in range(len(id2label))]
    except FileNotFoundError:
        raise UserError(f"{f}: not found; pass a classifier directory from "
                        "`jielong train classify`") from None
    except (json.JSONDecodeError, KeyError, AttributeError) as e:
        raise UserError(f"{f}: id2label is missing or malformed ({e}); it must map 0..N-1 to "
                        "class names") from None
    if len(labels) < 1:
        raise UserError(f"{f}: id2label names no classes; a classifier directory needs at "
                        "least one (is this a causal LM rather than a classifier?)")
    return labels


def _read_state(d: Path, clf: Classifier):
    """Yield (name, tensor) of a classifier directory's weights, checked against `clf`."""
    expected = dict(clf.state_dict())
    files = weight_files(d)
    if not files:
        raise UserError(f"{d}: has no model.safetensors (or sharded safetensors with an index)")
    seen = set()
    for f in files:
        for k, t in read_safetensors(f):
            if k not in expected:
                hint = " (a causal LM's head: this is not a classifier)" if k == "lm_head.weight" else ""
                raise UserError(f"{f}: unexpected tensor {k!r}{hint}")
            if t.shape != expected[k].shape:
                raise UserError(f"{f}: tensor {k!r} has shape {tuple(t.shape)} but config.json "
                                f"implies {tuple(expected[k].shape)}")
            seen.add(k)
            yield k, t
    missing = sorted(set(expected) - seen)
    if missing:
        raise UserError(f"{d}: weights are missing {len(missing)} tensors, e.g. {missing[0]!r}")


def load_classifier(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32):
    """(Classifier, Tokenizer) from a directory written by `save_classifier` (or by
    transformers' `save_pretrained` of a Llama/Qwen2/Qwen3/Mistral sequence classifier)."""
    from jielong.tokenizer import Tokenizer

    d = Path(path)
    if not d.is_dir():
        raise UserError(f"{d}: no such classifier directory")
    cfg = ModelConfig.load(d / "config.json")
    labels = read_labels(d)
    device = torch.device(device)
    with torch.device("meta"), NoInit():
        clf = Classifier(cfg, labels)
    state = {}
    for k, t in _read_state(d, clf):
        state[k] = torch.empty(t.shape, dtype=dtype, device=device)
        state[k].copy_(t)
        del t
    clf.load_state_dict(state, assign=True)
    clf.inv_freq = rope_frequencies(cfg, device=device)[0]
    return clf.eval(), Tokenizer.from_dir(d)


def checkpoint_fns():
    """(save_fn, load_fn) for `fit`: a checkpoint is a whole classifier directory."""

    def save_fn(model: Classifier, path: Path, tokenizer, trainer_state: dict) -> None:
        save_classifier(path, model, tokenizer, trainer_state=trainer_state)

    def load_fn(model: Classifier, path: Path) -> None:
        saved = read_labels(path)
        if saved != model.labels:
            raise UserError(f"{path}: the checkpoint's classes {saved} differ from the data's "
                            f"{model.labels}; resume with the same data, or choose another --out")
        state = {k: t.clone() for k, t in _read_state(Path(path), model)}
        model.load_state_dict(state)  # copies into the parameters, on their device and dtype

    return save_fn, load_fn


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
    from jielong.data.readers import iter_records

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


def encode_texts(tok, texts: Sequence[str], max_len: int) -> tuple[list[list[int]], int]:
    """(token ids per text, how many were truncated). Special tokens are added as the
    tokenizer's post-processor says (as `AutoTokenizer(text)` does); a text longer than
    `max_len` tokens keeps its start (HF's default truncation side)."""
    backend = tok.backend
    n_special = backend.num_special_tokens_to_add(False)
    if max_len <= n_special:
        raise UserError(f"--max_len={max_len} leaves no room for text after this tokenizer's "
                        f"{n_special} special tokens; raise it")
    out, cut = [], 0
    for enc in backend.encode_batch(list(texts), add_special_tokens=False):
        if len(enc.ids) + n_special > max_len:
            enc.truncate(max_len - n_special)
            cut += 1
        out.append(backend.post_process(enc).ids if n_special else enc.ids)
    return out, cut


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """(B, longest) right-padded with `pad_id`."""
    x = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return x


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


class Sampler:
    """Example indices for (step, micro, rank): epoch after epoch, each a fresh permutation
    seeded by (seed, epoch), so a batch depends only on its arguments (exact resume)."""

    def __init__(self, n: int, batch_size: int, grad_accum: int, world: int, seed: int):
        self.n, self.batch_size, self.grad_accum, self.world, self.seed = n, batch_size, grad_accum, world, seed
        self._perm: tuple[int, list[int]] = (-1, [])

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        start = ((step * self.grad_accum + micro) * self.world + rank) * self.batch_size
        out = []
        for p in range(start, start + self.batch_size):
            epoch, i = divmod(p, self.n)
            if self._perm[0] != epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = (epoch, torch.randperm(self.n, generator=g).tolist())
            out.append(self._perm[1][i])
        return out

    def epochs(self, steps: int) -> float:
        return steps * self.grad_accum * self.world * self.batch_size / self.n


@torch.no_grad()
def predict_logits(model: Classifier, ids: Sequence[Sequence[int]], pad_id: int,
                   batch_size: int = 32) -> torch.Tensor:
    """(N, num_labels) float logits, batched by similar length to waste little padding."""
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), model.num_labels)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        out[chunk] = model(pad_batch([ids[i] for i in chunk], pad_id).to(device)).float().cpu()
    return out


class ClassifyStage:
    """The loop's stage: shuffled examples, right-padded to the batch's longest, and
    cross-entropy on the pooled logits."""

    def __init__(self, train: Encoded, val: Encoded | None, labels: list[str], pad_id: int,
                 cfg: TrainConfig, world: int = 1):
        self.train, self.val, self.labels, self.pad_id = train, val, labels, pad_id
        self.batch_size = cfg.batch_size
        self.sampler = Sampler(len(train), cfg.batch_size, cfg.grad_accum, world, cfg.seed)

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


def predict(clf: Classifier, tok, texts: Sequence[str], max_len: int | None = None,
            batch_size: int = 32) -> list[tuple[str, float]]:
    """(label, probability) of the most likely class of each text."""
    if max_len is None:
        max_len = min(int(tok.config.get("model_max_length") or 10**9),
                      clf.config.max_position_embeddings)
    ids, _ = encode_texts(tok, texts, max_len)
    was_training = clf.training
    clf.eval()
    probs = predict_logits(clf, ids, clf.config.pad_token_id, batch_size).softmax(-1)
    clf.train(was_training)
    best = probs.max(-1)
    return [(clf.labels[i], p) for i, p in zip(best.indices.tolist(), best.values.tolist(), strict=True)]


# -------------------------------------------------------------------------------- metrics


def classification_report(y_true: Sequence, y_pred: Sequence, labels: Sequence) -> dict:
    """Accuracy, per-class precision/recall/F1/support, their macro (unweighted) and
    weighted (by support) averages, and the confusion matrix (rows: true, columns:
    predicted), for `y_true`/`y_pred` drawn from `labels`. A ratio with a zero denominator
    (a class never predicted, or absent) counts as 0, as scikit-learn does by default."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    index = {y: i for i, y in enumerate(labels)}
    L = len(labels)
    confusion = [[0] * L for _ in range(L)]
    for t, p in zip(y_true, y_pred, strict=True):
        if t not in index or p not in index:
            raise ValueError(f"label {t if t not in index else p!r} is not one of {list(labels)}")
        confusion[index[t]][index[p]] += 1
    n = len(y_true)

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    per_class = {}
    for i, name in enumerate(labels):
        tp = confusion[i][i]
        support = sum(confusion[i])
        predicted = sum(row[i] for row in confusion)
        precision, recall = ratio(tp, predicted), ratio(tp, support)
        per_class[str(name)] = {"precision": precision, "recall": recall,
                                "f1": ratio(2 * precision * recall, precision + recall),
                                "support": support}
    rows = list(per_class.values())
    keys = ("precision", "recall", "f1")
    return {
        "labels": [str(x) for x in labels],
        "n": n,
        "accuracy": ratio(sum(confusion[i][i] for i in range(L)), n),
        "per_class": per_class,
        "macro": {k: ratio(sum(r[k] for r in rows), L) for k in keys},
        "weighted": {k: ratio(sum(r[k] * r["support"] for r in rows), n) for k in keys},
        "confusion": confusion,
    }


def _width(s: str) -> int:
    """Terminal columns of `s`: Han and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def _pad(s: str, width: int, right: bool = False) -> str:
    fill = " " * max(0, width - _width(s))
    return fill + s if right else s + fill


def format_report(report: dict, color: bool | None = None) -> str:
    """The report as a terminal table (per-class scores, averages, confusion matrix);
    coloured on a terminal (see `jielong.tokenizer.use_color`), plain otherwise."""
    from jielong.tokenizer import use_color

    color = use_color() if color is None else color

    def paint(s: str, code: str) -> str:
        return f"\033[{code}m{s}\033[0m" if color and code else s

    def grade(v: float) -> str:  # green / yellow / red
        return "32" if v >= 0.9 else "33" if v >= 0.7 else "31"

    names = report["labels"]
    w = max([_width(x) for x in names] + [len("weighted avg")])
    lines = [paint(_pad("", w) + "  precision  recall      f1  support", "1")]
    for name in names:
        r = report["per_class"][name]
        lines.append(_pad(name, w) + f"  {r['precision']:9.3f}  {r['recall']:6.3f}  "
                     + paint(f"{r['f1']:6.3f}", grade(r["f1"])) + f"  {r['support']:7d}")
    lines.append("")
    for key, title in (("macro", "macro avg"), ("weighted", "weighted avg")):
        r = report[key]
        lines.append(_pad(title, w) + f"  {r['precision']:9.3f}  {r['recall']:6.3f}  "
                     + paint(f"{r['f1']:6.3f}", grade(r["f1"])) + f"  {report['n']:7d}")
    lines.append(_pad("accuracy", w) + " " * 21 + paint(f"{report['accuracy']:6.3f}",
                                                         grade(report["accuracy"]))
                 + f"  {report['n']:7d}")
    lines += ["", paint("confusion matrix (rows: true, columns: predicted)", "1")]
    cw = max([len(str(c)) for row in report["confusion"] for c in row] + [3])
    short = [x if _width(x) <= 12 else x[:10] + "…" for x in names]
    cw = max([cw] + [_width(x) for x in short])
    lines.append(_pad("", w) + "".join("  " + _pad(x, cw, right=True) for x in short))
    for i, name in enumerate(names):
        cells = []
        for j, c in enumerate(report["confusion"][i]):
            code = "32" if i == j and c else "31" if c else "2"
            cells.append("  " + paint(_pad(str(c), cw, right=True), code))
        lines.append(_pad(name, w) + "".join(cells))
    return "\n".join(lines)


_CJK_FONT_HINTS = ("CJK", "Source Han", "WenQuanYi", "Hei", "Ming", "Song", "Kai", "PingFang",
                   "YaHei", "Hiragino", "AR PL")


def _tick_labels(names: list[str]) -> tuple[list[str], list[str]]:
    """(font families, tick labels): a CJK font after the default when one is installed;
    a name the fonts cannot draw becomes `class N`."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    families = [font_manager.fontManager.defaultFamily["ttf"]]
    cjk = next((f for f in font_manager.fontManager.ttflist
                if any(h in f.name for h in _CJK_FONT_HINTS)), None)
    paths = [font_manager.findfont(families[0])]
    if cjk is not None:
        families.append(cjk.name)
        paths.append(cjk.fname)
    drawable = set()
    for p in paths:
        try:
            drawable |= set(FT2Font(p).get_charmap())
        except (OSError, RuntimeError):
            continue
    ticks = [x if all(ord(c) in drawable for c in x) else f"class {i}" for i, x in enumerate(names)]
    return families, ticks


def confusion_png(report: dict, path: str | Path, title: str = "confusion matrix") -> Path:
    """The confusion matrix as a PNG (rows: true class, columns: predicted), with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families, ticks = _tick_labels(report["labels"])
    m = report["confusion"]
    L = len(m)
    size = min(12, 2.5 + 0.6 * L)
    with matplotlib.rc_context({"font.family": families}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
        totals = [max(1, sum(row)) for row in m]
        shade = [[c / t for c in row] for row, t in zip(m, totals, strict=True)]  # recall per row
        im = ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
        if L <= 30:
            for i in range(L):
                for j in range(L):
                    ax.text(j, i, str(m[i][j]), ha="center", va="center", fontsize=9,
                            color="white" if shade[i][j] > 0.5 else "black")
        ax.set_xticks(range(L), ticks, rotation=45 if L > 4 else 0, ha="right" if L > 4 else "center")
        ax.set_yticks(range(L), ticks)
        ax.set(xlabel="predicted", ylabel="true",
               title=f"{title} · accuracy {report['accuracy']:.3f}, macro F1 {report['macro']['f1']:.3f}")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
    return Path(path)


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
    from jielong.plots import loss_curve
    from jielong.runtime import init_distributed, is_main_process, pick_device
    from jielong.train.loop import context_length

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

