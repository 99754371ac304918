"""Token shards: a corpus tokenized once into memory-mapped arrays, then sampled for training.

    prepare_shards(texts, tok, "runs/x/data")  ->  train-00000.bin … val-00000.bin meta.json

Documents are packed end to end, each followed by `<|endoftext|>`, so the model learns where
a document stops. Tokens are uint16 when the vocabulary fits, else uint32. A held-out share
of whole documents goes to the validation split. `TokenShards` draws (input, target) windows
from the memmaps; a batch depends only on (seed, step, micro-step, rank), which is what lets a
killed run resume on exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from jielong.errors import UserError
from jielong.files import write_json

SHARD_TOKENS = 2**27  # 128M tokens (256 MB as uint16) per file


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class _ShardWriter:
    def __init__(self, d: Path, split: str, dtype: np.dtype):
        self.d, self.split, self.dtype = d, split, dtype
        self.files: list[str] = []
        self.sizes: list[int] = []
        self.f = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.f is None or self.sizes[-1] >= SHARD_TOKENS:
                if self.f is not None:
                    self.f.close()
                self.files.append(f"{self.split}-{len(self.files):05d}.bin")
                self.sizes.append(0)
                self.f = open(self.d / self.files[-1], "wb")
            room = SHARD_TOKENS - self.sizes[-1]
            part, ids = ids[:room], ids[room:]
            part.astype(self.dtype).tofile(self.f)
            self.sizes[-1] += len(part)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def prepare_shards(texts: Iterable[str], tok, out_dir: str | Path, val_fraction: float = 0.01,
                   seed: int = 0, fingerprint: str = "", batch_docs: int = 512,
                   val_texts: Iterable[str] | None = None) -> dict:
    """Tokenize `texts` into OUT/{train,val}-*.bin + meta.json (atomically). Returns meta.

    The validation split is a random `val_fraction` of the documents, or `val_texts` if given.
    """
    if val_texts is not None:
        val_fraction = 0.0
    elif not 0 < val_fraction < 1:
        raise UserError(f"val_fraction={val_fraction} must be between 0 and 1 (e.g. 0.01)")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    dtype = _dtype(tok.vocab_size)
    writers = {s: _ShardWriter(tmp, s, dtype) for s in ("train", "val")}
    rng = random.Random(seed)
    docs = {"train": 0, "val": 0}
    n_bytes = 0
    pending: list[str] = []
    bar = tqdm(desc="tokenizing", unit=" docs", dynamic_ncols=True)

    def flush(fixed: str | None) -> None:
        for ids in tok.encode_batch(pending):
            split = fixed or ("val" if rng.random() < val_fraction else "train")
            docs[split] += 1
            writers[split].write(np.asarray(ids + [tok.eos_id], dtype=np.int64))
        bar.update(len(pending))
        pending.clear()

    for source, fixed in ((texts, None), (val_texts or (), "val")):
        for text in source:
            n_bytes += len(text.encode("utf-8"))
            pending.append(text)
            if len(pending) >= batch_docs:
                flush(fixed)
        flush(fixed)
    bar.close()
    for w in writers.values():
        w.close()
    if not writers["val"].files or not writers["train"].files:
        _split_tail(tmp, writers, val_fraction, dtype)
    meta = {
        "dtype": dtype.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
        "train": writers["train"].files, "train_sizes": writers["train"].sizes,
        "val": writers["val"].files, "val_sizes": writers["val"].sizes,
        "train_docs": docs["train"], "val_docs": docs["val"], "bytes": n_bytes,
        "fingerprint": fingerprint,
    }
    write_json(tmp / "meta.json", meta)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return meta


def _split_tail(d: Path, writers: dict, val_fraction: float, dtype) -> None:
    """Too few documents for a document-level split: hold out the tail of the token stream."""
    tokens = np.concatenate([np.fromfile(d / f, dtype=dtype)
                             for w in writers.values() for f in w.files])
    for w in writers.values():
        for f in w.files:
            (d / f).unlink()
    n_val = max(2, int(len(tokens) * val_fraction))
    if len(tokens) < 4 * n_val:
        raise UserError(f"corpus is too small to split into train and validation ({len(tokens)} "
                        "tokens); give it more text")
    for split, part in (("train", tokens[:-n_val]), ("val", tokens[-n_val:])):
        name = f"{split}-00000.bin"
        part.tofile(d / name)
        writers[split].files, writers[split].sizes = [name], [len(part)]


def file_fingerprint(paths: list[str | Path], *extra: str) -> str:
    """Identity of the input files (path, size, mtime) plus settings, for reusing shards."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:16]


def read_meta(out_dir: str | Path) -> dict | None:
    p = Path(out_dir) / "meta.json"
    return json.loads(p.read_text()) if p.exists() else None


class TokenShards:
    """Random (or sequential) windows from one split's memory-mapped shards."""

    def __init__(self, data_dir: str | Path, split: str, seq_len: int):
        meta = read_meta(data_dir)
        if meta is None:
            raise UserError(f"{data_dir}: no meta.json; prepare the token shards first")
        self.seq_len = seq_len
        dtype = np.dtype(meta["dtype"])
        self.arrays = [np.memmap(Path(data_dir) / f, dtype=dtype, mode="r") for f in meta[split]]
        self.num_tokens = sum(len(a) for a in self.arrays)
        # Windows never cross a shard boundary: count the valid start positions per shard.
        starts = [max(0, len(a) - seq_len - 1) for a in self.arrays]
        if sum(starts) == 0:
            raise UserError(f"the {split} split has {self.num_tokens} tokens, fewer than one window "
                            f"of seq_len={seq_len}+1; use a shorter --seq_len or more text")
        self.cum_starts = np.cumsum(starts)

    def _window(self, g: int) -> np.ndarray:
        i = int(np.searchsorted(self.cum_starts, g, side="right"))
        o = g - (self.cum_starts[i - 1] if i else 0)
        return self.arrays[i][o:o + self.seq_len + 1]

    def _stack(self, windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(np.stack(windows).astype(np.int64))
        return w[:, :-1], w[:, 1:]

    def random_batch(self, batch_size: int, seed: int, *key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch that depends only on (seed, *key): resuming at a step redraws the same one."""
        g = torch.Generator().manual_seed(hash((seed, *key)) & (2**63 - 1))
        starts = torch.randint(0, int(self.cum_starts[-1]), (batch_size,), generator=g).tolist()
        return self._stack([self._window(s) for s in starts])

    def sequential_batches(self, batch_size: int, max_batches: int):
        """Non-overlapping windows from the start, for a stable validation loss."""
        total = int(self.cum_starts[-1])
        starts = list(range(0, total, self.seq_len))[: batch_size * max_batches]
        for i in range(0, len(starts), batch_size):
            yield self._stack([self._window(s) for s in starts[i:i + batch_size]])


def unigram_loss(data_dir: str | Path) -> float:
    """Cross-entropy (nats/token) of the validation split under the training split's unigram
    distribution (add-one smoothed): the loss of a model that ignores context."""
    meta = read_meta(data_dir)
    dtype = np.dtype(meta["dtype"])
    V = meta["vocab_size"]
    counts = np.ones(V, dtype=np.float64)
    for f in meta["train"]:
        counts += np.bincount(np.memmap(Path(data_dir) / f, dtype=dtype, mode="r"), minlength=V)[:V]
    logp = np.log(counts / counts.sum())
    val = np.concatenate([np.memmap(Path(data_dir) / f, dtype=dtype, mode="r") for f in meta["val"]])
    return float(-logp[val].mean())
