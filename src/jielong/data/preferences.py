"""Preference data: which of two replies people prefer, or a 👍/👎 on one reply.

The record types below are what every alignment stage (reward, dpo, kto, rlhf) consumes;
`encode_response` turns a prompt and a reply into token ids with labels on the reply only.
"""

from __future__ import annotations

from dataclasses import dataclass

from jielong.train.losses import IGNORE


@dataclass
class PrefPair:
    """A prompt (messages up to the reply) and two replies (assistant messages), chosen
    preferred to rejected. `where` is the source, e.g. "prefs.jsonl:12"."""

    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    where: str = ""


@dataclass
class Rating:
    """A prompt, one reply, and whether people liked it (👍 True, 👎 False)."""

    prompt: list[dict]
    completion: list[dict]
    label: bool
    where: str = ""


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of labelled positions."""
    runs, start = [], None
    for i, t in enumerate(labels + [IGNORE]):
        if t != IGNORE and start is None:
            start = i
        elif t == IGNORE and start is not None:
            runs.append((start, i))
            start = None
    return runs


def encode_response(tok, prompt: list[dict], reply: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, labels) of prompt + reply rendered with the chat template; labels (aligned
    with ids, not shifted) hold the reply's tokens and its end-of-turn token, IGNORE
    elsewhere — earlier assistant turns of the prompt are context, not learned."""
    from jielong.train.sft import encode

    ids, labels = encode(tok, prompt + reply)
    n_replies = sum(1 for m in reply if m.get("role") == "assistant")
    keep = _runs(labels)[-n_replies:] if n_replies else []
    out = [IGNORE] * len(ids)
    for a, b in keep:
        out[a:b] = labels[a:b]
    return ids, out
