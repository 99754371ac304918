"""The serving engine: many requests decoding together on one model, joining and leaving
the running batch one token at a time (continuous batching).

    engine = Engine(model, tok, stop_ids={0}, slots=16).start()
    req = engine.submit(tok.encode("Once upon"), SamplingParams(max_tokens=32), on_event=print)
    done = engine.complete(tok.encode("從前"), SamplingParams(temperature=0))  # blocks
    engine.close()

One background thread owns the model; `submit` and `cancel` only hand it work.

The KV cache is paged (jielong.infer.kv): fixed-size blocks (`block_size` tokens) from one
pool of `kv_blocks` (default: as much memory as `slots` rows of the whole context, the old
slot cache's; `jielong serve --kv_memory_gb` sets a budget instead), a block table per
request, so memory follows the tokens each request holds and the same memory runs more
requests. Full blocks are shared by a hash of their prefix (prefix caching): a request whose
prompt begins like an earlier one's (a system prompt, the earlier turns of a chat) takes those
blocks and computes only the rest. `slots` stays the most requests running at once (the rows
of the sampling state).

Each turn of the loop:
1. cancelled requests leave (their blocks are released at once);
2. waiting requests are admitted in the queue's order (jielong.infer.fair.FairQueue: turns
   between clients, oldest first within one) while a row is free and the pool has blocks for
   the part of the prompt not cached and the first token after it; the next that does not
   fit waits (and those behind it: no overtaking, so a long prompt is not starved);
3. prefill: at most `prefill_chunk` prompt tokens, oldest request first, are fed in one
   forward per adapter, packed one after another into a single row when that computes less
   than right-padding every row to the longest (`_packs`); a long prompt takes several turns
   (chunked prefill, as vLLM and Sarathi-Serve do), so the running streams below still get a
   token every turn instead of waiting for a whole 2k-token prefill. A request whose prompt
   is done samples its first token. Requests that arrived while a prefill ran (a burst of
   clients) are admitted and prefilled before the decode, once: the running streams wait
   for one prefill more, and the burst joins their next decode instead of the one after
   (bench_serve's 32 clients: a 1-row decode of 23-29 ms no longer sits between two
   prefills);
4. every request past its prefill decodes one token in one forward, each row at its own
   position with a mask that hides the keys beyond it; a request that is done leaves now and
   its blocks go back to the pool, so short requests never wait for the longest.

When decoding needs a block and the pool has none, the most recently admitted request is
preempted (vLLM's recompute preemption): it releases its blocks and goes back to the front of
the queue with the tokens it has; readmitted, it prefills prompt + output again (mostly from its
own blocks, still cached if the pool did not need them) and continues where it was, its
streamed text unchanged. A request can always run alone: `check` refuses one whose prompt +
max_tokens would not fit in the whole pool.

Requests for different LoRA adapters (jielong.lora) run as one forward per adapter, the
adapter switched in between; the adapter is part of a block's prefix hash.

Sampling is per request (`SamplingParams`, picked by jielong.infer.sampling.sample): temperature,
top-k, top-p, min-p; presence and frequency penalties (OpenAI's: subtracted for each token
already generated) and the repetition penalty (CTRL's: prompt and output tokens); stop strings
and stop tokens; a seed (a generator of the request's own, so its tokens do not depend on what
else is in the batch); log-probabilities of the chosen and the likeliest tokens, under the
model's raw distribution. A request with a grammar (`SamplingParams.grammar`,
jielong.infer.constrain: a JSON schema, a tool call) has the tokens it forbids masked in its
own row before sampling (the other rows untouched), and ends ("stop") once the grammar is
complete.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from jielong.errors import UserError
from jielong.infer.compiled import paged_step_or_none, worth_compiling
from jielong.infer.constrain import mask_rows
from jielong.infer.fair import FairQueue
from jielong.infer.kv import BlockPool, PagedView, block_hash
from jielong.infer.sampling import SamplingParams, sample
from jielong.lora import adapter_names, set_adapter
from jielong.model import Transformer, mean_pooled

SWITCH_INTERVAL = 0.0005  # seconds; see Engine.start


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the likeliest tokens, best first


@dataclass
class Event:
    """What a request produced in one step. The last event has a finish_reason: "stop" (a stop
    token or string), "length" (max_tokens or the context), "cancelled" or "error"."""

    request: Request
    text: str  # new text since the last event (held back while it may begin a stop string)
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    logprobs: list[TokenLogprob] | None = None


class Request:
    """A submitted request. `cancel()` from any thread frees its slot at the next step."""

    _ids = itertools.count()

    def __init__(self, engine: Engine, prompt: list[int], params: SamplingParams,
                 adapter: str | None, on_event: Callable[[Event], None] | None):
        self.id = next(self._ids)
        self.engine, self.prompt, self.params, self.adapter = engine, prompt, params, adapter
        self.on_event = on_event or (lambda e: None)
        self.output: list[int] = []
        self.length = 0  # positions of this request whose keys are in the cache
        self.blocks: list[int] = []  # its block table (jielong.infer.kv)
        self.hashes: list[bytes] = []  # the prefix hashes of its full blocks, in order
        self.target = 0  # positions to prefill: the prompt (and, readmitted, its output but the last)
        self.admitted = 0  # the turn it was last admitted in: the latest is preempted first
        self.text, self.sent = "", 0  # decoded output, and how much of it events carried
        self.settled, self.base = 0, ""  # output[:settled] decodes to base, for good
        # timings (perf_counter seconds), read by jielong.serve.metrics: queued (submitted),
        # started (taken into the batch), first token, finished
        self.submitted = self.queued_at = time.perf_counter()
        self.started_at: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self.cancelled = False
        self.client: str | None = None  # whose request (jielong.infer.fair.FairQueue)
        self.gen = None
        if params.seed is not None:
            self.gen = torch.Generator(device=engine.device).manual_seed(params.seed)
        stops = set(params.stop_token_ids)
        self.stop_ids = stops if params.ignore_eos else stops | engine.stop_ids
        self.matcher = None  # where its grammar is (jielong.infer.constrain)
        if params.grammar is not None:
            self.matcher = params.grammar.matcher(engine.tok, engine.model.config.vocab_size,
                                                  self.stop_ids)

    def cancel(self) -> None:
        self.cancelled = True
        self.engine._wake()

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.submitted


@contextmanager
def one_thread():
    """Run the block with torch on one thread, and give the count it had (for an Engine's
    `threads`): a server loads its model this way so that only the engine's loop ever runs
    a multi-threaded region (see Engine). The count is restored at the end."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield n
    finally:
        torch.set_num_threads(n)


