"""The serving engine: many requests decoding together on one model, joining and leaving
the running batch one token at a time (continuous batching).

    engine = Engine(model, tok, stop_ids={0}, slots=16).start()
    req = engine.submit(tok.encode("Once upon"), SamplingParams(max_tokens=32), on_event=print)
    done = engine.complete(tok.encode("從前"), SamplingParams(temperature=0))  # blocks
    engine.close()

One background thread owns the model; `submit` and `cancel` only hand it work.

Waiting requests queue fairly between clients (jielong.infer.fair.FairQueue).

The KV cache is preallocated: `slots` rows, each as long as the context, per layer. A
request holds one row from its prefill to its last token, and the running requests always
fill rows 0..n-1: when one ends, the last row's keys and values move into its place, so a
decode step reads one contiguous slice of the cache.

Each turn of the loop:
1. cancelled requests leave (their rows free at once);
2. waiting requests take free rows and are prefilled together, right-padded to the longest
   prompt (causal attention keeps the padding away from real tokens);
3. every running request decodes one token in one forward, each row at its own position with
   a mask that hides the keys beyond it; a request that is done leaves now, and a waiting one
   takes its row in the next turn, so short requests never wait for the longest.

Requests for different LoRA adapters (jielong.lora) run as one forward per adapter, the
adapter switched in between; the rows of each are gathered from the cache.

Sampling is per request (`SamplingParams`, picked by jielong.infer.sampling.sample): temperature,
top-k, top-p, min-p; presence and frequency penalties (OpenAI's: subtracted for each token
already generated) and the repetition penalty (CTRL's: prompt and output tokens); stop strings
and stop tokens; a seed (a generator of the request's own, so its tokens do not depend on what
else is in the batch); log-probabilities of the chosen and the likeliest tokens, under the
model's raw distribution.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from jielong.errors import UserError
from jielong.infer.fair import FairQueue
from jielong.infer.sampling import SamplingParams, sample
from jielong.lora import adapter_names, set_adapter
from jielong.model import Transformer, mean_pooled


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
        self.length = 0  # positions of this request held in the cache
        self.text, self.sent = "", 0  # decoded output, and how much of it events carried
        self.settled, self.base = 0, ""  # output[:settled] decodes to base, for good
        self.submitted = time.perf_counter()
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

    def cancel(self) -> None:
        self.cancelled = True
        self.engine._wake()

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.submitted


class SlotCache:
    """The engine's KV cache: (layers, slots, kv heads, context, head dim). Before each forward
    the engine sets which rows it covers (`rows`: a slice, or an index tensor for a subset),
    where the new keys go (`at`: one position for a prefill, or one per row) and how many
    positions to read back (`end`)."""

    keys_at_positions = True  # key i of a row holds position i: the model windows by position

    def __init__(self, model: Transformer, slots: int, context: int):
        cfg, p = model.config, next(model.parameters())
        shape = (cfg.num_hidden_layers, slots, cfg.num_key_value_heads, context, cfg.head_dim)
        self.k = torch.zeros(shape, device=p.device, dtype=p.dtype)
        self.v = torch.zeros(shape, device=p.device, dtype=p.dtype)
        self.pos = 0  # the model reads this for positions it is not given; the engine gives them
        self.rows: slice | torch.Tensor = slice(0, 0)
        self.at: int | torch.Tensor = 0
        self.end = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        K, V, rows = self.k[layer], self.v[layer], self.rows
        if isinstance(self.at, int):  # prefill: rows is a slice, T positions from `at`
            K[rows, :, self.at:self.at + k.shape[2]] = k
            V[rows, :, self.at:self.at + k.shape[2]] = v
        else:  # decode: one position per row
            r = torch.arange(rows.start, rows.stop, device=K.device) if isinstance(rows, slice) else rows
            K[r, :, self.at] = k[:, :, 0]
            V[r, :, self.at] = v[:, :, 0]
        return K[rows, :, :self.end], V[rows, :, :self.end]

    def move(self, src: int, dst: int, length: int) -> None:
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]


class Engine:
    """Continuous batching over `slots` concurrent requests; see the module's docstring."""

    def __init__(self, model: Transformer, tok, stop_ids: set[int] = frozenset(), slots: int = 16,
                 context: int | None = None, prefill_tokens: int = 8192):
        cfg = model.config
        self.model, self.tok = model.eval(), tok
        self.device = next(model.parameters()).device
        self.context = min(context or cfg.max_position_embeddings, cfg.max_position_embeddings)
        if slots < 1 or self.context < 2:
            raise UserError(f"the engine needs at least 1 slot and a context of 2 tokens, not "
                            f"{slots} slots and a {self.context}-token context")
        self.slots, self.prefill_tokens = slots, prefill_tokens
        self.stop_ids = set(stop_ids)
        self.adapters = adapter_names(model)
        self.cache = SlotCache(model, slots, self.context)
        V = cfg.vocab_size
        self.counts = torch.zeros((slots, V), dtype=torch.int32, device=self.device)  # output tokens
        self.seen = torch.zeros((slots, V), dtype=torch.bool, device=self.device)  # prompt + output
        self.running: list[Request] = []  # row i of the cache is running[i]'s
        self.waiting = FairQueue()  # fair between clients (jielong.infer.fair)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Condition()
        self.thread: threading.Thread | None = None
        self.closing = False
        self.totals = {"requests": 0, "prompt_tokens": 0, "generated_tokens": 0, "steps": 0}
        self.by_reason: dict[str, int] = {}

    # --------------------------------------------------------------------- public side

    def start(self) -> Engine:
        if self.thread is None:
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
        room = self.context - len(prompt)
        if room < 1:
            raise UserError(f"the prompt is {len(prompt)} tokens, but the model's context is "
                            f"{self.context} tokens; shorten it")
        if params.max_tokens is not None and params.max_tokens > room:
            raise UserError(f"the prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) "
                            f"is more than the model's context of {self.context} tokens; lower "
                            f"max_tokens to at most {room}")
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
        fut: Future = Future()
        self.jobs.put((fut, prompts, adapter))
        self._wake()
        return fut

    def stats(self) -> dict:
        with self.lock:
            return {"waiting": len(self.waiting), "running": len(self.running),
                    "slots": self.slots, **self.totals}

    # --------------------------------------------------------------------- engine side

    def _wake(self) -> None:
        with self.lock:
            self.lock.notify_all()

    def _loop(self) -> None:
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
                    if self.running:
                        self._decode()
                except Exception as e:  # a fault in the engine fails its requests, not the server
                    self._fail_all(f"{type(e).__name__}: {e}")
            self._fail_all("the engine was shut down")

    def _jobs(self) -> None:
        while not self.jobs.empty():
            fut, prompts, adapter = self.jobs.get()
            try:
                self._use(adapter)
                out = []
                for p in prompts:
                    lengths = torch.tensor([len(p)], device=self.device)
                    out.append(mean_pooled(self.model, torch.tensor([p], device=self.device), lengths)[0].tolist())
                fut.set_result(out)
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
        new: list[Request] = []
        with self.lock:
            budget = self.prefill_tokens
            while self.waiting and len(self.running) + len(new) < self.slots:
                r = self.waiting[0]
                if new and len(r.prompt) > budget:
                    break
                budget -= len(r.prompt)
                new.append(self.waiting.popleft())
        if not new:
            return
        for adapter in dict.fromkeys(r.adapter for r in new):
            group = [r for r in new if r.adapter == adapter]
            start = len(self.running)
            self.running += group
            for i, r in enumerate(group, start):
                self.counts[i].zero_()
                self.seen[i].zero_()
                self.seen[i, r.prompt] = True
            logits = self._prefill(group, start, adapter)
            for r, why in self._sample(list(range(start, start + len(group))), logits):
                self._leave(r, why)

    def _use(self, adapter: str | None) -> None:
        if self.adapters:
            set_adapter(self.model, adapter)

    def _prefill(self, group: list[Request], start: int, adapter: str | None) -> torch.Tensor:
        self._use(adapter)
        T = max(len(r.prompt) for r in group)
        ids = torch.zeros((len(group), T), dtype=torch.long)
        for i, r in enumerate(group):
            ids[i, :len(r.prompt)] = torch.tensor(r.prompt)
            r.length = len(r.prompt)
        c = self.cache
        c.rows, c.at, c.end, c.pos = slice(start, start + len(group)), 0, T, 0
        q = torch.arange(T, device=self.device)
        mask = q[None, :] <= q[:, None]  # the model narrows it to each layer's window
        h = self.model(ids.to(self.device), q, c, mask[None, None], hidden_only=True)
        last = torch.tensor([len(r.prompt) - 1 for r in group], device=self.device)
        h = h[torch.arange(len(group), device=self.device), last]
        return self.model.lm_head(h).float()

    def _decode(self) -> None:
        groups = {}
        for i, r in enumerate(self.running):
            groups.setdefault(r.adapter, []).append(i)
        done = []
        for adapter, rows in groups.items():
            self._use(adapter)
            reqs = [self.running[i] for i in rows]
            n = len(rows)
            c = self.cache
            whole = len(groups) == 1
            idx = torch.tensor(rows, device=self.device)
            c.rows = slice(0, n) if whole else idx
            at = torch.tensor([r.length for r in reqs], device=self.device)
            c.at, c.end, c.pos = at, int(at.max()) + 1, 0
            keys = torch.arange(c.end, device=self.device)[None, :]
            mask = keys <= at[:, None]
            x = torch.tensor([[r.output[-1]] for r in reqs], device=self.device)
            logits = self.model(x, at[:, None], c, mask[:, None, None])[:, -1].float()
            for r in reqs:
                r.length += 1
            done += self._sample(rows, logits)
        for r, why in done:
            self._leave(r, why)
        self.totals["steps"] += 1

    def _sample(self, rows: list[int], logits: torch.Tensor) -> list[tuple[Request, str]]:
        """Pick and send the next token of the running requests at `rows`; the ones now done,
        with why (the caller retires them once every row of the step has its token)."""
        reqs = [self.running[i] for i in rows]
        idx = torch.tensor(rows, device=self.device)
        want = [r.params.logprobs for r in reqs]
        raw = logits.log_softmax(-1) if any(k is not None for k in want) else None
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
            if self._emit(r, t, lp):
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
        i = self.running.index(r)
        last = len(self.running) - 1
        if i != last:  # the last row moves into the gap: the running rows stay 0..n-1
            moved = self.running[last]
            self.cache.move(last, i, moved.length)
            self.counts[i].copy_(self.counts[last])
            self.seen[i].copy_(self.seen[last])
            self.running[i] = moved
        self.running.pop()
        self._finish(r, reason)

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

