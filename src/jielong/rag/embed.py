"""Embedders: what turns chunks and queries into unit vectors for the dense index.

An embedder is any object with `name` (model + pooling + query instruction: stored in the
index, so a query embedded another way is refused), `dim` and `embed(texts) -> float32
numpy (n, dim)`, L2-normalised, so an inner product is the cosine. Two kinds:

- `EncoderEmbedder`: a BERT / XLM-R folder through `jielong.encoder.Encoder` (bge-small-zh,
  text2vec, m3e, bge-m3, or one from `jielong train embed`), pooled as its
  sentence-transformers files say, then normalised whatever the folder says.
- `DecoderEmbedder`: a jielong / Hugging Face causal LM (Llama, Qwen2/3, Mistral): its final
  hidden states averaged over the text's tokens and normalised — the very function
  (`jielong.model.mean_pooled`) behind the server's /v1/embeddings. A base LM's mean state
  is a weak retriever; `jielong train embed --model LM` trains it into a better one.

`load_embedder(DIR)` picks by config.json's model_type. Queries and passages may be embedded
differently: bge's Chinese models want "为这个句子生成表示以用于检索相关文章：" before a
short query that looks for passages, and nothing before the passages (the bge-*-zh-v1.5
model cards' "query instruction for retrieval"; English: "Represent this sentence for
searching relevant passages: "). `query_prefix=` sets it (default: the one the folder's
config_sentence_transformers.json declares under "prompts", as `jielong train embed
--query_prefix` saves it); it becomes part of `name`, and `embed_queries(embedder, texts)`
applies it (plain `embed` for an embedder without one).

    from jielong.rag.embed import embed_queries, load_embedder
    emb = load_embedder("models/bge-small-zh-v1.5", query_prefix=BGE_ZH_QUERY)
    passages = emb.embed(["今天天氣很好", "The weather is nice"])      # (2, 512) float32
    q = embed_queries(emb, ["天氣如何"])
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from jielong.checkpoint import load_model, weight_files
from jielong.config import ARCHITECTURES
from jielong.encoder import MODEL_TYPES, Encoder
from jielong.errors import UserError
from jielong.model import mean_pooled
from jielong.tokenizer import Tokenizer

BGE_ZH_QUERY = "为这个句子生成表示以用于检索相关文章："  # bge-*-zh-v1.5 model cards
BGE_EN_QUERY = "Represent this sentence for searching relevant passages: "  # bge-*-en-v1.5


def fingerprint(d: Path) -> str:
    """8 hex digits that tell two folders' weights apart without reading them whole: the
    size and the first and last 64 KiB of each weights file (a trained copy of a model
    differs in its tensors' bytes, so in the tail)."""
    h = hashlib.sha256()
    for f in weight_files(d):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(65536))
            fh.seek(max(0, size - 65536))
            h.update(fh.read(65536))
    return h.hexdigest()[:8]


def with_prefix(name: str, query_prefix: str) -> str:
    return name + (f":query={query_prefix}" if query_prefix else "")


def saved_query_prefix(d: Path) -> str:
    """The query instruction a folder declares in config_sentence_transformers.json's
    "prompts" (sentence-transformers 3's place for it; `jielong train embed` writes it)."""
    f = d / "config_sentence_transformers.json"
    try:
        prompts = json.loads(f.read_text(encoding="utf-8")).get("prompts") if f.is_file() else None
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"{f}: not a JSON object; fix or delete it") from None
    return str((prompts or {}).get("query") or "")


