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
from jielong.safety.rails import Decision, Rails, Verdict
from jielong.serve.metrics import Metrics
from jielong.serve.store import Store

log = logging.getLogger(__name__)


async def check_input(rails: Rails, metrics: Metrics, text: str) -> Verdict:
    """The input rail on `text`, off the event loop when a model detector is in it."""
    if not rails.enabled:
        return Verdict([], text)
    t0 = time.perf_counter()
    if rails.model_detectors:
        v = await run_in_threadpool(rails.check, text)
    else:
        v = rails.check(text)
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


def blocked_text(shown: str, reply: str) -> str:
    """What follows the text already shown when a rail stops a reply: the policy's message."""
    return ("\n\n" if shown.strip() else "") + reply


class OutputRail:
    """The output rail of one batch of `n` choices answering the user's message `about`.
    `on_end(i, decisions, text)` (a coroutine function) runs once per choice when it ends,
    with every decision the rail made about it and the text it read."""

    def __init__(self, rails: Rails, metrics: Metrics, about: str, n: int, on_end=None):
        self.metrics, self.on_end = metrics, on_end
        self.streams = [rails.stream(about) for _ in range(n)]
        self.done: set[int] = set()

    async def apply(self, i: int, e: Event) -> Event | None:
        """The event `e` of choice `i` as the client may see it (None: drop it, the choice
        having ended already)."""
        if i in self.done:
            return None
        rail = self.streams[i]
        t0 = time.perf_counter()
        text, v = rail.feed(e.text) if e.text else ("", None)
        if v is not None and v.blocked:
            e.request.cancel()
            shown = rail.shown
            e = replace(e, text=text + blocked_text(shown, v.blocked.reply or ""),
                        finish_reason="content_filter")
        elif e.finish_reason and e.finish_reason != "error":
            tail, _ = rail.finish()
            e = replace(e, text=text + tail)
        else:
            e = replace(e, text=text)
        self.metrics.safety([], "output", time.perf_counter() - t0)
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
