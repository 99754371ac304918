"""A compiled decode step: a static-shape KV cache under `torch.compile`.

    dec = CompiledDecoder(model, batch=1, max_len=256)
    logits = dec.prefill(ids, positions, slots, valid)  # (B, vocab): each row's last token
    logits = dec.decode(tok[:, None], positions + L, slots + L, valid)  # one token a row

`torch.compile` (TorchInductor) fuses a step's element-wise work into a few generated C++
loops (Triton kernels on a GPU) and calls the matmuls directly, but it only pays off when the
shapes stay the same from step to step, so this cache never grows: keys and values are
preallocated at `max_len` for `batch` rows, a step writes the new token's keys at `slots` (a
tensor, one slot per row) with an indexed copy, and attention reads the whole cache with a
mask that hides the slots beyond each row's own and its padding. One graph per (batch,
max_len), as in gpt-fast's and transformers' StaticCache; `cache_length` rounds lengths up to
a power of two so that few are compiled. The math is the model's own (its layers and
`attention_mask`, jielong.model), so the eager path stays the readable reference and greedy
fp32 output matches it token for token (tests/infer/test_compiled.py). The prompt's prefill
runs eagerly into the same cache: compiled (dynamic shapes) it measured no faster on a CPU,
where a prompt's forward is all matmuls, and took minutes more to compile.

On a CPU, for a model of at least COMPILE_MIN_PARAMS, the step is compiled with its weights
frozen and max-autotune (`compile_options`); for one sequence its linear layers are traced
as elementwise products and sums (`OneRowProducts`), which inductor fuses into one streaming
loop a layer: faster than any matmul library call for a single row; the weights are moved
into memory backed by 2 MB pages first (jielong.quant.huge_pages). On a GPU,
mode="reduce-overhead" (CUDA graphs: one launch per token), the cache tensors marked static
(`mark_static_address`) so the graphs read them in place; not measured (no GPU was lent to
issue 23).

The serving engine's cache is paged (jielong.infer.kv); `PagedStep` compiles its decode step
over the gathered view with dynamic shapes (batch and keys change every step), keeping
continuous batching, the prefix cache and LoRA adapters as they are.

Compiled graphs are cached on disk across runs (inductor's FX graph cache) in
`TORCHINDUCTOR_CACHE_DIR`; jielong sets it, unless it is set already, to
~/.cache/jielong/inductor (torch's default is a folder under /tmp, lost at a reboot). When
compilation is unavailable (no C++ compiler, another device, or JIELONG_NO_COMPILE=1 to
simulate one) or fails, one line says so, once, and decoding goes on eagerly.

When it wins (`worth_compiling`; bench/bench_compile.py, bench/RESULTS.md, issue 23): see
DEFAULT_ON below — `--compile` is asked for, not on by default, for now.
"""

from __future__ import annotations

import os
import shutil
import sys
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from jielong.infer.kv import gather
from jielong.model import Transformer, attention_mask, rope_cos_sin
from jielong.quant import huge_pages

COMPILE_MIN_PARAMS = 20_000_000  # freeze the weights and autotune the GEMMs from this size
# On by default nowhere yet, as measured (bench/RESULTS.md, issue 23): on the 2-core CPU the
# 124m preset decodes 1.5-1.9x faster compiled (fp32; int8 2.4x), but compiling costs each
# start 7-23 s (inductor's cache warm or cold), so a 128-token `jielong generate` takes 13-28 s
# against 6 s eager; the engine's dynamic-shape step was slower than eager; no GPU was lent
# to measure CUDA graphs.
DEFAULT_ON: dict[str, bool] = {"cpu": False, "cuda": False}
said: set[str] = set()
decoders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def worth_compiling(model: Transformer, batch: int, serving: bool = False) -> bool:
    """The default for --compile, by device, as measured (DEFAULT_ON): the one place to turn
    it on where a measurement shows it wins (batch and serving are what such a rule reads)."""
    return DEFAULT_ON.get(next(model.parameters()).device.type, False)


def say_once(message: str) -> None:
    if message not in said:
        said.add(message)
        print(message, file=sys.stderr)


def unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run here, or None."""
    if os.environ.get("JIELONG_NO_COMPILE"):
        return "JIELONG_NO_COMPILE is set"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "clang++", "c++")):
        return "no C++ compiler (install g++ or clang++)"
    if device.type not in ("cpu", "cuda"):
        return f"not supported on {device.type}"
    return None


def use_cache_dir() -> str:
    """Where inductor keeps compiled graphs between runs (set once, if the user did not)."""
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                                 str(Path.home() / ".cache" / "jielong" / "inductor"))


class OneRowProducts(TorchFunctionMode):
    """Inside a compiled decode step on a CPU: `F.linear` of one row (one sequence's token)
    written as an elementwise product and a sum over the inputs, `(x * W).sum(-1)`. Inductor
    turns that into a vectorised loop that streams each weight row once, fused with the
    element-wise work around it, where a matmul stays a library call. Decoding one token is a
    pass over the weights, bound by memory bandwidth: the 124m preset's 84 one-row products
    took 11.1 ms this way against 14.1 ms as oneDNN's packed matmul (2 threads;
    bench/bench_gemv.py), and its compiled fp32 decode went from 54 to 70-91 tok/s, against
    llama.cpp f32's 75-80 in the same runs (bench/RESULTS.md, issue 23). Weight-only int8 is
    left to torch's kernel (written this way it ran at half the speed), and so is attention
    (as products it decoded at 71 tok/s, as two matmuls 73, against 85). More rows, or any
    other call, go on as they were."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and args[0].numel() == args[0].shape[-1]:
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            y = (x.unsqueeze(-2) * w).sum(-1)
            return y if b is None else y + b
        return func(*args, **kwargs)


