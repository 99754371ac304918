"""The sequence classifier: a causal language model's body with a linear head, as a text
classifier or (with one output) a reward model — its class, its Hugging Face directory in
and out, and prediction.

The model is the base model's transformer body with a linear head, `score`, that reads the
final hidden state of the last token — exactly transformers' `LlamaForSequenceClassification`
(and Qwen2/Qwen3/Mistral's): parameter names `model.*` and `score.weight`, no lm_head, and
the pooled token is the rightmost one whose id is not `pad_token_id`. Because attention is
causal, that token has read the whole text. (So a text that itself ends in the pad token,
e.g. a literal <|endoftext|> when pad = eos, is read up to the token before it, in
transformers and here alike. A base model without a pad token gets its tokenizer's, else
its eos token, written into config.json.) A saved classifier is an HF directory that
`AutoModelForSequenceClassification.from_pretrained` loads, labels included (`id2label`).

Texts are encoded as a Hugging Face tokenizer encodes them by default (with the special
tokens its post-processor adds, e.g. Llama 3's <|begin_of_text|>), and texts longer than
`max_len` tokens keep their start, like HF's default `truncation_side="right"`.

A reward model (`jielong train reward`) is a classifier with one label; `load_reward` and
`reward_scores` read it and score conversations' final replies with it.

Trained by `jielong train classify` (`jielong.train.classify`) and `jielong train reward`
(`jielong.train.reward`); its metrics and confusion plot are `jielong.eval.classification`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from jielong.checkpoint import (
    TRAINER_STATE,
    NoInit,
    load_model,
    read_safetensors,
    save_weights,
    weight_files,
)
from jielong.config import ARCHITECTURES, ModelConfig
from jielong.data.chat import IGNORE
from jielong.data.preferences import encode_response
from jielong.errors import UserError
from jielong.files import atomic_dir, write_json
from jielong.hub import resolve_model
from jielong.model import Transformer, rope_frequencies
from jielong.tokenizer import Tokenizer

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


# ----------------------------------------------------------------------------- prediction


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


# --------------------------------------------------------------------------- reward models


def encode_scored(tok, prompt: list[dict], reply: list[dict]) -> list[int]:
    """Token ids of prompt + reply with the chat template, up to and including the reply's
    end-of-turn token: the sequence whose last token the reward is read at."""
    ids, labels = encode_response(tok, prompt, reply)
    last = max(i for i, t in enumerate(labels) if t != IGNORE)
    return ids[:last + 1]


def load_reward(path: str | Path, device: str | torch.device = "cpu"):
    """(reward model, tokenizer) from a directory written by `jielong train reward` (or any
    HF sequence classifier with num_labels=1); a run directory means its model/."""
    d = Path(path)
    if not d.is_dir():
        raise UserError(f"{d}: no such reward model directory; pass the model/ folder that "
                        "`jielong train reward` wrote")
    if not (d / "config.json").is_file() and (d / "model" / "config.json").is_file():
        d = d / "model"
    model, tok = load_classifier(d, device=device)
    if model.num_labels != 1:
        raise UserError(f"{d}: a classifier with {model.num_labels} classes "
                        f"({', '.join(model.labels)}), not a reward model (one output); train one "
                        "with `jielong train reward`")
    return model, tok


def reward_scores(model: Classifier, tok, conversations: list[list[dict]],
                  batch_size: int = 16) -> list[float]:
    """The reward of each conversation's final assistant reply, given the messages before it.
    A conversation longer than the model's context keeps its end (the reply)."""
    limit = model.config.max_position_embeddings
    ids = []
    for i, conv in enumerate(conversations):
        if not conv or not isinstance(conv[-1], dict) or conv[-1].get("role") != "assistant":
            raise UserError(f"conversation {i}: must end with the assistant reply to score")
        try:
            ids.append(encode_scored(tok, conv[:-1], conv[-1:])[-limit:])
        except UserError as e:
            raise UserError(f"conversation {i}: {e}") from None
    if not ids:
        return []
    was_training = model.training
    model.eval()
    scores = predict_logits(model, ids, model.config.pad_token_id, batch_size)[:, 0].tolist()
    model.train(was_training)
    return scores
