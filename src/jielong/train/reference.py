"""What DPO and KTO share: a reply after its prompt as a row (ids, labels), its summed
log-probability under a model, and the reference model's log-probabilities of every row,
computed once before training and cached in OUT/ref_logps.pt.

The reference model is needed only for its log-probs, which never change, so they are
computed for every row before training (`reference_logps`) and kept in memory and in
OUT/ref_logps.pt (a resumed run reads it back; the file records what it came from — the
reference model's files, the dtype, every token — so changed data or a retrained
reference is computed afresh). Hence no second model ever sits in memory while training:
with `--method lora` the reference is the same model with its adapters switched off, and
with `--method full` it is the model itself before its first step; only a different `--ref`
model is loaded, used for the cache, and freed before training starts.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from jielong.checkpoint import weight_files
from jielong.data.chat import IGNORE
from jielong.data.preferences import encode_response
from jielong.errors import UserError
from jielong.files import atomic_path
from jielong.hub import open_model, resolve_model
from jielong.lora import output_weight, using_adapter
from jielong.runtime import is_main_process, main_process_first
from jielong.train.losses import token_logps

REF_FILE = "ref_logps.pt"

Row = tuple[list[int], list[int]]  # (ids, labels): labels aligned with ids, IGNORE off the reply

# ------------------------------------------------------------------------------------ rows


def encode_rows(tok, items: Sequence, replies: Callable, max_len: int,
                desc: str = "tokenizing") -> tuple[list, list, int]:
    """(items kept, their encodings, how many were left out as longer than max_len): each
    item's replies (`replies(item)` → [reply, …]) encoded after its prompt as (ids, labels)."""
    kept, out, skipped = [], [], 0
    for it in tqdm(items, desc=desc, unit=" rows", disable=not sys.stderr.isatty(), leave=False):
        try:
            rows = tuple(encode_response(tok, it.prompt, r) for r in replies(it))
        except UserError as e:
            raise UserError(f"{it.where}: {e}") from None
        if any(len(ids) > max_len for ids, _ in rows):
            skipped += 1
            continue
        kept.append(it)
        out.append(rows)
    return kept, out, skipped


def pad_rows(rows: Sequence[Row], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels), both (B, longest), right-padded with pad_id and IGNORE."""
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        labels[i, :len(y)] = torch.tensor(y, dtype=torch.long)
    return ids, labels


# ------------------------------------------------------------------------------ log-probs


def sequence_logps(model, ids: torch.Tensor, labels: torch.Tensor,
                   chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the log-probabilities of the labelled tokens, their count) per row of a
    right-padded batch. ids, labels: (B, T), labels aligned with ids (a token's log-prob is
    read from the hidden state before it), IGNORE where nothing counts."""
    hidden = model(ids, hidden_only=True)
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logp = token_logps(hidden[:, :-1][keep], output_weight(model), targets[keep], chunk=chunk)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device).index_add(0, rows, logp)
    return sums, keep.sum(1)


# ------------------------------------------------------------------------------ reference


@torch.no_grad()
def reference_logps(model, rows: Sequence[Row], pad_id: int, batch_size: int,
                    desc: str = "reference log-probs") -> torch.Tensor:
    """(N,) summed log-probs of each row's labelled tokens, in eval mode, batched by length."""
    device = next(model.parameters()).device
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    was_training = model.training
    model.eval()
    out = torch.zeros(len(rows), dtype=torch.float32)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    bar = tqdm(total=len(rows), desc=desc, unit=" seqs", leave=False,
               disable=not sys.stderr.isatty() or not is_main_process())
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        ids, labels = pad_rows([rows[j] for j in idx], pad_id)
        with amp:
            sums, _ = sequence_logps(model, ids.to(device), labels.to(device))
        out[idx] = sums.float().cpu()
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    return out


def cache_key(kind: str, ref_name: str, dtype: torch.dtype, groups: dict[str, Sequence[Row]]) -> str:
    """What the cached log-probs depend on: the reference model's files (path, sizes, times),
    its dtype and every token and label of the data."""
    path = resolve_model(ref_name).resolve()
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in weight_files(path)]
    h = hashlib.sha256(json.dumps([kind, str(path), stats, str(dtype)]).encode())
    for name, rows in sorted(groups.items()):
        h.update(name.encode())
        for ids, labels in rows:
            h.update(array("q", ids).tobytes() + b"|" + array("q", labels).tobytes() + b";")
    return h.hexdigest()


def cached_reference(path: Path, key: str,
                     compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict, bool]:
    """(log-probs by group, read from disk?): the file at `path` when it was written for
    `key`, else compute() saved there atomically."""
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                return saved["logps"], True
        except (OSError, RuntimeError, EOFError, AttributeError):
            pass  # unreadable: compute again
    logps = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"key": key, "logps": logps}, tmp)
    return logps, False


def compute_reference(net, method: str, ref: str | None, groups: dict[str, Sequence[Row]],
                      pad_id: int, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Reference log-probs of every group's rows. No `ref`: the policy itself before training
    (with --method lora, its base: adapters off). A `ref` model is loaded for this alone
    and is garbage once this returns."""
    if ref is None:
        net.to(device)
        with using_adapter(net, None) if method == "lora" else nullcontext():
            return {k: reference_logps(net, rows, pad_id, batch_size, f"reference log-probs ({k})")
                    for k, rows in groups.items()}
    other, _, _ = open_model(ref, device=device, dtype=next(net.parameters()).dtype)
    if other.config.vocab_size != net.config.vocab_size:
        raise UserError(f"--ref {ref}: vocabulary of {other.config.vocab_size:,} tokens, but the "
                        f"model's has {net.config.vocab_size:,}; the reference must share the "
                        "model's tokenizer")
    return {k: reference_logps(other, rows, pad_id, batch_size, f"reference log-probs ({k})")
            for k, rows in groups.items()}


def reference_for(run: Path, kind: str, net, method: str, model: str, ref: str | None,
                  groups: dict[str, Sequence[Row]], pad_id: int, batch_size: int,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Reference log-probs from OUT/ref_logps.pt, or computed and saved there (rank 0 first;
    the other processes then read the file)."""
    key = cache_key(kind, ref or model, next(net.parameters()).dtype, groups)
    t0 = time.time()
    with main_process_first():
        logps, loaded = cached_reference(run / REF_FILE, key, lambda: compute_reference(
            net, method, ref, groups, pad_id, 2 * batch_size, device))
    gc.collect()  # a separate --ref model is unreachable now; free it before training
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if is_main_process():
        n = sum(len(v) for v in logps.values())
        source = (ref if ref else "the base model, adapters off" if method == "lora"
                  else "the model before training")
        print(f"reference log-probs: {'read' if loaded else 'computed'} for {n:,} sequences "
              f"({source}){'' if loaded else f' in {time.time() - t0:.1f} s'}; "
              f"{run / REF_FILE}")
    return logps
