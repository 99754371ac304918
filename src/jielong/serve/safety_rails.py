"""The safety rails in the server (jielong.safety.rails), shared by /v1 and the web chat.

- `check_input(s, text)`: the input rail on the user's newest message (a /v1/completions
  prompt: the whole prompt), before anything is generated; counted in Prometheus. A blocking
  decision (refuse, resources) means the reply is the decision's own (`Decision.reply`), with
  finish_reason "content_filter"; a redaction means the model reads `Verdict.text`.
- `OutputRail`: the output rail over one engine batch, a `StreamRail` per choice; the batch
  (jielong.serve.streaming.Batch) passes each event through it, so the text the client gets
  is already checked (and held back, and redacted) whether it streams or not. On a blocking
  decision the choice's engine request is cancelled, its last event carries what was shown
  plus the policy's message, and finish_reason "content_filter", as OpenAI's API reports a
  reply its filter cut.
  Under load it reads the growing replies in larger steps (`check_every`): a check rereads
  the last OVERLAP characters whatever its step, so on a 2-core CPU serving 32 streams the
  rail's checks every 8 characters took about half of the event loop's CPU; every 32 they
  take 40% as much per character. What is shown stays checked and held back either way (a term
  of up to HOLDBACK characters never shows in part, whatever the step); only how often new
  text goes out changes: in steps of up to 32 characters instead of 8.
- `record(store, decisions, text, source, message_id)`: the decisions kept in the store's
  safety_events, for review and for `jielong feedback export` to leave flagged turns out.

The system prompt is the first frame: the rails read the user's words and the model's reply,
never replace the system message, and the server puts its system prompt first whatever the
rails decide.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from starlette.concurrency import run_in_threadpool

from jielong.infer.engine import Event
from jielong.safety.rails import CHECK_EVERY, Decision, Rails, Verdict
from jielong.serve.metrics import Metrics
from jielong.serve.store import Store

log = logging.getLogger(__name__)


async def check_input(rails: Rails, metrics: Metrics, text: str) -> Verdict:
    """The input rail on `text`, off the event loop when a model detector is in it. A rail
    that fails (a broken detector) lets the message through: logged and counted
    (jielong_safety_errors_total), so the chat answers rather than fail."""
    if not rails.enabled:
        return Verdict([], text)
    t0 = time.perf_counter()
    try:
        if rails.model_detectors:
            v = await run_in_threadpool(rails.check, text)
        else:
            v = rails.check(text)
    except Exception as err:  # noqa: BLE001 - see the docstring
        log.warning("the input rail failed; the message goes on unchecked: %s: %s",
                    type(err).__name__, err)
        metrics.safety_errors.labels("input").inc()
        return Verdict([], text)
    metrics.safety(v.decisions, "input", time.perf_counter() - t0)
    return v


async def record(store: Store | None, decisions: list[Decision], text: str, source: str,
                 message_id: str | None = None) -> None:
    """Keep `decisions` about `text` in the store (when the server has one). A store that
    fails (a full disk) is logged, never the user's error: the reply goes on, and the
    decisions are counted in /metrics all the same."""
    if store is None or not decisions:
        return
    try:
        await run_in_threadpool(store.add_safety, [d.to_dict() for d in decisions], text,
                                source, message_id)
    except Exception as err:  # noqa: BLE001 - see the docstring
        log.warning("safety decisions not stored (counted in /metrics): %s", err)


CHECK_EVERY_MOST = 32  # characters between checks of one reply, at most (see check_every)


def check_every(streams: int) -> int:
    """Characters of a growing reply between the output rail's checks while `streams` replies
    are being generated: CHECK_EVERY (8) up to 8 streams, then as many as the streams, at most
    CHECK_EVERY_MOST. Each check reads the new characters and the OVERLAP (64) before them:
    with the default detectors a streamed reply costs 17 µs per character checked every 8,
    7 µs every 32 (Chinese: 23 and 9 µs; 2-core CPU, bench/RESULTS.md, issue 23)."""
    return max(CHECK_EVERY, min(CHECK_EVERY_MOST, streams))


def blocked_text(shown: str, reply: str) -> str:
    """What follows the text already shown when a rail stops a reply: the policy's message."""
    return ("\n\n" if shown.strip() else "") + reply


