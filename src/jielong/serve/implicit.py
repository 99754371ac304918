"""Implicit feedback: what people did in the web chat, read as weak 👍/👎 — users who
regenerate, correct or scold the model become the next model's reference data.

    jielong feedback export --db runs/serve/feedback.db --format kto --implicit
    jielong train kto runs/serve/kto.jsonl runs/serve/kto-implicit.jsonl --model runs/sft/model

Three signals, from the chat store's conversation trees (jielong.serve.store):

- regenerate: a reply the user asked to regenerate is a weak 👎, weight REGENERATE_WEIGHT
  (0.5). People also regenerate to see another wording, or out of curiosity, so it is half a
  vote, not a whole one; the agreement report below measures how often such a reply was
  also rated 👎, which is the figure to revisit the weight by. The web chat records the reply
  a regeneration replaces (its `edited_from`); in a store written before it did, it is
  taken to be the model's reply made just before it to the same message.
- edit: an assistant reply the user rewrote is a correction: the newest edit is a 👍 and
  the model's original a 👎, both weight EDIT_WEIGHT (1.0: the user wrote out what they
  wanted, as strong as a rating). An edit of an edit supersedes it (the earlier one gets
  nothing); an edit that changes nothing says nothing. A user editing their *own* message
  says nothing about the reply: the old reply answered the old wording, and a rephrased
  question is a new branch with its own prompt (as in the DPO export) — counted, not
  written.
- complaint: a follow-up the complaint classifier (jielong.serve.complaints: "不對，你答錯了",
  "你搞错了吧", "stupid bot", …) scores at p ≥ 0.5 is a 👎 for the reply it follows, weight
  p. With a calibrated p that is the expected loss over the classifier's doubt: a
  complaint is right with probability p, and a follow-up that is not one says nothing, so
  the 👎 counts p. Of several follow-ups to one reply (branches), the most likely
  complaint counts.

Only the model's own replies take a 👎 (an edit is the user's text: regenerating it or
complaining after it is not read as a verdict on it). A reply with several signals is one
row, with the strongest (weight and name); a reply someone rated 👍/👎 gets no implicit row
— its explicit rating is in the kto export, and its signals go to the agreement report
only, which says, for each signal, among the replies that also have an explicit rating, how
often the two agree (a regenerated-away reply rated 👎, an edit's original rated 👎, …).
Rows are {"prompt", "completion", "label", "weight", "signal"}, which `jielong train kto`
reads (a row's weight scales its loss; see jielong.train.kto).
"""

from __future__ import annotations

from dataclasses import dataclass

from jielong.serve.complaints import THRESHOLD, complaint_probabilities

SIGNALS = ("regenerate", "edit", "complaint")
REGENERATE_WEIGHT = 0.5
EDIT_WEIGHT = 1.0
STRENGTH = {"edit": 0, "complaint": 1, "regenerate": 2}  # ties: the more direct signal names a row


@dataclass
class Signal:
    """One piece of implicit feedback on one reply (an assistant message of conversation c)."""

    kind: str
    reply: dict
    label: bool
    weight: float
    conversation: dict


def signals(conversations: list[dict]) -> tuple[list[Signal], dict[str, int]]:
    """Every implicit signal of Store.dump()'s conversations, in order (conversations oldest
    first; within one, the signals of each reply as the messages were made), and counts."""
    found, counts = [], {"user_edits": 0}
    follow_ups = [m for c in conversations for m in c["messages"]
                  if m["role"] == "user" and m["parent_id"] and m["content"].strip()]
    probs = dict(zip([m["id"] for m in follow_ups],
                     complaint_probabilities([m["content"] for m in follow_ups]), strict=True))
    for c in conversations:
        found += _conversation_signals(c, probs, counts)
    return found, counts


