"""The per-token path of a served stream (jielong.serve.streaming): the engine thread's events
reach the event loop in order with one wake-up per burst (`Inbox`), and `openai_stream` sends
the events that are ready together as one write, with the same bytes as one event a write.
A scripted engine stands in for the model, so the order and timing are known exactly."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")

from jielong.infer.engine import Event  # noqa: E402
from jielong.serve.streaming import Batch, Inbox, inbox, openai_stream, sse  # noqa: E402

IDS = itertools.count()


class ScriptedEngine:
    """submit() returns a request; `emit` plays a reply's events (texts, then "length")."""

    def submit(self, prompt, params, adapter, on_event):
        r = SimpleNamespace(id=next(IDS), finish_reason=None, adapter=None, on_event=on_event)
        r.cancel = lambda: None
        return r

    @staticmethod
    def emit(r, texts: list[str]) -> None:
        for t in texts:
            r.on_event(Event(r, t, [1]))
        r.finish_reason = "length"
        r.on_event(Event(r, "", [], None, "length"))


METRICS = SimpleNamespace(timed=lambda r: None, ended=lambda m, reason, n=1: None,
                          model_of=lambda r: "m")


class Connected:
    """A request whose client never goes away."""

    async def receive(self):
        await asyncio.Event().wait()

    scope: dict = {}


def chunks_of(batch: Batch):
    async def chunks():
        async for i, e in batch.events():
            if e.text:
                yield {"index": i, "text": e.text}
            if e.finish_reason:
                yield {"index": i, "finish_reason": e.finish_reason}
        yield {"usage": 3}
    return chunks()


EXPECTED = "".join([sse({"index": 0, "text": "甲"}), sse({"index": 0, "text": "乙"}),
                    sse({"index": 0, "text": " c"}), sse({"index": 0, "finish_reason": "length"}),
                    sse({"usage": 3}), "data: [DONE]\n\n"])


async def body_pieces(send_events) -> list[str]:
    """The body messages of a one-request stream; `send_events(engine, request)` plays it."""
    engine = ScriptedEngine()
    batch = Batch(engine, [([1], None, None)], METRICS)
    response = openai_stream(Connected(), batch, chunks_of(batch))
    player = asyncio.create_task(send_events(engine, batch.reqs[0]))
    pieces = [p async for p in response.body_iterator]
    await player
    return pieces


def test_events_ready_together_go_out_in_one_write():
    async def at_once(engine, r):
        engine.emit(r, ["甲", "乙", " c"])

    pieces = asyncio.run(body_pieces(at_once))
    assert "".join(pieces) == EXPECTED
    assert len(pieces) == 1


def test_events_that_come_apart_go_out_as_they_come_and_the_end_in_one_write():
    async def one_by_one(engine, r):
        for t in ["甲", "乙", " c"]:
            await asyncio.sleep(0.01)
            r.on_event(Event(r, t, [1]))
        await asyncio.sleep(0.01)
        r.finish_reason = "length"
        r.on_event(Event(r, "", [], None, "length"))

    pieces = asyncio.run(body_pieces(one_by_one))
    assert "".join(pieces) == EXPECTED
    # one write a token; the finish chunk, the usage chunk and [DONE] together
    assert pieces[:3] == [sse({"index": 0, "text": t}) for t in ["甲", "乙", " c"]]
    assert len(pieces) == 4 and pieces[3].endswith("data: [DONE]\n\n")
    assert [json.loads(x[6:]) for x in pieces[3].split("\n\n")[:2]] == [
        {"index": 0, "finish_reason": "length"}, {"usage": 3}]


def test_inbox_wakes_the_loop_once_for_a_burst_from_another_thread_in_order():
    async def main():
        loop = asyncio.get_running_loop()
        wakes = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakes.append(a), real(*a))[1]
        box, got = Inbox(loop), []
        t = threading.Thread(target=lambda: [box.put(got.append, k) for k in range(100)])
        t.start()
        t.join()  # the loop is held here: all 100 arrive before it runs again
        await asyncio.sleep(0)
        first = list(got)
        t = threading.Thread(target=lambda: box.put(got.append, 100))
        t.start()
        t.join()
        await asyncio.sleep(0)
        return first, got, len(wakes)

    first, got, wakes = asyncio.run(main())
    assert first == list(range(100))
    assert got == list(range(101))
    assert wakes == 2  # one for the burst of 100, one for the late call


def test_inbox_put_after_the_loop_closed_raises():
    loop = asyncio.new_event_loop()
    box = Inbox(loop)
    loop.close()
    with pytest.raises(RuntimeError):
        box.put(print, "nobody listens")
    assert not box.scheduled


def test_one_inbox_per_loop():
    async def main():
        loop = asyncio.get_running_loop()
        return inbox(loop) is inbox(loop), inbox(loop).loop is loop

    assert asyncio.run(main()) == (True, True)


def test_what_was_ready_goes_out_before_an_unexpected_failure():
    async def main():
        engine = ScriptedEngine()
        batch = Batch(engine, [([1], None, None)], METRICS)
        engine.emit(batch.reqs[0], ["甲", "乙"])

        async def chunks():
            async for i, e in batch.events():
                if e.finish_reason:
                    raise RuntimeError("a bug")
                yield {"index": i, "text": e.text}

        pieces = []
        with pytest.raises(RuntimeError, match="a bug"):
            async for p in openai_stream(Connected(), batch, chunks()).body_iterator:
                pieces.append(p)
        return pieces

    assert asyncio.run(main()) == [sse({"index": 0, "text": "甲"}) + sse({"index": 0, "text": "乙"})]
