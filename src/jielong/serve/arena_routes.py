"""The web chat's arena: one question answered by two served models side by side, anonymous
until the user votes which answer is better, as Chatbot Arena collects its votes (Chiang et
al. 2024, "Chatbot Arena: An Open Platform for Evaluating LLMs by Human Preference").

Routes (under /api, beside jielong.serve.chat_routes'):
- POST /api/arena {content, system_prompt?, settings?}: a new conversation whose question is
  `content`; two different models are drawn at random from the served ones (the base model
  and its LoRA adapters, `jielong serve --adapter NAME=DIR`), in random order (the first is
  A, shown on the left), and both answer at once with the same sampling settings. The stream
  is the events `battle` (the conversation, the question, and the battle: its two empty
  answers' ids), then `delta` and `done` (or `error`) of each answer, each with its `side`
  ("a" or "b"), interleaved as they are written;
- POST /api/arena/{bid}/vote {winner: "a"|"b"|"tie"|"both_bad"}: the vote (a new one replaces
  it as current; all are kept) and the battle with its `models` now shown.

The safety rails guard the arena as they guard the chat (jielong.serve.chat_routes): the input
rail reads the question (stored redacted when it redacts), the output rail each answer. A
question the input rail blocks is answered by the policy on both sides (the decision's reply,
finish_reason "content_filter", a `safety` event each), nothing generated; such a battle
compares nothing, and a vote on it is a 400.

Contestants stay anonymous: until the battle has a vote no answer says which model wrote it,
here or in GET /api/conversations/{cid} (jielong.serve.store.sealed). A server with one model
answers POST /api/arena with a 400 naming how to serve two. `jielong eval arena` turns the
votes into Bradley-Terry ratings (jielong.eval.arena).
"""

from __future__ import annotations

import asyncio
import random

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from jielong.errors import UserError
from jielong.safety.rails import BLOCKING
from jielong.serve.admission import admit
from jielong.serve.body import read_body
from jielong.serve.chat_routes import (
    Reply,
    asked,
    input_rail,
    prepare,
    safety_event,
    store_call,
    store_of,
)
from jielong.serve.errors import ApiError, user_error
from jielong.serve.guard import authorize
from jielong.serve.metrics import stream_failed
from jielong.serve.schemas import ArenaIn, Generate, VoteIn
from jielong.serve.served import served
from jielong.serve.store import sealed_battle
from jielong.serve.streaming import event_stream, sse

router = APIRouter(prefix="/api", dependencies=[Depends(authorize)])
SIDES = ("a", "b")
draw = random.SystemRandom()  # which two models, and which is A


def contestants(request: Request) -> list[str]:
    """Two different served models, in random order (A first); a 400 when only one is served."""
    s = served(request)
    models = [s.model_name, *s.engine.adapters]
    if len(models) < 2:
        raise ApiError(400, f"the arena needs two models, and this server serves one "
                            f"({s.model_name}); serve LoRA adapters beside it, e.g. `jielong "
                            "serve --model DIR --adapter NAME=ADAPTER_DIR`",
                       code="arena_needs_two_models")
    return draw.sample(models, 2)


@router.post("/arena")
async def ask(request: Request):
    s, store = served(request), store_of(request)
    body = await read_body(request, ArenaIn)
    settings = body.settings.model_dump(exclude_none=True) if body.settings else {}
    settings.pop("model", None)  # the arena picks the models
    names = contestants(request)
    verdict = await input_rail(s, body.content)
    if verdict.blocked:
        return await refused(request, body, settings, names, verdict)
    # every check before anything is stored: a prompt too long for either model is a 400
    draft = {"settings": settings, "system_prompt": body.system_prompt}
    question = [{"role": "user", "content": verdict.text}]
    jobs = [prepare(s, draft, question, Generate(model=name)) for name in names]
    tickets = []  # admission (jielong.serve.admission) before anything is stored

    def release() -> None:
        for t in tickets:
            if t is not None:
                t.release()

    try:
        for job, *_ in jobs:
            tickets.append(admit(request, [job]))
        conv = await store_call(store.create_conversation, None, body.system_prompt, settings)
        user = await asked(store, verdict, conv["id"], None)
        answers = [await store_call(store.add_message, conv["id"], user["id"], "assistant", "",
                                    model=name, sampling=stored)
                   for job, name, stored, *_ in jobs]
        battle = await store_call(store.add_battle, conv["id"], user["id"], answers[0]["id"],
                                  answers[1]["id"])
    except BaseException:
        release()
        raise
    replies: list[Reply] = []
    try:
        for (job, *_), m, t in zip(jobs, answers, tickets, strict=True):
            replies.append(Reply(s, store, m, job, request.app.state.chat_replies,
                                 about=verdict.text, ticket=t))
    except UserError as e:
        tickets = tickets[len(replies) + 1:]  # the failed Batch released its own
        release()
        for r in replies:
            r.batch.cancel()
        for m in answers[len(replies):]:
            await store_call(store.update_message, m["id"], finish_reason="error")
        raise user_error(e) from None
    conv = await store_call(store.conversation, conv["id"], False)
    return duel(request, replies, opening(conv, user, battle, answers))