class EncoderEmbedder:
    """A bidirectional encoder's pooled, normalised vectors."""

    def __init__(self, path: str | Path, pooling: str | None = None, query_prefix: str | None = None,
                 device: str = "cpu", batch_size: int = 32, max_length: int | None = None):
        d = Path(path)
        query_prefix = saved_query_prefix(d) if query_prefix is None else query_prefix
        self.encoder = Encoder.load(d, device=device, pooling=pooling, normalize=True)
        self.dim = self.encoder.config.hidden_size
        self.query_prefix, self.batch_size, self.max_length = query_prefix, batch_size, max_length
        self.name = with_prefix(f"encoder:{d.resolve().name}:{self.encoder.pooling}:{fingerprint(d)}",
                                query_prefix)

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        v = self.encoder.embed(list(texts), batch_size=self.batch_size, max_length=self.max_length,
                               progress=progress)
        return v.numpy().astype(np.float32, copy=False)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.embed([self.query_prefix + t for t in texts])


class DecoderEmbedder:
    """A causal LM's mean-pooled final hidden states (`jielong.model.mean_pooled`)."""

    def __init__(self, path: str | Path, query_prefix: str | None = None, device: str = "cpu",
                 batch_size: int = 16, max_length: int | None = None):
        d = Path(path)
        query_prefix = saved_query_prefix(d) if query_prefix is None else query_prefix
        self.model = load_model(d, device=device).eval()
        self.tokenizer = Tokenizer.from_dir(d)
        cfg = self.model.config
        self.dim = cfg.hidden_size
        self.max_length = min(max_length or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.query_prefix, self.batch_size = query_prefix, batch_size
        self.name = with_prefix(f"decoder:{d.resolve().name}:mean:{fingerprint(d)}", query_prefix)

    @torch.inference_mode()
    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        ids = [s[:self.max_length] for s in self.tokenizer.encode_batch([t.strip() for t in texts])]
        for i, s in enumerate(ids):
            if not s:
                raise UserError(f"text {i} is empty: a decoder has no token to pool for it; "
                                "drop empty texts before embedding")
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # little padding per batch
        device = next(self.model.parameters()).device
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            T = max(len(ids[i]) for i in rows)
            x = torch.zeros(len(rows), T, dtype=torch.long)
            for r, i in enumerate(rows):
                x[r, :len(ids[i])] = torch.tensor(ids[i])
            lengths = torch.tensor([len(ids[i]) for i in rows])
            out[rows] = mean_pooled(self.model, x.to(device), lengths.to(device)).cpu().numpy()
        return out

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.embed([self.query_prefix + t for t in texts])


def embed_queries(embedder, texts: list[str]) -> np.ndarray:
    """Queries through the embedder's query instruction when it has one, else `embed`."""
    fn = getattr(embedder, "embed_queries", None)
    return fn(list(texts)) if fn is not None else embedder.embed(list(texts))


def load_embedder(path: str | Path, query_prefix: str | None = None, pooling: str | None = None,
                  device: str = "cpu") -> EncoderEmbedder | DecoderEmbedder:
    """The embedder for a model folder: an encoder for model_type bert / xlm-roberta, a
    decoder for llama / mistral / qwen2 / qwen3. query_prefix None: the folder's own
    (`saved_query_prefix`), "" none."""
    d = Path(path)
    try:
        model_type = json.loads((d / "config.json").read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        raise UserError(f"{d}: no config.json; pass a model folder (a BERT / XLM-R encoder such as "
                        "bge-small-zh, or a jielong / Hugging Face causal LM)") from None
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"{d / 'config.json'}: not a JSON object; re-download the model") from None
    if model_type in MODEL_TYPES:
        return EncoderEmbedder(d, pooling=pooling, query_prefix=query_prefix, device=device)
    if model_type in ARCHITECTURES:
        if pooling not in (None, "mean"):
            raise UserError(f"--pooling {pooling}: a decoder ({model_type}) embeds by mean pooling "
                            "only; leave --pooling out")
        return DecoderEmbedder(d, query_prefix=query_prefix, device=device)
    raise UserError(f"{d / 'config.json'}: model_type {model_type!r} embeds neither as an encoder "
                    f"({', '.join(MODEL_TYPES)}) nor as a decoder ({', '.join(ARCHITECTURES)}); "
                    "pass one of those")
