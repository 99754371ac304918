"""A conversation as training reads it: token ids and labels, with IGNORE where nothing is
learned. Shared by SFT, distillation and the preference stages (which encode a prompt and
each reply the same way), so no stage imports another for it.
"""

from __future__ import annotations

from jielong.errors import UserError

IGNORE = -100  # the label of a token that is not learned (PyTorch's cross_entropy ignore_index)


def encode(tok, messages: list[dict], train_on_prompt: bool = False,
           tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """(ids, labels) of one conversation; labels are IGNORE where nothing is learned. The
    final reply always ends in an end-of-turn token (added when the template has none).

    With tool use (OpenAI's `tool_calls` and `tool` messages, `tools` rendered by the chat
    template: data.formats), the assistant's calls and replies are learned, the tool list
    and the tools' results are not: the model learns when and how to call, not to predict
    what a tool will say."""
    ids, mask = tok.encode_chat(messages, tools=tools) if tools else tok.encode_chat(messages)
    if not any(mask):
        raise UserError("no assistant tokens found in the rendered conversation")
    last = max(i for i, m in enumerate(mask) if m)
    if ids[last] not in tok.end_ids:  # the template closes replies with nothing we know
        eos = tok.eos_id
        ids, mask = ids[:last + 1] + [eos] + ids[last + 1:], mask[:last + 1] + [True] + mask[last + 1:]
    labels = [t if (m or train_on_prompt) else IGNORE for t, m in zip(ids, mask, strict=True)]
    return ids, labels
