"""Fitting a chat to the model's context: how long a reply may be by default, and which of the
oldest turns to leave out when a conversation has outgrown the context.

    kept, prompt, dropped = fit_conversation(messages, encode, context=512,
                                             reserve=reply_budget(512))

One function for every chat front end: the terminal chat (jielong.infer.chat) and the web
chat's /api (jielong.serve.chat_routes). /v1/chat/completions does not use it: there the
client owns the conversation, and OpenAI's answer to one that is too long is a 400
(context_length_exceeded).
"""

from __future__ import annotations

from collections.abc import Callable


def reply_budget(context: int) -> int:
    """The most tokens of one chat reply when the user sets none: a quarter of the context, at
    most 1024.

    Why a fraction: a reply allowed the whole context fills it in one turn, and then no later
    message fits (issue 14, item 5). A quarter leaves three quarters for the conversation the
    reply answers, so the last few turns stay in view; on the demo's 512-token model that is a
    128-token reply, several times its usual answer. 1024 caps it on long-context models, as
    a chat reply rarely needs more and the cap keeps a runaway reply short."""
    return max(1, min(1024, context // 4))


def fit_conversation(messages: list[dict], encode: Callable[[list[dict]], list[int]],
                     context: int, reserve: int) -> tuple[list[dict], list[int], int]:
    """(the messages kept, their prompt ids, how many messages were left out): `messages`
    without as few of its oldest turns as leave `reserve` tokens of `context` for the reply.

    `encode(messages)` is the prompt the model reads (the chat template, ready for the reply).
    A turn is a user message with the replies that follow it; system messages are always kept,
    and so is the last turn (the message being answered): when that alone leaves less than
    `reserve`, it is returned as it is and the caller decides (a shorter reply, or an error).
    """
    prompt = encode(messages)
    if len(prompt) + reserve <= context:
        return messages, prompt, 0
    # where each turn starts, among the messages that may be left out (all but system)
    starts = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if len(starts) < 2:
        return messages, prompt, 0

    def without(k: int) -> list[dict]:  # the conversation less its k oldest turns
        cut = starts[k]
        return [m for i, m in enumerate(messages) if i >= cut or m["role"] == "system"]

    # the prompt shrinks as turns are left out: binary search for the fewest to leave out,
    # keeping (kept, ids) the conversation less its `hi` oldest turns, which fits
    hi = len(starts) - 1
    kept = without(hi)
    ids = encode(kept)
    if len(ids) + reserve <= context:
        lo = 1
        while lo < hi:
            mid = (lo + hi) // 2
            shorter = without(mid)
            shorter_ids = encode(shorter)
            if len(shorter_ids) + reserve <= context:
                hi, kept, ids = mid, shorter, shorter_ids
            else:
                lo = mid + 1
    return kept, ids, len(messages) - len(kept)