def _conversation_signals(c: dict, probs: dict[str, float], counts: dict[str, int]) -> list[Signal]:
    messages = c["messages"]
    by_id = {m["id"]: m for m in messages}
    order = {m["id"]: i for i, m in enumerate(messages)}

    def model_written(m: dict | None) -> bool:
        return m is not None and m["role"] == "assistant" and m["origin"] != "edit" and \
            bool(m["content"].strip())

    out: list[Signal] = []
    replies: dict[str, list[dict]] = {}  # user message id → its replies, in order
    for m in messages:
        if m["role"] == "assistant":
            replies.setdefault(m["parent_id"], []).append(m)
        elif m["origin"] == "edit":
            counts["user_edits"] += 1
    for group in replies.values():
        for i, m in enumerate(group):
            if m["origin"] == "regenerate":
                earlier = [r for r in group[:i] if r["origin"] != "edit"]
                replaced = by_id.get(m["edited_from"]) if m["edited_from"] else \
                    earlier[-1] if earlier else None  # a store written before it was recorded
                if model_written(replaced):
                    out.append(Signal("regenerate", replaced, False, REGENERATE_WEIGHT, c))
    superseded = {m["edited_from"] for m in messages if m["origin"] == "edit"}
    originals = set()
    for m in messages:
        if m["role"] != "assistant" or m["origin"] != "edit" or m["id"] in superseded:
            continue
        root = m
        while root["origin"] == "edit" and root["edited_from"] in by_id:
            root = by_id[root["edited_from"]]
        if not m["content"].strip() or m["content"].strip() == root["content"].strip():
            continue
        out.append(Signal("edit", m, True, EDIT_WEIGHT, c))
        if model_written(root) and root["id"] not in originals:
            originals.add(root["id"])
            out.append(Signal("edit", root, False, EDIT_WEIGHT, c))
    worst: dict[str, float] = {}  # reply id → its most likely complaint
    for m in messages:
        p = probs.get(m["id"])
        if p is not None and p >= THRESHOLD and model_written(by_id.get(m["parent_id"])):
            worst[m["parent_id"]] = max(worst.get(m["parent_id"], 0.0), p)
    out += [Signal("complaint", by_id[r], False, round(p, 3), c) for r, p in worst.items()]
    return sorted(out, key=lambda s: (order[s.reply["id"]], STRENGTH[s.kind]))


def weighted_rows(found: list[Signal]) -> tuple[list[dict], dict[str, int]]:
    """(KTO rows, counts): one row per reply with no explicit rating, its strongest signal."""
    out, counts = [], {k: 0 for k in (*SIGNALS, "rated")}
    best: dict[str, Signal] = {}
    rated = {s.reply["id"] for s in found if s.reply["rating"]}
    for s in found:
        key = s.reply["id"]
        if key not in rated and (key not in best or (s.weight, -STRENGTH[s.kind]) >
                                 (best[key].weight, -STRENGTH[best[key].kind])):
            best[key] = s
    counts["rated"] = len(rated)
    for s in best.values():
        counts[s.kind] += 1
        out.append({"prompt": branch_prompt(s.conversation, s.reply["parent_id"]),
                    "completion": [{"role": "assistant", "content": s.reply["content"]}],
                    "label": s.label, "weight": s.weight, "signal": s.kind})
    counts["rows"] = len(out)
    return out, counts


def branch_prompt(c: dict, user_id: str) -> list[dict]:
    """The branch a reply answers: the system prompt (when there is one), then the messages
    from the first one down to the user message `user_id` (as jielong.serve.feedback)."""
    by_id = {m["id"]: m for m in c["messages"]}
    chain, at = [], by_id.get(user_id)
    while at is not None:
        chain.append({"role": at["role"], "content": at["content"]})
        at = by_id.get(at["parent_id"])
    if c["system_prompt"]:
        chain.append({"role": "system", "content": c["system_prompt"]})
    return chain[::-1]


def agreement(found: list[Signal], conversations: list[dict]) -> dict:
    """For each signal and label, among the replies it marks that also carry an explicit
    👍/👎: how many, and how many agree (the rating says the same); with the share of 👎
    among all rated replies, what agreement by chance looks like."""
    table = []
    for kind in SIGNALS:
        for label in (False, True) if kind == "edit" else (False,):  # the others only say 👎
            marked = {s.reply["id"]: s.reply for s in found if (s.kind, s.label) == (kind, label)}
            rated = [m for m in marked.values() if m["rating"]]
            agree = sum((m["rating"]["value"] == 1) == label for m in rated)
            table.append({"signal": kind, "label": "👍" if label else "👎",
                          "replies": len(marked), "rated": len(rated), "agree": agree,
                          "agreement": round(agree / len(rated), 3) if rated else None})
    ratings = [m["rating"]["value"] for c in conversations for m in c["messages"]
               if m["role"] == "assistant" and m["rating"]]
    down = sum(v == -1 for v in ratings)
    return {"signals": table, "rated_replies": len(ratings), "rated_down": down,
            "down_share": round(down / len(ratings), 3) if ratings else None}


def agreement_table(report: dict) -> str:
    """The agreement report as a Markdown table (also what the command prints)."""
    lines = ["| signal | label | replies | rated | agree | agreement |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in report["signals"]:
        share = "–" if r["agreement"] is None else f"{r['agreement']:.0%}"
        lines.append(f"| {r['signal']} | {r['label']} | {r['replies']} | {r['rated']} | "
                     f"{r['agree']} | {share} |")
    base = "no rated replies" if report["down_share"] is None else \
        f"{report['rated_down']} of {report['rated_replies']} rated replies are 👎 " \
        f"({report['down_share']:.0%}): a 👎 signal that agrees more often than that beats chance"
    return "\n".join(lines) + f"\n\n{base}\n"
