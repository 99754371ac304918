"""Fitting a chat to the context (jielong.infer.context): the default reply length, and the
oldest turns left out, system prompt kept, as few as need be."""

from jielong.infer.context import fit_conversation, reply_budget


def encode(messages):
    """One token per character of content, plus 3 per message (a template's framing)."""
    return [0] * sum(len(m["content"]) + 3 for m in messages)


def convo(*lengths, system=True):
    out = [{"role": "system", "content": "s" * 7}] if system else []
    for i, n in enumerate(lengths):
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": str(i) * n})
    return out


def test_reply_budget_leaves_most_of_the_context_to_the_conversation():
    assert reply_budget(512) == 128 and reply_budget(4096) == 1024
    assert reply_budget(131072) == 1024 and reply_budget(2) == 1 and reply_budget(1) == 1


def test_a_conversation_that_fits_is_kept_whole():
    msgs = convo(10, 10, 10)
    kept, prompt, dropped = fit_conversation(msgs, encode, 100, 20)
    assert (kept, dropped, len(prompt)) == (msgs, 0, len(encode(msgs)))


def test_the_fewest_oldest_turns_are_left_out_and_the_system_prompt_stays():
    msgs = convo(20, 20, 20, 20, 20, 20, 20)  # system (10) + 7 messages of 23 = 171 tokens
    for context, reserve in ((150, 20), (120, 10), (80, 10), (171, 1), (172, 0)):
        kept, prompt, dropped = fit_conversation(msgs, encode, context, reserve)
        assert kept[0] == msgs[0] and kept[1]["role"] == "user" and kept[-1] == msgs[-1]
        assert kept[1:] == msgs[1 + dropped:] and dropped % 2 == 0  # whole turns, oldest first
        assert len(prompt) + reserve <= context, (context, reserve)
        if dropped:  # one turn fewer left out would not fit
            more = msgs[:1] + msgs[1 + dropped - 2:]
            assert len(encode(more)) + reserve > context
    assert fit_conversation(msgs, encode, 172, 1)[2] == 0


def test_the_last_turn_is_kept_even_when_it_alone_is_too_long():
    msgs = convo(20, 20, 200)
    kept, prompt, dropped = fit_conversation(msgs, encode, 100, 10)
    assert kept == [msgs[0], msgs[-1]] and dropped == 2 and len(prompt) == 213
    lone = convo(500, system=False)
    assert fit_conversation(lone, encode, 100, 10) == (lone, encode(lone), 0)


def test_no_system_prompt_and_a_reply_to_regenerate():
    msgs = convo(30, 30, 30, 30, 30, system=False)
    kept, _, dropped = fit_conversation(msgs, encode, 90, 10)
    assert kept == msgs[4:] and dropped == 4
    # a greeting before the first question goes with the first turn
    greeted = [{"role": "assistant", "content": "hi!"}, *msgs]
    kept, _, dropped = fit_conversation(greeted, encode, 90, 10)
    assert kept == msgs[4:] and dropped == 5