def opening(conv: dict, question: dict, battle: dict, answers: list[dict]) -> dict:
    """The stream's first event: the conversation, the question, the battle (answers
    anonymous)."""
    return {"type": "battle", "conversation": conv, "question": question,
            "battle": {**sealed_battle(battle),
                       "answers": {side: {**m, "model": None}
                                   for side, m in zip(SIDES, answers, strict=True)}}}


async def refused(request: Request, body: ArenaIn, settings: dict, names: list[str],
                  verdict) -> StreamingResponse:
    """A battle whose question the input rail blocked: both answers are the decision's reply
    (finish_reason "content_filter"), streamed as `battle`, then `safety` and `done` for each
    side; nothing generated."""
    store, d = store_of(request), verdict.blocked
    for name in names:
        served(request).metrics.ended(name, "content_filter")
    conv = await store_call(store.create_conversation, None, body.system_prompt, settings)
    user = await asked(store, verdict, conv["id"], None)
    answers = [await store_call(store.add_message, conv["id"], user["id"], "assistant",
                                d.reply or "", model=name, finish_reason="content_filter")
               for name in names]
    battle = await store_call(store.add_battle, conv["id"], user["id"], answers[0]["id"],
                              answers[1]["id"])
    conv = await store_call(store.conversation, conv["id"], False)
    events = [opening(conv, user, battle, answers)]
    for side, m in zip(SIDES, answers, strict=True):
        events += [{**safety_event(d, user["id"]), "side": side},
                   {"type": "done", "message": {**m, "model": None}, "side": side}]

    async def stream():
        for event in events:
            yield sse(event)

    return event_stream(stream())


def duel(request: Request, replies: list[Reply], first: dict) -> StreamingResponse:
    """One stream of both answers: `first`, then each answer's events tagged with its side;
    it ends when both have. A client that goes away stops both (each is stored as it is)."""

    async def body():
        merged: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()

        async def relay(side: str, r: Reply) -> None:
            while True:
                event = await r.events.get()
                merged.put_nowait((side, event))
                if event["type"] in ("done", "error"):
                    return

        async def watch() -> None:  # one reader of the connection for both answers
            try:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
            except Exception:  # noqa: BLE001 - a watcher must never take the request down
                return
            for r in replies:
                r.batch.cancel()

        tasks = [asyncio.create_task(relay(side, r))
                 for side, r in zip(SIDES, replies, strict=True)]
        watcher = asyncio.create_task(watch())
        try:
            yield sse(first)
            left = len(replies)
            while left:
                side, event = await merged.get()
                if event["type"] == "done":
                    event = {**event, "message": {**event["message"], "model": None}}
                if event["type"] in ("done", "error"):
                    left -= 1
                if event["type"] == "error":
                    stream_failed(request.scope)
                yield sse({**event, "side": side})
        finally:
            watcher.cancel()
            for t in tasks:
                t.cancel()
            for r in replies:
                r.batch.cancel()

    return event_stream(body())


@router.post("/arena/{bid}/vote")
async def vote(bid: str, request: Request):
    store = store_of(request)
    body = await read_body(request, VoteIn)
    battle = await store_call(store.battle, bid)
    question = await store_call(store.message, battle["question_id"])
    if any(d["action"] in BLOCKING for d in question["safety"]):
        raise ApiError(400, f"battle {bid}: its question was answered by the safety policy on "
                            "both sides, nothing was generated to compare; ask another one",
                       code="safety_blocked")
    await store_call(store.vote, bid, body.winner)
    return {"battle": await store_call(store.battle, bid)}