class SlotView:
    """What the model's attention layers see as their cache for one compiled forward: each
    row's new keys go to its `slots`, and every layer reads the whole preallocated cache."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], slots: torch.Tensor):
        self.k, self.v, self.slots = k, v, slots
        self.rows = torch.arange(slots.shape[0], device=slots.device)[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        K, V = self.k[layer], self.v[layer]  # (B, kv heads, max_len, head dim)
        K[self.rows, :, self.slots] = k.transpose(1, 2)  # (B, T, kv heads, head dim)
        V[self.rows, :, self.slots] = v.transpose(1, 2)
        return K, V


class CompiledDecoder:
    """A static KV cache of `batch` rows × `max_len` slots and the model's forward over it:
    `decode` for one token a row, compiled (static shapes); `prefill` for a prompt, eager
    unless `compile_prefill` (compiled with dynamic shapes: measured no faster on a CPU,
    where a prompt's forward is all matmuls, and a slower first compile)."""

    def __init__(self, model: Transformer, batch: int, max_len: int, compile: bool = True,
                 compile_prefill: bool = False):
        cfg, p = model.config, next(model.parameters())
        self.model, self.batch, self.max_len = model, batch, max_len
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        L = cfg.num_hidden_layers
        with torch.inference_mode():
            self.k = [torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in range(L)]
            self.v = [torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in range(L)]
            self.keys = torch.arange(max_len, device=p.device)
        self.windows = cfg.layer_windows()
        self.step, self.prefill_fn = self.forward_step, self.forward
        self.freeze = False
        if compile:
            use_cache_dir()
            if p.device.type == "cpu":  # the step streams every weight: 2 MB pages read faster
                huge_pages(model)
            # one graph per (batch, max_len, adapter): more than dynamo's default of 8
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            cuda = p.device.type == "cuda"
            if cuda:  # CUDA graphs read the cache where it is, not a copy
                for t in self.k + self.v:
                    torch._dynamo.mark_static_address(t)
            options = compile_options(model)
            self.freeze = "max-autotune" in options.get("mode", "")
            self.step = torch.compile(self.forward_step, dynamic=False, fullgraph=True, **options)
            if compile_prefill:
                self.prefill_fn = torch.compile(self.forward, dynamic=True, fullgraph=True)

    # Both run under inference mode whatever the caller's (no_grad or inference_mode): a
    # change of grad mode would recompile the graph, and the cache is written in place.

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """A prompt's tokens (B, T) into the cache; logits of each row's last one."""
        return self.prefill_fn(ids, positions, slots, valid)

    @torch.inference_mode()
    def decode(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
               valid: torch.Tensor | None = None) -> torch.Tensor:
        """One token a row (ids, positions, slots: (B, 1)) through the compiled step; if
        compiling fails, says so once and goes on eagerly (the same math)."""
        try:
            # freezing is read from inductor's config when the graph compiles (at the first
            # call), not from torch.compile's options: set it around the call
            with torch._inductor.config.patch(freezing=self.freeze):
                return self.step(ids, positions, slots, valid)
        except Exception as e:  # inductor's failures have many types (C++ build, lowering, …)
            if self.step == self.forward_step:
                raise
            say_once(f"--compile: compiling failed ({type(e).__name__}: "
                     f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}); decoding eagerly")
            self.step = self.forward_step
            return self.step(ids, positions, slots, valid)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, vocab) of each row's last token. ids, positions, slots: (B, T) — the
        tokens, their rotary positions, and the cache slots they are written to; valid:
        (B, max_len) the slots that hold a real token (False: padding), or None (all)."""
        model, T = self.model, ids.shape[1]
        cos, sin = rope_cos_sin(model.inv_freq, model.rope_scale, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        seen = self.keys <= slots[..., None]  # (B, T, max_len): a row's past and itself
        if valid is not None:  # padding hidden; a padding query sees itself (no empty row)
            seen = (seen & valid[:, None, :]) | (self.keys == slots[..., None])
        mask = seen[:, None]
        masks = {w: attention_mask(w, T, 0, mask, slots)[0] for w in set(self.windows)}
        x = model.model.embed_tokens(ids)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        view = SlotView(self.k, self.v, slots)
        for layer, w in zip(model.model.layers, self.windows, strict=True):
            x = layer(x, cos, sin, view, masks[w], False)
        return model.lm_head(model.model.norm(x[:, -1]))

    def forward_step(self, ids, positions, slots, valid=None):  # what is compiled
        if self.batch > 1 or self.k[0].device.type != "cpu":
            return self.forward(ids, positions, slots, valid)
        with OneRowProducts():  # traced by dynamo: the graph holds the products, not the mode
            return self.forward(ids, positions, slots, valid)


def compile_options(model: Transformer) -> dict:
    """torch.compile's mode for the decode step. GPU: CUDA graphs. CPU, a model of at least
    COMPILE_MIN_PARAMS: weights frozen into the graph (constants inductor may repack) and
    max-autotune, which times inductor's own C++ GEMM against MKL's for each matmul shape of a
    batch and keeps the faster (its kernel beat MKL's up to 3.8x in its own timings here;
    bench/RESULTS.md, issue 23). The cost: a slower first compile, and a second, packed copy
    of the weights where a matmul is repacked (not for one sequence: OneRowProducts leaves
    no matmul to pack). Smaller models: inductor's defaults."""
    p = next(model.parameters())
    if p.device.type == "cuda":
        return {"mode": "reduce-overhead"}
    if sum(x.numel() for x in model.parameters()) >= COMPILE_MIN_PARAMS:
        return {"mode": "max-autotune-no-cudagraphs"}  # + freezing: see CompiledDecoder.decode
    return {}


