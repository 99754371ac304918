"""A running request on the server's side: the engine requests one HTTP request submitted
(`Batch`), their events brought onto the event loop, and the ways out: all at once
(`collect`), or as server-sent events (`sse`, `event_stream`, and OpenAI's stream ending in
`data: [DONE]`, `openai_stream`).

A client that goes away (a closed stream, a dropped connection) cancels its requests
(`watch_disconnect`), so their slots in the engine free at the next step. A batch admitted
with a ticket (jielong.serve.admission) submits as its client, releases the ticket when its
last choice ends (unless its owner keeps the ticket over several batches, `keep_ticket`: the
web chat's tool loop), and is cut at the ticket's deadline or on shutdown (`cut`): its
choices not done end with finish_reason "length" (cut short), so a stream still gets its
final event.

Metrics (jielong.serve.metrics): each request's timings are observed when the engine ends
it, and how it ended when its last event reaches the client (after the output rail, which
may make it "content_filter"); a batch whose reader stopped early (`close`) counts its
requests as the engine ended them. A stream that ends in an error event is marked so that
the HTTP count shows the error, not the 200 it began with.

The engine is the local one (jielong.infer.engine) or an upstream server
(jielong.serve.upstream): `Batch.ready` waits for the upstream's answer, so that its errors
are HTTP statuses; `Batch.usage` counts tokens as the engine counted them; `failed` is the
error a failed request is answered with.

The per-token path is kept short, as it runs for every token of every stream (issue 23; the
profile is in bench/RESULTS.md): the engine's thread hands events to the event loop through
one `Inbox` per loop, which wakes the loop once for all the events that arrive before it runs
(asyncio's `call_soon_threadsafe` writes to the loop's self-pipe at every call: one system
call, and one GIL hand-off, per token per stream); and `openai_stream` writes the events that
are ready together (a reply's last chunk, the usage chunk and `[DONE]`; events that queued up
while the loop was busy) as one body message, so one socket write where there were several.
The bytes a client reads are the same.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from jielong.infer.engine import Engine, Event
from jielong.infer.engine import Request as EngineRequest
from jielong.infer.sampling import SamplingParams
from jielong.serve.errors import ApiError, engine_failed
from jielong.serve.metrics import Metrics, stream_failed
from jielong.serve.upstream import UpstreamRequest


class Inbox:
    """Calls handed from other threads (the engine's) to one event loop, run there in the
    order they came. The first call of a burst wakes the loop (`call_soon_threadsafe`); the
    calls that arrive before the loop gets to them ride along with it."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.calls: collections.deque[tuple[Callable, object]] = collections.deque()
        self.scheduled = False

    def put(self, fn: Callable, arg: object) -> None:
        """Run fn(arg) on the loop soon (from any thread); RuntimeError once the loop closed."""
        self.calls.append((fn, arg))  # deque.append is atomic
        if not self.scheduled:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self.drain)
            except RuntimeError:
                self.scheduled = False
                raise

    def drain(self) -> None:  # on the loop
        # Reset first: a call appended from now on either is popped below or schedules a drain.
        self.scheduled = False
        while self.calls:
            fn, arg = self.calls.popleft()
            fn(arg)


INBOXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inbox(loop: asyncio.AbstractEventLoop) -> Inbox:
    """The loop's Inbox (one per loop, made on the loop's own thread by the first Batch; a
    new one each time for a loop that cannot be weakly referenced)."""
    try:
        box = INBOXES.get(loop)
        if box is None:
            box = INBOXES[loop] = Inbox(loop)
    except TypeError:  # no weak references to this loop class
        box = Inbox(loop)
    return box