class OutputRail:
    """The output rail of one batch of `n` choices answering the user's message `about`.
    `on_end(i, decisions, text)` (a coroutine function) runs once per choice when it ends,
    with every decision the rail made about it and the text it read. `load()`: how many
    replies the server is generating now, which sets the checks' step (`check_every`)."""

    def __init__(self, rails: Rails, metrics: Metrics, about: str, n: int, on_end=None,
                 load=None):
        self.metrics, self.on_end = metrics, on_end
        self.load = load  # () -> replies being generated now (Engine.decoding); None: CHECK_EVERY
        self.seconds = metrics.safety_seconds.labels("output")  # observed at every token
        self.streams = [rails.stream(about) for _ in range(n)]
        self.done: set[int] = set()
        self.broken: set[int] = set()  # choices whose rail failed: the rest goes unchecked

    def stopped(self, i: int = 0) -> Decision | None:
        """The decision that stopped choice `i`, if one did."""
        return self.streams[i].stopped

    def check(self, i: int, delta: str) -> tuple[str, Verdict | None]:
        """The rail's feed of `delta`; a rail that fails lets the rest through, logged and
        counted (jielong_safety_errors_total), rather than leave the reply unended."""
        rail = self.streams[i]
        if i not in self.broken:
            if self.load is not None:
                rail.every = check_every(self.load())
            seen = len(rail.raw)
            try:
                return rail.feed(delta) if delta else ("", None)
            except Exception as err:  # noqa: BLE001 - see the docstring
                log.warning("the output rail failed; the reply goes on unchecked: %s: %s",
                            type(err).__name__, err)
                self.metrics.safety_errors.labels("output").inc()
                self.broken.add(i)
                if len(rail.raw) == seen:
                    rail.raw += delta
        else:
            rail.raw += delta
        out, rail.shown = rail.raw[len(rail.shown):], rail.raw
        return out, None

    def finish(self, i: int) -> str:
        """The held-back tail of choice `i`, checked (unchecked once its rail failed)."""
        rail = self.streams[i]
        if i not in self.broken:
            try:
                return rail.finish()[0]
            except Exception as err:  # noqa: BLE001 - as in check
                log.warning("the output rail failed; the reply goes on unchecked: %s: %s",
                            type(err).__name__, err)
                self.metrics.safety_errors.labels("output").inc()
                self.broken.add(i)
        out, rail.shown = rail.raw[len(rail.shown):], rail.raw
        return out

    async def apply(self, i: int, e: Event) -> Event | None:
        """The event `e` of choice `i` as the client may see it (None: drop it, the choice
        having ended already)."""
        if i in self.done:
            return None
        rail = self.streams[i]
        t0 = time.perf_counter()
        text, v = self.check(i, e.text)
        if v is not None and v.blocked:
            e.request.cancel()
            shown = rail.shown
            e = replace(e, text=text + blocked_text(shown, v.blocked.reply or ""),
                        finish_reason="content_filter")
        elif e.finish_reason and e.finish_reason != "error":
            tail = self.finish(i)
            if rail.stopped:  # the last check (of the held-back tail) blocked it
                e = replace(e, text=text + blocked_text(rail.shown, rail.stopped.reply or ""),
                            finish_reason="content_filter")
            else:
                e = replace(e, text=text + tail)
        else:
            e = replace(e, text=text)
        self.seconds.observe(time.perf_counter() - t0)
        if e.finish_reason:
            self.done.add(i)
            self.metrics.safety(rail.decisions)
            if self.on_end is not None:
                await self.on_end(i, rail.decisions, rail.redacted())
        return e


def v1_recorder(store: Store | None):
    """An `on_end` for /v1: the decisions kept with the reply's text, source "v1"."""
    async def on_end(i: int, decisions: list[Decision], text: str) -> None:
        await record(store, decisions, text, "v1")
    return on_end
