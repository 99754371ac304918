"""The demo's last step: an assistant to chat with, and feedback already in its store.

`jielong serve` with no options serves RUN/assistant (the RLHF-aligned model, the demo's
best chat model) and keeps chats in RUN/feedback.db. The demo puts a few conversations there,
rated as a user would: of two answers to a Chinese question, 👍 for the one in the script the
question was written in and 👎 for the other; one answer edited into the right one; one
regeneration left unrated (not a preference). So the loop runs out of the box:

    jielong serve                                     # chat at http://127.0.0.1:8000
    jielong feedback export --db runs/demo/feedback.db --format dpo --out runs/demo/feedback-dpo.jsonl
    jielong train dpo runs/demo/feedback-dpo.jsonl --model runs/demo/assistant --method lora
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from jielong.checkpoint import load_model
from jielong.demo.tasks import script_chars, script_of, script_preferences, world_for
from jielong.files import atomic_dir
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.serve.store import Store

NAME = "assistant"
TRIES = 8  # sampled answers per question, looking for one in the other script


def _reply(model, tok, messages: list[dict], seed: int | None) -> str:
    ids = tok.encode_chat(messages, add_generation_prompt=True)[0]
    s = SamplingParams(48, temperature=0.0 if seed is None else 1.0, seed=seed)
    out = generate_ids(model, [ids], s, tok.end_ids | {model.config.eos_token_id})[0]
    return tok.decode(out, skip_special_tokens=True).strip()


def _wrong_reply(model, tok, questions):
    """A question and a wrong, non-empty reply to it (an empty one is nothing to correct):
    greedy if the model gives one, else sampled, as a barely trained model may reply nothing."""
    for seed in (None, *range(TRIES)):
        for item in questions[:-21:-1] if seed is None else questions[:10]:
            reply = _reply(model, tok, item.messages_without_answer, seed)
            if reply.strip() and reply != item.answer_text:
                return item, reply
    return None, ""


@torch.no_grad()
def chat_examples(run: Path, tok, conversations: int = 4) -> dict:
    """Copy RUN/rlhf/model to RUN/assistant and write RUN/feedback.db afresh; return counts."""

    with atomic_dir(run / NAME) as tmp:
        shutil.copytree(run / "rlhf" / "model", tmp, dirs_exist_ok=True)
    model = load_model(run / NAME).eval()
    db = run / "feedback.db"
    for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        f.unlink(missing_ok=True)
    store = Store(db)
    chars = script_chars(world_for(0))
    _, questions = script_preferences(world_for(0), seed=0, n_train=1, n_test=120)
    counts = {"conversations": 0, "up": 0, "down": 0, "edits": 0, "regenerations": 0}
    for k, item in enumerate(questions[:8 * conversations]):  # a weak model may never switch
        if counts["conversations"] >= conversations:
            break
        q = item.messages_without_answer
        first = _reply(model, tok, q, None)
        other = next((r for s in range(TRIES) if script_of(r := _reply(model, tok, q, 100 * k + s),
                                                            chars) not in (script_of(first, chars), None)),
                     None)
        if other is None:
            continue
        c = store.create_conversation()
        u = store.add_message(c["id"], None, "user", q[0]["content"])
        for text, origin in ((first, "new"), (other, "regenerate")):
            a = store.add_message(c["id"], u["id"], "assistant", text, model=NAME, origin=origin,
                                  finish_reason="stop")
            if script_of(text, chars) == item.lang:
                store.rate(a["id"], 1, ["correct"] if item.answer_value in text else ["helpful"])
                counts["up"] += 1
            else:
                store.rate(a["id"], -1, ["wrong script (繁/简)"],
                           "請用我寫的字體回答" if item.lang == "zh-Hant" else "请用我写的字体回答")
                counts["down"] += 1
        counts["conversations"] += 1
    # An answer the user corrected by hand: the edit is preferred to the original.
    item, wrong = _wrong_reply(model, tok, questions)
    if item is not None:
        c = store.create_conversation()
        u = store.add_message(c["id"], None, "user", item.messages_without_answer[0]["content"])
        a = store.add_message(c["id"], u["id"], "assistant", wrong, model=NAME, finish_reason="stop")
        store.add_message(c["id"], u["id"], "assistant", item.answer_text, model=NAME, origin="edit",
                          edited_from=a["id"])
        counts["edits"] += 1
        counts["conversations"] += 1
    # A regeneration nobody rated: it says nothing about which answer is better.
    q = [{"role": "user", "content": "Where does Ming live?"}]
    c = store.create_conversation()
    u = store.add_message(c["id"], None, "user", q[0]["content"])
    store.add_message(c["id"], u["id"], "assistant", _reply(model, tok, q, None), model=NAME,
                      finish_reason="stop")
    store.add_message(c["id"], u["id"], "assistant", _reply(model, tok, q, 7), model=NAME,
                      origin="regenerate", finish_reason="stop")
    counts["regenerations"] += 1
    counts["conversations"] += 1
    store.close()
    return counts
