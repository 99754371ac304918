"""Text generation with a KV cache: a batch of prompts at once.

Run as:
    jielong generate --help

For example, on the model `jielong demo` trains (runs/demo/model):
    jielong generate "從前有一個" "Once upon a time" --model runs/demo/model --temperature 0
    jielong generate "Q: 2+3?" --model runs/demo/model --adapter math=runs/math/adapter
    jielong generate "Once upon a time" --model runs/demo/model --compile

Several LoRA adapters can share one base model, switched per call:
    model, tok, gen = open_model("runs/demo/model", adapters=["a=runs/a/adapter", "runs/b/adapter"])
    with using_adapter(model, "b"):          # jielong.lora; None: the base model alone
        texts = generate_text(model, tok, prompts, SamplingParams(max_tokens=64, temperature=0))

Prompts of different lengths are left-padded; each row gets its own rotary positions and a
mask that hides its padding, so a prompt decodes the same alone or in a batch.

Token healing: BPE merges across the end of a prompt in running text ("住在" + "龍鄉" is
tokenized "住在龍" "鄉" when Han runs merge), so a prompt's last token is often one the model
rarely saw followed by the answer. `generate_text` therefore drops the prompt's last token
and makes the first generated token start with its bytes (the idea of "token healing" in
Microsoft's guidance library). Sampling is jielong.infer.sampling's, as in the engine and the
chat: temperature (0 = greedy), top-k, top-p (nucleus), min-p, repetition penalty (as in CTRL,
Keskar et al. 2019), presence and frequency penalties, stop strings, a token budget and a seed.
"""

from __future__ import annotations

import os
import re
import sys

import torch

from jielong.errors import UserError
from jielong.hub import open_model, stop_ids
from jielong.infer.compiled import cache_length, compiled_or_none, worth_compiling
from jielong.infer.constrain import mask_rows
from jielong.infer.sampling import SamplingParams, sample
from jielong.model import KVCache, Transformer
from jielong.runtime import decoding_memory, pick_device