def cache_length(cfg, tokens: int) -> int:
    """The static cache's length for `tokens`: the next power of two from 128 (so nearby
    lengths share one compiled graph, and a growing chat compiles a few), at most the
    model's context. Attention reads every slot, so the cache is kept near what is needed
    rather than the whole context."""
    return min(max(128, 1 << (tokens - 1).bit_length()), cfg.max_position_embeddings)


def compiled_or_none(model: Transformer, batch: int, max_len: int) -> CompiledDecoder | None:
    """The model's compiled decoder for (batch, max_len), made once and kept with the model,
    or None (and one line, once, saying why) when compilation is unavailable here."""
    device = next(model.parameters()).device
    why = unavailable(device)
    if why is not None:
        say_once(f"--compile: {why}; decoding eagerly")
        return None
    key = (batch, max_len, next(model.parameters()).dtype)
    per_model = decoders.setdefault(model, {})
    if key not in per_model:
        per_model[key] = CompiledDecoder(model, batch, max_len)
    return per_model[key]


class GatherView:
    """The engine's paged cache as one compiled decode step sees it (jielong.infer.kv's
    PagedView, one token a row): the new keys go to the slots `write` (B,), and each row
    reads its keys gathered by `read` (B, keys) in position order."""

    keys_at_positions = True  # key i of a row holds position i
    pos = 0

    def __init__(self, k: torch.Tensor, v: torch.Tensor, write: torch.Tensor, read: torch.Tensor):
        self.k, self.v, self.write, self.read = k, v, write, read

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One index_put_ on the whole pool (layers, slots, kv heads, head dim), a graph input:
        # inductor writes it in place. Written through a view of one layer (`pool[layer][slots]
        # = …`) it became a copy of that layer's whole pool at every step, 24 a token (a
        # 32-row step of the 124m preset took 356 ms instead of 73; bench/RESULTS.md).
        at = (torch.full_like(self.write, layer), self.write)
        self.k.index_put_(at, k[:, :, 0].to(self.k.dtype))
        self.v.index_put_(at, v[:, :, 0].to(self.v.dtype))
        return gather(self.k[layer], self.read), gather(self.v[layer], self.read)


class PagedStep:
    """The serving engine's decode step (one token for each running request) over its block
    pool, compiled with dynamic shapes: the batch and the number of keys change every step,
    so one graph serves them all (two: batch 1 is specialised) instead of one per shape."""

    def __init__(self, model: Transformer, k: torch.Tensor, v: torch.Tensor):
        self.model, self.k, self.v = model, k, v
        use_cache_dir()
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for pool in (k, v):  # its shape never changes: one symbol fewer per dimension
            torch._dynamo.mark_static(pool)
        self.step = torch.compile(self.forward, dynamic=True, fullgraph=True)

    def forward(self, ids, positions, mask, write, read, k, v):
        view = GatherView(k, v, write, read)
        return self.model(ids, positions, view, mask)[:, -1]

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 write: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        try:  # the pool goes in as an input (not read off self) so its writes stay in place
            return self.step(ids, positions, mask, write, read, self.k, self.v)
        except Exception as e:  # see CompiledDecoder.decode
            if self.step == self.forward:
                raise
            say_once(f"--compile: compiling the engine's step failed ({type(e).__name__}); "
                     "decoding eagerly")
            self.step = self.forward
            return self.step(ids, positions, mask, write, read, self.k, self.v)


def paged_step_or_none(model: Transformer, k: torch.Tensor, v: torch.Tensor) -> PagedStep | None:
    why = unavailable(k.device)
    if why is not None:
        say_once(f"--compile: {why}; decoding eagerly")
        return None
    return PagedStep(model, k, v)
