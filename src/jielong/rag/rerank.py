"""A cross-encoder reranker: the query and one passage read together by a BERT-family
encoder, one score out; the optional second stage after BM25 / dense retrieval.

A bi-encoder (`jielong.rag.embed`) embeds query and passage apart, so a passage's vector is
computed once for every query; a cross-encoder attends across the pair and ranks better, at
one forward per (query, passage) — so it reorders only the first stage's top few dozen
(Nogueira & Cho 2019, "Passage Re-ranking with BERT"; bge-reranker).

The network is transformers' `BertForSequenceClassification` / `XLMRobertaForSequenceClassification`
with one label, name for name: the encoder (`jielong.encoder.Encoder`), then on the first
token ([CLS] / <s>) dense → tanh → a linear layer to one logit. BERT keeps that dense as its
pooler (`bert.pooler.dense`, then `classifier`); XLM-R as `classifier.dense` and
`classifier.out_proj`. So a bge-reranker-base / -large folder (XLM-R) scores as it does in
transformers, and a saved reranker loads there as a sequence classifier. The pair is one
input, "[CLS] query [SEP] passage [SEP]" with segment ids 0 / 1 (the tokenizer's own pair
template); a long passage is cut, never the query.

    from jielong.rag.rerank import Reranker
    r = Reranker.load("runs/rerank/model")
    r.score("阿明住在哪裡？", ["阿明住在龍鄉。", "阿美養了一隻貓。"])   # [3.1, -2.4]

Trained by `jielong train rerank` (`jielong.train.rerank`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from jielong.checkpoint import read_safetensors, weight_files
from jielong.encoder import Encoder
from jielong.errors import UserError

ARCHITECTURE = {"bert": "BertForSequenceClassification",
                "xlm-roberta": "XLMRobertaForSequenceClassification"}


def head_names(model_type: str) -> tuple[str, str]:
    """The (dense, output) layers' names in a sequence-classification folder."""
    return ("bert.pooler.dense", "classifier") if model_type == "bert" else \
        ("classifier.dense", "classifier.out_proj")


class Reranker(nn.Module):
    def __init__(self, encoder: Encoder):
        super().__init__()
        h = encoder.config.hidden_size
        self.encoder = encoder
        self.dense, self.out = nn.Linear(h, h), nn.Linear(h, 1)
        if encoder.pooler is not None:  # BERT's pretrained pooler is the head's dense layer
            self.dense.load_state_dict(encoder.pooler.dense.state_dict())
            encoder.pooler = None
        nn.init.normal_(self.out.weight, std=0.02)  # as transformers initialises a new head
        nn.init.zeros_(self.out.bias)

    @property
    def max_length(self) -> int:
        """Tokens of a (query, passage) pair; the encoder's, so `save` keeps the window trained with
        (sentence_bert_config.json's max_seq_length): past it a small model's positions were never trained."""
        return self.encoder.max_length

    @max_length.setter
    def max_length(self, n: int) -> None:
        self.encoder.max_length = n

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        """(B,) scores of right-padded pairs."""
        h = self.encoder(input_ids, attention_mask, token_type_ids)[:, 0]
        return self.out(torch.tanh(self.dense(h))).squeeze(-1)

    # -- pairs -----------------------------------------------------------------------------

    def encode_pairs(self, queries: list[str], passages: list[str]) -> dict[str, torch.Tensor]:
        """Right-padded (ids, attention_mask, token_type_ids) of each (query, passage) pair;
        past `max_length` tokens the passage is cut."""
        backend = self.encoder.tokenizer.backend
        backend.no_padding()
        backend.enable_truncation(self.max_length, strategy="only_second")
        lower = self.encoder.lower_case
        pairs = [((q.strip().lower(), p.strip().lower()) if lower else (q.strip(), p.strip()))
                 for q, p in zip(queries, passages, strict=True)]
        enc = backend.encode_batch(pairs, add_special_tokens=True)
        T = max(len(e.ids) for e in enc)
        ids = torch.full((len(enc), T), self.encoder.config.pad_token_id, dtype=torch.long)
        types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
        for r, e in enumerate(enc):
            n = len(e.ids)
            ids[r, :n], types[r, :n], mask[r, :n] = torch.tensor(e.ids), torch.tensor(e.type_ids), 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    @torch.inference_mode()
    def score(self, query: str, passages: list[str], batch_size: int = 32) -> list[float]:
        """One score per passage (higher: more relevant), in the passages' order."""
        device = next(self.parameters()).device
        out: list[float] = []
        for start in range(0, len(passages), batch_size):
            chunk = passages[start:start + batch_size]
            x = {k: v.to(device) for k, v in self.encode_pairs([query] * len(chunk), chunk).items()}
            out += self(**x).float().tolist()
        return out

    # -- files -----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", new_head: bool = False) -> Reranker:
        """A reranker folder (ours, bge-reranker's, any one-label …ForSequenceClassification);
        with `new_head`, any BERT / XLM-R encoder folder, its head started afresh."""
        d = Path(path)
        enc = Encoder.load(d, device=device)
        model = cls(enc)
        dense, out = head_names(enc.config.model_type)
        head = {}
        for f in weight_files(d):
            if f.suffix == ".safetensors":
                head.update({k: t for k, t in read_safetensors(f) if k.startswith(("classifier.", dense))})
        if not new_head:
            if f"{out}.weight" not in head:
                raise UserError(f"{d}: no {out}.weight: not a reranker (a sequence classifier); "
                                "train one with `jielong train rerank --model THIS_FOLDER`")
            if head[f"{out}.weight"].shape[0] != 1:
                raise UserError(f"{d}: its classifier has {head[f'{out}.weight'].shape[0]} labels; "
                                "a reranker has one (a relevance score)")
            for layer, name in ((model.dense, dense), (model.out, out)):
                layer.load_state_dict({"weight": head[f"{name}.weight"], "bias": head[f"{name}.bias"]})
        elif f"{dense}.weight" in head:  # XLM-R's dense is not the encoder's pooler
            model.dense.load_state_dict({"weight": head[f"{dense}.weight"], "bias": head[f"{dense}.bias"]})
        return model.to(device).eval()

    def save(self, path: str | Path) -> Path:
        """A folder that `Reranker.load` and transformers' AutoModelForSequenceClassification read."""
        cfg = self.encoder.config
        dense, out = head_names(cfg.model_type)
        extra = {f"{dense}.weight": self.dense.weight, f"{dense}.bias": self.dense.bias,
                 f"{out}.weight": self.out.weight, f"{out}.bias": self.out.bias}
        prefix = "bert." if cfg.model_type == "bert" else "roberta."
        return self.encoder.save(path, extra=extra, prefix=prefix, config={
            "architectures": [ARCHITECTURE[cfg.model_type]], "num_labels": 1,
            "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}})