@torch.no_grad()
def generate_ids(model: Transformer, prompts: list[list[int]], s: SamplingParams,
                 stop_ids: set[int] = frozenset(), decode=None,
                 first_allowed: list[list[int] | None] | None = None, tok=None,
                 compile: bool | None = None) -> list[list[int]]:
    """Token ids generated for each prompt (prompt excluded, stop token excluded), at most
    s.max_tokens each (None: up to the end of the context).

    decode: (row, ids) -> text, needed only for stop strings.
    first_allowed: per prompt, the only token ids the first new token may be (or None).
    tok: the tokenizer, needed only with a grammar (s.grammar: each row is held to it and
        ends when it is complete).
    compile: decode with the compiled step (jielong.infer.compiled: a static cache under
        torch.compile); None: where it measured faster (`worth_compiling`).
    """
    s.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    cfg = model.config
    device = next(model.parameters()).device
    B, L = len(prompts), max(len(p) for p in prompts)
    new = s.max_tokens if s.max_tokens is not None else cfg.max_position_embeddings - L
    if new < 1 or L + new > cfg.max_position_embeddings:
        raise UserError(f"prompt ({L} tokens) + --max_tokens {new} is longer than the "
                        f"model's context of {cfg.max_position_embeddings} tokens; shorten the prompt "
                        "or lower --max_tokens")
    pad = cfg.pad_token_id or 0
    ids = torch.full((B, L), pad, dtype=torch.long)
    valid = torch.zeros((B, L), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        valid[i, L - len(p):] = True
    ids, valid = ids.to(device), valid.to(device)
    padded = not bool(valid.all())
    gen = None
    if s.seed is not None:
        gen = torch.Generator(device=device).manual_seed(s.seed)
    seen = counts = None
    if s.repetition_penalty != 1.0:
        seen = torch.zeros((B, cfg.vocab_size), dtype=torch.bool, device=device)
        seen.scatter_(1, ids, valid)
    if s.presence_penalty or s.frequency_penalty:
        counts = torch.zeros((B, cfg.vocab_size), dtype=torch.int32, device=device)
    if compile is None:
        compile = worth_compiling(model, B)
    dec = compiled_or_none(model, B, cache_length(cfg, L + new)) if compile else None
    positions = (valid.cumsum(1) - 1).clamp(min=0)
    pos = positions[:, -1:] + 1
    if dec is not None:  # a static cache (jielong.infer.compiled): slot i holds padded token i
        filled = torch.ones((B, dec.max_len), dtype=torch.bool, device=device)
        filled[:, :L] = valid
        logits = dec.prefill(ids, positions, torch.arange(L, device=device).expand(B, L), filled)
        slots = torch.arange(L, dec.max_len, device=device)[:, None, None].expand(-1, B, 1)
    elif padded:
        cache = KVCache(cfg, B, L + new, device=device, dtype=next(model.parameters()).dtype)
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        # A padding query sees itself only, so no row of the softmax is empty (NaN).
        mask = (causal & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=device)
        logits = model(ids, positions, cache, mask[:, None], last_only=True)[:, -1]
        keys = torch.cat([valid, torch.ones(B, new, dtype=torch.bool, device=device)], 1)
    else:
        cache = KVCache(cfg, B, L + new, device=device, dtype=next(model.parameters()).dtype)
        logits = model(ids, cache=cache, last_only=True)[:, -1]
    if first_allowed is not None and any(a is not None for a in first_allowed):
        allowed = torch.ones((B, cfg.vocab_size), dtype=torch.bool, device=device)
        for i, a in enumerate(first_allowed):
            if a is not None:
                allowed[i] = False
                allowed[i, a] = True
        logits = logits.masked_fill(~allowed, float("-inf"))
    matchers = [None] * B
    if s.grammar is not None:
        if tok is None:
            raise UserError("generate_ids with a grammar needs the tokenizer: pass tok=")
        matchers = [s.grammar.matcher(tok, cfg.vocab_size, set(stop_ids)) for _ in range(B)]
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool)
    rows = torch.arange(B, device=device)
    for t in range(new):
        logits = mask_rows(logits, [None if done[i] else m for i, m in enumerate(matchers)])
        tok_ids = sample(logits, s, counts, seen, gen)
        tok_cpu = tok_ids.tolist()
        for i, x in enumerate(tok_cpu):
            if done[i]:
                continue
            if x in stop_ids:
                done[i] = True
                continue
            out[i].append(x)
            if matchers[i] is not None:
                matchers[i].advance(x)
                done[i] = matchers[i].stopped
            if s.stop and decode is not None and any(st in decode(i, out[i]) for st in s.stop):
                done[i] = True
        if bool(done.all()) or t == new - 1:
            break
        if seen is not None:
            seen[rows, tok_ids] = True
        if counts is not None:
            counts[rows, tok_ids] += 1
        if dec is not None:
            logits = dec.decode(tok_ids[:, None], pos, slots[t], filled)
            pos = pos + 1
        elif padded:
            logits = model(tok_ids[:, None], pos, cache, keys[:, None, None, :L + t + 1])[:, -1]
            pos = pos + 1
        else:
            logits = model(tok_ids[:, None], cache=cache)[:, -1]
    return out


def cut_at_stop(text: str, stop: list[str]) -> str:
    cut = min((text.find(st) for st in stop if st in text), default=-1)
    return text[:cut] if cut >= 0 else text


def heal_tail(tok, ids: list[int]) -> tuple[list[int], bytes, list[int] | None]:
    """(prompt without its last token, that token's bytes, tokens that start with them)."""
    if len(ids) < 2 or tok.is_special(ids[-1]):
        return ids, b"", None
    tail = tok.token_bytes(ids[-1])
    return ids[:-1], tail, [i for i, b in enumerate(tok.byte_table) if b.startswith(tail)]