class Batch:
    """Requests submitted together (n choices, several prompts); their events, in the order
    the engine made them, as (choice index, Event) on the event loop. With an output `rail`
    (jielong.serve.safety_rails.OutputRail) each event's text is what the rail lets through."""

    def __init__(self, engine: Engine, jobs: list[tuple[list[int], SamplingParams, str | None]],
                 metrics: Metrics, rail=None, ticket=None, keep_ticket: bool = False):
        self.loop = asyncio.get_running_loop()
        self.inbox = inbox(self.loop)
        self.rail = rail
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.unread = len(jobs)  # requests whose last event `events` has not yielded yet
        self.metrics = metrics
        self.reqs: list[EngineRequest] = []
        self.closed = False  # nobody reads the events any more
        self.counted: set[int] = set()  # requests whose ending is counted
        self.ticket, self.left = ticket, len(jobs)
        self.keep_ticket = keep_ticket  # the owner releases it (after its last batch)
        self.cut_reason: str | None = None  # "timeout" or "shutdown" once cut
        client = None if ticket is None else ticket.client
        try:
            for prompt, params, adapter in jobs:
                if client is None:  # an engine-like object may not take a client
                    self.reqs.append(engine.submit(prompt, params, adapter, self._put))
                else:
                    self.reqs.append(engine.submit(prompt, params, adapter, self._put,
                                                   client=client))
        except BaseException:
            self.cancel()
            self.close()
            if ticket is not None:
                ticket.release()
            raise
        self.index = {r.id: i for i, r in enumerate(self.reqs)}
        if ticket is not None:
            ticket.batch = self

    def _put(self, e: Event) -> None:  # called from the engine's thread
        if e.finish_reason and self.ticket is not None:
            self.left -= 1
            if self.left == 0 and not self.keep_ticket:
                self.ticket.release()
        try:
            self.inbox.put(self._arrive, e)
        except RuntimeError:  # the event loop has closed: nobody is listening
            pass

    def _arrive(self, e: Event) -> None:  # on the event loop
        if e.finish_reason:
            self.metrics.timed(e.request)
            if self.closed:
                self._count(e.request, e.finish_reason)
                return
        self.queue.put_nowait(e)

    def _count(self, r: EngineRequest, reason: str) -> None:
        if r.id not in self.counted:
            self.counted.add(r.id)
            self.metrics.ended(self.metrics.model_of(r), reason)

    def close(self) -> None:
        """The reader is done: the endings it did not read are counted as the engine gave
        them (a client that went away: "cancelled")."""
        self.closed = True
        while not self.queue.empty():
            e = self.queue.get_nowait()
            if e.finish_reason:
                self._count(e.request, e.finish_reason)
    async def ready(self) -> None:
        """Return once every request is under way; raise the ApiError an upstream engine
        answered one with (the local engine's requests are under way once submitted)."""
        for r in self.reqs:
            if isinstance(r, UpstreamRequest):
                error = await r.accepted
                if error is not None:
                    self.cancel()
                    raise error

    def usage(self, n: int = 1) -> tuple[int, int]:
        """(prompt tokens, completion tokens) of the batch: each prompt counted once (its
        `n` choices share it), as the engine or the upstream counted them."""
        return (sum(tokens(r)[0] for r in self.reqs[::n]),
                sum(tokens(r)[1] for r in self.reqs))

    def cancel(self) -> None:
        for r in self.reqs:
            if r.finish_reason is None:
                r.cancel()

    def cut(self, why: str) -> None:
        """End the choices not done ("timeout", "shutdown"): finish_reason "length"."""
        if self.cut_reason is None:
            self.cut_reason = why
        self.cancel()

    async def _next(self) -> Event:
        deadline = None if self.ticket is None else self.ticket.deadline
        if deadline is None or self.cut_reason is not None:
            return await self.queue.get()
        try:
            return await asyncio.wait_for(self.queue.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self.cut("timeout")
            return await self.queue.get()

    def waits(self) -> bool:
        """Whether the next event is not here yet (a stream should send what it has)."""
        return self.unread > 0 and self.queue.empty()

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        self.unread = len(self.reqs)
        while self.unread:
            e = await self._next()
            if e.finish_reason == "cancelled" and self.cut_reason is not None:
                e = dataclasses.replace(e, finish_reason="length")
            if e.finish_reason:
                self.unread -= 1
            i = self.index[e.request.id]
            if self.rail is not None:
                e = await self.rail.apply(i, e)
                if e is None:  # the rail ended this choice already
                    continue
            if e.finish_reason:
                self._count(e.request, e.finish_reason)
            yield i, e


def tokens(r) -> tuple[int, int]:
    """(prompt, completion) tokens of an engine request or an upstream one."""
    if isinstance(r, UpstreamRequest):
        return r.prompt_tokens, r.completion_tokens
    return len(r.prompt), len(r.output)


def failed(e: Event) -> ApiError:
    """The error a request that ended with finish_reason "error" is answered with: the
    upstream's (a 4xx passed on, 502, 504) or the local engine's 500."""
    if isinstance(e.request, UpstreamRequest) and e.request.failure is not None:
        return e.request.failure
    return engine_failed(e.error)


async def watch_disconnect(request: Request, batch: Batch) -> None:
    """Cancel the batch when the client goes away (the body is already read, so the next ASGI
    message is the disconnect)."""
    try:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                batch.cancel()
                return
    except Exception:  # noqa: BLE001 - a watcher must never take the request down
        return


async def collect(request: Request, batch: Batch) -> list[dict]:
    """Wait for every choice of a batch ({"text", "logprobs", "finish", "tokens"} each); cancel
    it if the client goes away first."""
    watch = asyncio.create_task(watch_disconnect(request, batch))
    out = [{"text": [], "logprobs": [], "finish": None} for _ in batch.reqs]
    try:
        await batch.ready()
        async for i, e in batch.events():
            out[i]["text"].append(e.text)
            out[i]["logprobs"] += e.logprobs or []
            if e.finish_reason == "error":
                raise failed(e)
            if e.finish_reason:
                out[i]["finish"] = e.finish_reason
    finally:
        watch.cancel()
        batch.cancel()
        batch.close()
    for o, r in zip(out, batch.reqs, strict=True):
        o["text"], o["tokens"] = "".join(o["text"]), tokens(r)[1]
    return out


def sse(obj: Any) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def event_stream(body: AsyncIterator[str]) -> StreamingResponse:
    """A response streaming the server-sent events `body` yields, unbuffered by proxies."""
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def openai_stream(request: Request, batch: Batch,
                  chunks: AsyncIterator[dict]) -> StreamingResponse:
    """OpenAI's stream: server-sent events from `chunks`, ending in [DONE] (an ApiError raised
    by `chunks` is sent as an error event before it); the batch is cancelled when the client
    goes away or the stream ends early. Events are sent as soon as the next one would have to
    be waited for; those ready together go out in one write."""

    async def body():
        watch = asyncio.create_task(watch_disconnect(request, batch))
        ready: list[str] = []
        try:
            async for c in chunks:
                ready.append(sse(c))
                if batch.waits():
                    yield "".join(ready)
                    ready.clear()
        except ApiError as e:
            stream_failed(request.scope, e.status)
            ready.append(sse(e.body()))
        except Exception:
            if ready:  # what was ready goes out before the failure, as it would one by one
                yield "".join(ready)
            raise
        finally:
            watch.cancel()
            batch.cancel()
            batch.close()
        ready.append("data: [DONE]\n\n")
        yield "".join(ready)

    return event_stream(body())