class Engine:
    """Continuous batching over `slots` concurrent requests; see the module's docstring."""

    def __init__(self, model: Transformer, tok, stop_ids: set[int] = frozenset(), slots: int = 16,
                 context: int | None = None, kv_blocks: int | None = None, block_size: int = 16,
                 prefix_cache: bool = True, prefill_chunk: int | None = 512,
                 compile: bool | None = None, threads: int | None = None):
        cfg = model.config
        self.model, self.tok = model.eval(), tok
        # torch's intra-op threads for the engine's loop (default: the constructing thread's).
        # A server best loads its model on one thread (`one_thread`) and gives the count
        # here: OpenMP (libgomp) keeps a team of threads for every thread that ran a parallel
        # region, and once the teams' threads outnumber the cores, none spins between regions,
        # so each of a token's ~100 matmuls waits for a woken thread — 273 µs instead of 226 µs
        # for a 2048×768 weight, one row, 2 cores (bench/RESULTS.md, issue 23).
        self.threads = threads or torch.get_num_threads()
        self.device = next(model.parameters()).device
        self.context = min(context or cfg.max_position_embeddings, cfg.max_position_embeddings)
        if slots < 1 or self.context < 2:
            raise UserError(f"the engine needs at least 1 slot and a context of 2 tokens, not "
                            f"{slots} slots and a {self.context}-token context")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise UserError(f"--prefill_chunk {prefill_chunk}: give at least 1 token (or none: "
                            "whole prompts at once)")
        self.slots, self.prefill_chunk, self.prefix_cache = slots, prefill_chunk, prefix_cache
        self.stop_ids = set(stop_ids)
        self.adapters = adapter_names(model)
        if kv_blocks is None:  # the old slot cache's memory: every slot the whole context
            kv_blocks = slots * -(-self.context // block_size)
        self.pool = BlockPool(model, kv_blocks, block_size)
        self.view = PagedView(self.pool)
        # a token's multiply-adds in the decoder's linear layers, and per key it attends to
        h, q, kv = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, \
            cfg.num_key_value_heads * cfg.head_dim
        L = cfg.num_hidden_layers
        self.flops_per_token = (L * (2 * h * (q + kv) + 3 * h * cfg.intermediate_size), L * 2 * q)
        self.windowed = any(w is not None for w in cfg.layer_windows())
        if compile is None:
            compile = worth_compiling(model, slots, serving=True)
        # the decode step compiled over the pool (jielong.infer.compiled.PagedStep), or eager
        self.compiled = paged_step_or_none(model, self.pool.k, self.pool.v) if compile else None
        self.limit = min(self.context, kv_blocks * block_size)  # the most tokens one request holds
        V = cfg.vocab_size
        self.counts = torch.zeros((slots, V), dtype=torch.int32, device=self.device)  # output tokens
        self.seen = torch.zeros((slots, V), dtype=torch.bool, device=self.device)  # prompt + output
        self.running: list[Request] = []  # row i of the cache is running[i]'s
        self.waiting = FairQueue()  # fair between clients (jielong.infer.fair)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Condition()
        self.thread: threading.Thread | None = None
        self.closing = False
        self.totals = {"requests": 0, "prompt_tokens": 0, "generated_tokens": 0, "steps": 0,
                       "prefix_hit_tokens": 0, "prefix_query_tokens": 0, "prefill_chunks": 0,
                       "packed_prefills": 0, "preempted": 0}
        self.turn = 0
        self.deferred = False  # the last turn prefilled and left the decode to the next
        self.by_reason: dict[str, int] = {}

    # --------------------------------------------------------------------- public side

    def start(self) -> Engine:
        if self.thread is None:
            # The engine's thread lets go of the GIL in each of a step's ~500 torch calls and
            # must take it back after; a thread running Python (a server's event loop) hands it
            # over only every switch interval, 5 ms by default, so each take-back could wait
            # that long. At 0.5 ms, a one-prompt prefill while 30 requests arrived took 64 ms,
            # not 150 (bench/RESULTS.md, issue 23). Process-wide: only ever lowered here.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
            self.thread = threading.Thread(target=self._loop, name="jielong-engine", daemon=True)
            self.thread.start()
        return self

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.lock.notify_all()
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def check(self, prompt: list[int], params: SamplingParams, adapter: str | None = None) -> int:
        """Validate a request without submitting it; the max_tokens it will run with."""
        params.validate()
        if adapter is not None and adapter not in self.adapters:
            known = ", ".join(self.adapters) or "none loaded"
            raise UserError(f"unknown adapter {adapter!r} (adapters: {known})")
        if not prompt:
            raise UserError("the prompt is empty: give at least one token")
        vocab = self.model.config.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise UserError(f"token ids must be in [0, {vocab}); the prompt has {bad[:5]}")
        room = self.limit - len(prompt)
        context = self.limit == self.context
        if room < 1:
            what = (f"the model's context is {self.context} tokens" if context else
                    f"the KV cache holds {self.limit} tokens (raise --kv_memory_gb)")
            raise UserError(f"the prompt is {len(prompt)} tokens, but {what}; shorten it")
        if params.max_tokens is not None and params.max_tokens > room:
            what = (f"the model's context of {self.context} tokens" if context else
                    f"the {self.limit} tokens the KV cache holds (raise --kv_memory_gb)")
            raise UserError(f"the prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) "
                            f"is more than {what}; lower max_tokens to at most {room}")
        return params.max_tokens or room

    def submit(self, prompt: list[int], params: SamplingParams, adapter: str | None = None,
               on_event: Callable[[Event], None] | None = None,
               client: str | None = None) -> Request:
        """Queue a request; `on_event` is called from the engine thread with each Event.
        `client`: who asks (an API key's or an address's name); the queue takes turns
        between clients (jielong.infer.fair.FairQueue)."""
        max_tokens = self.check(prompt, params, adapter)
        if self.thread is None:
            raise RuntimeError("Engine.start() first")
        params = SamplingParams(**{**params.__dict__, "max_tokens": max_tokens})
        req = Request(self, list(prompt), params, adapter, on_event)
        req.client = client
        with self.lock:
            self.waiting.append(req)
            self.totals["requests"] += 1
            self.lock.notify_all()
        return req

    def complete(self, prompt: list[int], params: SamplingParams,
                 adapter: str | None = None) -> Completion:
        """Submit and wait for the whole reply."""
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        req = self.submit(prompt, params, adapter, events.put)
        text, logprobs = [], []
        while True:
            e = events.get()
            text.append(e.text)
            logprobs += e.logprobs or []
            if e.finish_reason:
                if e.finish_reason == "error":
                    raise RuntimeError(e.error)
                return Completion("".join(text), req.output, e.finish_reason, len(prompt),
                                  logprobs if params.logprobs is not None else None)

    def embed(self, prompts: list[list[int]], adapter: str | None = None) -> Future:
        """A Future of (len(prompts), hidden) unit-length means of the final hidden states."""
        for p in prompts:
            self.check(p, SamplingParams(max_tokens=1), adapter)
        def pooled(model: Transformer) -> list[list[float]]:
            out = []
            for p in prompts:
                lengths = torch.tensor([len(p)], device=self.device)
                out.append(mean_pooled(model, torch.tensor([p], device=self.device), lengths)[0].tolist())
            return out

        return self.call(pooled, adapter)

    def call(self, work: Callable[[Transformer], object], adapter: str | None = None) -> Future:
        """A Future of `work(model)`, run on the engine's own thread between two steps, under
        inference_mode with `adapter` switched in: a forward of its own (no KV cache) that no
        step of the engine runs beside, so it cannot disturb the running requests (the web
        chat's next-token and attention views: jielong.serve.inspect_routes)."""
        if self.thread is None:
            raise RuntimeError("the engine is not running; call start() first")
        if adapter is not None and adapter not in self.adapters:
            raise UserError(f"model={adapter!r}: no such adapter; served: {', '.join(self.adapters) or 'none'}")
        fut: Future = Future()
        self.jobs.put((fut, work, adapter))
        self._wake()
        return fut

    def decoding(self) -> int:
        """Requests in the batch now: a snapshot read without the lock (for heuristics, such as
        how often the server's output rail reads the replies)."""
        return len(self.running)

    def stats(self) -> dict:
        with self.lock:
            return {"waiting": len(self.waiting), "running": len(self.running),
                    "slots": self.slots, **self.totals, "kv_blocks_total": self.pool.total,
                    "kv_blocks_used": self.pool.used(), "kv_block_size": self.pool.size}

    # --------------------------------------------------------------------- engine side

    def _wake(self) -> None:
        with self.lock:
            self.lock.notify_all()

    def _loop(self) -> None:
        torch.get_num_threads()  # torch sets a new thread's count at its first use (from
        torch.set_num_threads(self.threads)  # OMP_NUM_THREADS): let that happen first
        with torch.inference_mode():
            while True:
                with self.lock:
                    while not (self.closing or self.waiting or self.running or not self.jobs.empty()):
                        self.lock.wait()
                    if self.closing:
                        break
                try:
                    self._jobs()
                    self._drop_cancelled()
                    self._admit()
                    if self._prefill() and not self.deferred and self._room():
                        self.deferred = True  # requests came in during that prefill: theirs
                        continue              # first (once), then every stream decodes together
                    self.deferred = False
                    self._decode()
                except Exception as e:  # a fault in the engine fails its requests, not the server
                    self._fail_all(f"{type(e).__name__}: {e}")
            self._fail_all("the engine was shut down")
            while not self.jobs.empty():  # work handed over as it closed: told, not left waiting
                self.jobs.get()[0].set_exception(RuntimeError("the engine was shut down"))

    def _jobs(self) -> None:
        while not self.jobs.empty():
            fut, work, adapter = self.jobs.get()
            try:
                self._use(adapter)
                fut.set_result(work(self.model))
            except Exception as e:
                fut.set_exception(e)

    def _drop_cancelled(self) -> None:
        with self.lock:
            gone = [r for r in self.waiting if r.cancelled]
            for r in gone:
                self.waiting.remove(r)
        for r in gone:
            self._finish(r, "cancelled")
        for r in [r for r in self.running if r.cancelled]:
            self._leave(r, "cancelled")

    def _admit(self) -> None:
        """Waiting requests take a row and their prompt's blocks, oldest first, while both last."""
        self.turn += 1
        with self.lock:
            while self.waiting and len(self.running) < self.slots and self._place(self.waiting[0]):
                r = self.waiting.popleft()
                r.started_at = r.started_at or time.perf_counter()  # a readmitted one keeps its first
                i = len(self.running)
                self.running.append(r)
                self.counts[i].zero_()
                self.seen[i].zero_()
                self.seen[i, r.prompt] = True
                if r.output:  # readmitted after a preemption: the sampling state it had
                    out = torch.tensor(r.output, device=self.device)
                    self.counts[i].index_add_(0, out, torch.ones_like(out, dtype=torch.int32))
                    self.seen[i, out] = True

    def _place(self, r: Request) -> bool:
        """Give `r` the cached blocks its tokens begin with and new ones for the rest of its
        prompt and the token after it; False (nothing held) when the pool has too few."""
        seq = r.prompt + r.output
        r.target = len(seq) - (1 if r.output else 0)  # a readmitted one decodes its last token
        blocks, hashes = self.pool.match(seq[:r.target], r.adapter) if self.prefix_cache else ([], [])
        need = -(-(r.target + 1) // self.pool.size) - len(blocks)
        if need > self.pool.available():
            self.pool.release(blocks)
            return False
        r.blocks = blocks + [self.pool.take() for _ in range(need)]
        r.hashes, r.length, r.admitted = hashes, len(blocks) * self.pool.size, self.turn
        if not r.output:
            self.totals["prefix_query_tokens"] += len(r.prompt)
            self.totals["prefix_hit_tokens"] += r.length
        return True

    def _use(self, adapter: str | None) -> None:
        if self.adapters:
            set_adapter(self.model, adapter)

    def _room(self) -> bool:
        """Whether a request is waiting and a row is free for it."""
        with self.lock:
            return bool(self.waiting) and len(self.running) < self.slots

    def _prefill(self) -> bool:
        """Feed at most `prefill_chunk` prompt tokens, oldest request first; sample the first
        token of each request whose prompt is now done. Whether anything was fed."""
        budget = self.prefill_chunk or self.limit * self.slots
        plan: list[tuple[Request, int]] = []
        for r in sorted((r for r in self.running if r.length < r.target), key=lambda r: r.admitted):
            n = min(r.target - r.length, budget)
            if n < 1:
                break
            plan.append((r, n))
            budget -= n
        done = []
        for adapter in dict.fromkeys(r.adapter for r, _ in plan):
            self._use(adapter)
            group = [(r, n) for r, n in plan if r.adapter == adapter]
            feeds = [(r.prompt + r.output)[r.length:r.length + n] for r, n in group]
            tables, starts, counts = [r.blocks for r, _ in group], [r.length for r, _ in group], \
                [n for _, n in group]
            if self._packs(starts, counts):  # one row, no padding: last token of row i at ends[i]
                ids = torch.tensor([[t for feed in feeds for t in feed]])
                positions, mask = self.view.set_packed(tables, starts, counts)
                at = [(0, end - 1) for end in itertools.accumulate(counts)]
                self.totals["packed_prefills"] += 1
            else:  # right-padded rows
                ids = torch.zeros((len(group), max(counts)), dtype=torch.long)
                for i, feed in enumerate(feeds):
                    ids[i, :len(feed)] = torch.tensor(feed)
                positions, mask = self.view.set(tables, starts, counts)
                at = [(i, n - 1) for i, n in enumerate(counts)]
            h = self.model(ids.to(self.device), positions, self.view, mask, hidden_only=True)
            ready = []
            for i, (r, n) in enumerate(group):
                r.length += n
                self._name_blocks(r)
                if r.length == r.target and not r.output:
                    ready.append((i, *at[i]))
            self.totals["prefill_chunks"] += len(group)
            if ready:
                which, rows, last = zip(*ready, strict=True)
                logits = self.model.lm_head(h[list(rows), list(last)]).float()
                done += self._sample([self.running.index(group[i][0]) for i in which], logits)
        for r, why in done:
            self._leave(r, why)
        return bool(plan)

    def _packs(self, starts: list[int], counts: list[int]) -> bool:
        """Whether a prefill of rows starting at `starts` with `counts` new tokens costs fewer
        multiply-adds packed into one row (PagedView.set_packed) than right-padded: padding
        computes max(counts) tokens a row, and packing has every query score every row's keys.
        Prompts arrive with mixed lengths: bench_serve's 32 questions are 147 tokens, padded
        416. Not for sliding windows (the model windows by key index, which packing shifts)."""
        if len(counts) < 2 or self.windowed:
            return False
        row, key = self.flops_per_token
        keys = [s + c for s, c in zip(starts, counts, strict=True)]
        packed = sum(counts) * (row + key * sum(keys))
        padded = len(counts) * max(counts) * (row + key * max(keys))
        return packed < padded

    def _name_blocks(self, r: Request) -> None:
        """Put the blocks `r` has filled in the prefix cache."""
        if not self.prefix_cache:
            return
        size, seq = self.pool.size, None
        while len(r.hashes) < r.length // size:
            i = len(r.hashes)
            seq = seq or r.prompt + r.output
            h = block_hash(r.hashes[-1] if r.hashes else b"", seq[i * size:(i + 1) * size], r.adapter)
            self.pool.register(r.blocks[i], h)
            r.hashes.append(h)

    def _decode(self) -> None:
        """One token for every request past its prefill."""
        size = self.pool.size
        for r in sorted(self._decoding(), key=lambda r: r.admitted):
            while r in self.running and len(r.blocks) <= r.length // size:
                if self.pool.available():
                    r.blocks.append(self.pool.take())
                else:  # no block: the latest admitted goes back to the queue
                    self._preempt(max(self.running, key=lambda q: (q.admitted, q.id)))
        decoding = self._decoding()
        if not decoding:
            return
        groups: dict[str | None, list[Request]] = {}
        for r in decoding:
            groups.setdefault(r.adapter, []).append(r)
        done = []
        for adapter, reqs in groups.items():
            self._use(adapter)
            positions, mask = self.view.set([r.blocks for r in reqs], [r.length for r in reqs],
                                            [1] * len(reqs))
            x = torch.tensor([[r.output[-1]] for r in reqs], device=self.device)
            if self.compiled is not None:
                logits = self.compiled(x, positions, mask, self.view.write, self.view.read).float()
            else:
                logits = self.model(x, positions, self.view, mask)[:, -1].float()
            for r in reqs:
                r.length += 1
                self._name_blocks(r)
            done += self._sample([self.running.index(r) for r in reqs], logits)
        for r, why in done:
            self._leave(r, why)
        self.totals["steps"] += 1

    def _decoding(self) -> list[Request]:
        """The running requests past their prefill: all but their last token in the cache."""
        return [r for r in self.running if r.output and r.length == len(r.prompt) + len(r.output) - 1]

    def _preempt(self, r: Request) -> None:
        self._drop_row(r)
        with self.lock:
            self.waiting.appendleft(r)
        self.totals["preempted"] += 1

    def _sample(self, rows: list[int], logits: torch.Tensor) -> list[tuple[Request, str]]:
        """Pick and send the next token of the running requests at `rows`; the ones now done,
        with why (the caller retires them once every row of the step has its token)."""
        reqs = [self.running[i] for i in rows]
        idx = torch.tensor(rows, device=self.device)
        want = [r.params.logprobs for r in reqs]
        raw = logits.log_softmax(-1) if any(k is not None for k in want) else None
        logits = mask_rows(logits, [r.matcher for r in reqs])
        tokens = sample(logits, [r.params for r in reqs], self.counts[idx], self.seen[idx],
                        [r.gen for r in reqs])
        self.counts[idx, tokens] += 1
        self.seen[idx, tokens] = True
        now = time.perf_counter()
        done: list[tuple[Request, str]] = []
        for j, (r, t) in enumerate(zip(reqs, tokens.tolist(), strict=True)):
            if r.first_token_at is None:
                r.first_token_at = now
            if t in r.stop_ids:
                done.append((r, "stop"))
                continue
            lp = None
            if want[j] is not None:
                top = raw[j].topk(want[j]) if want[j] else None
                alts = [] if top is None else list(zip(top.indices.tolist(), top.values.tolist(),
                                                        strict=True))
                lp = [TokenLogprob(t, float(raw[j, t]), alts)]
            r.output.append(t)
            self.totals["generated_tokens"] += 1
            if r.matcher is not None:
                r.matcher.advance(t)
            if self._emit(r, t, lp) or (r.matcher is not None and r.matcher.stopped):
                done.append((r, "stop"))
            elif len(r.output) >= r.params.max_tokens:
                done.append((r, "length"))
        return done

    def _emit(self, r: Request, token: int, lp: list[TokenLogprob] | None) -> bool:
        """Send the text that is new and safe to show; True when a stop string was reached
        (the text is then cut before it)."""
        text, end, hit = visible(self._text(r), r.sent, r.params.stop)
        r.text = text
        new = text[r.sent:end] if end > r.sent else ""
        r.sent = max(r.sent, end)
        r.on_event(Event(r, new, [token], lp))
        return hit

    def _text(self, r: Request) -> str:
        """The reply decoded so far. Only the tokens after a settled prefix are decoded again
        each step (from one token before it, as a tokenizer may drop the leading space of a
        first token), so a long reply costs no more per token than a short one."""
        out, k = r.output, r.settled

        def decode(ids: list[int]) -> str:
            return self.tok.decode(ids, skip_special_tokens=True)

        if k:
            head, window = decode(out[k - 1:k]), decode(out[k - 1:])
            if not window.startswith(head):  # cannot happen with byte-level vocabularies
                r.settled, r.base = 0, ""
                return self._text(r)
            text = r.base + window[len(head):]
        else:
            text = decode(out)
        if len(out) - k >= 32 and not text.endswith("\ufffd"):
            r.settled, r.base = len(out), text
        return text

    def _leave(self, r: Request, reason: str) -> None:
        self._drop_row(r)
        self._finish(r, reason)

    def _drop_row(self, r: Request) -> None:
        """`r` stops running: its blocks go back to the pool, its row to the last request."""
        self.pool.release(r.blocks)
        r.blocks, r.hashes, r.length = [], [], 0
        i = self.running.index(r)
        last = len(self.running) - 1
        if i != last:  # the last row moves into the gap: the running rows stay 0..n-1
            moved = self.running[last]
            self.counts[i].copy_(self.counts[last])
            self.seen[i].copy_(self.seen[last])
            self.running[i] = moved
        self.running.pop()

    def _finish(self, r: Request, reason: str, error: str | None = None) -> None:
        """The last event: the text held back so far (none after a stop string, which was cut)."""
        r.finish_reason, r.finished_at = reason, time.perf_counter()
        rest = r.text[r.sent:] if reason in ("stop", "length") else ""
        r.sent = len(r.text)
        self.totals["prompt_tokens"] += len(r.prompt)
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        r.on_event(Event(r, rest, [], None, reason, error))

    def _fail_all(self, message: str) -> None:
        with self.lock:
            waiting, self.waiting = list(self.waiting), FairQueue()
        for r in self.running + waiting:
            self.pool.release(r.blocks)
            r.blocks = []
            self._finish(r, "error", message)
        self.running = []


def visible(text: str, sent: int, stop: list[str]) -> tuple[str, int, bool]:
    """(text, end, hit): how much of a reply's `text` can be shown, `sent` characters of it
    having been shown. At a stop string the text is cut before it (hit); otherwise a last
    character not yet whole (U+FFFD while its bytes are incomplete) and a tail that may be the
    start of a stop string are held back."""
    hit = min((i for i in (text.find(s, max(0, sent - len(s))) for s in stop) if i >= 0),
              default=-1)
    if hit >= 0:
        return text[:hit], hit, True
    end = len(text)
    while end > sent and text[end - 1] == "\ufffd":
        end -= 1
    end -= max((k for s in stop for k in range(1, min(len(s), end - sent + 1))
                if text[end - k:end] == s[:k]), default=0)
    return text, end, False