def generate_text(model: Transformer, tok, prompts: list[str], s: SamplingParams,
                  heal: bool = True, stop_ids: set[int] | None = None,
                  compile: bool | None = None) -> list[str]:
    """Continuations of `prompts` as text, cut before any stop string or stop token
    (default: the tokenizer's eos and end-of-turn tokens and the model's eos). compile: as in
    generate_ids."""
    if stop_ids is None:
        stop_ids = tok.end_ids | ({model.config.eos_token_id} - {None})
    encoded = [tok.encode(p) for p in prompts]
    heal = heal and s.grammar is None  # the grammar decides the first token
    healed = [heal_tail(tok, ids) if heal else (ids, b"", None) for ids in encoded]
    tails = [t for _, t, _ in healed]

    def text(i: int, ids: list[int]) -> str:
        if not tails[i]:
            return tok.decode(ids)
        raw = b"".join(tok.token_bytes(x) for x in ids)
        return raw[len(tails[i]):].decode("utf-8", errors="replace")

    outs = generate_ids(model, [h for h, _, _ in healed], s, stop_ids, decode=text,
                        first_allowed=[a for _, _, a in healed], tok=tok, compile=compile)
    return [cut_at_stop(text(i, o), s.stop) for i, o in enumerate(outs)]


def generate(
    prompt: list[str],
    model: str = "runs/demo/model",
    max_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop: list[str] | None = None,
    seed: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    adapter: list[str] | None = None,
    adapter_name: str | None = None,
    quantize: str | None = None,
    compile: bool | None = None,
) -> list[str]:
    """Continue one or more prompts with a trained model.

    Args:
        prompt: One or more prompts, decoded together as a batch. Here and in --stop, \\n is a
            newline and \\t a tab (a shell passes them as backslash + letter); \\\\ is a backslash.
        model: A model directory (HF layout with tokenizer) or a Hugging Face hub id.
        max_tokens: Most new tokens per prompt.
        temperature: Sampling temperature; 0 is greedy.
        top_k: Sample among the k likeliest tokens (0: all).
        top_p: Sample from the smallest set with this probability mass (1: all).
        repetition_penalty: >1 discourages repeating tokens already present.
        stop: Stop strings (\\n and \\t as in prompts); the output is cut before the first one.
        seed: Random seed for reproducible sampling.
        device: auto, cpu, cuda, mps.
        dtype: auto (the checkpoint's on a GPU, float32 on CPU), float32, bfloat16, float16.
        adapter: LoRA adapter folders (PEFT layout) to load on the model (--adapter A B or
            --adapter A --adapter B), each DIR or NAME=DIR (name: the folder's, or its parent's for
            runs/NAME/adapter).
        adapter_name: Which loaded adapter generates (default: the first; off: the base).
        quantize: int8 or int4: weight-only quantized linear layers (faster on a CPU, 4-8x
            smaller); default: the weights as stored.
        compile: Decode with the compiled step (torch.compile; compiled once, then cached on
            disk); default off for now (compiling takes longer than a reply saves on a 2-core
            CPU; jielong.infer.compiled).
    """
    with decoding_memory():
        net, tok, gen = open_model(model, device=pick_device(device), dtype=dtype, adapters=adapter,
                                   adapter_name=adapter_name, quantize=quantize,
                                   pack=False if compile else 1)
    prompt = [unescape(p) for p in prompt]
    stops = [unescape(st) for st in stop or []]
    s = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       repetition_penalty=repetition_penalty, stop=stops, seed=seed)
    texts = generate_text(net, tok, prompt, s, stop_ids=stop_ids(tok, gen, net.config.eos_token_id),
                          compile=compile)
    for p, t in zip(prompt, texts, strict=True):
        print(f"\033[2m{p}\033[0m{t}" if _color() else p + t)
        print("─" * 40)
    return texts


_ESCAPE = re.compile(r"\\([\\nt])")


def unescape(text: str) -> str:
    """A shell passes "\\n" as backslash + n, and people mean a newline: \\n → newline,
    \\t → tab, \\\\ → one backslash; any other backslash stays as typed."""
    return _ESCAPE.sub(lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def _color() -> bool:
    return "NO_COLOR" not in os.environ and (sys.stdout.isatty() or "FORCE_COLOR" in os.environ)
