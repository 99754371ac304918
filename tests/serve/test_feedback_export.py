"""`jielong feedback export`: a planted conversation tree gives exactly the expected DPO, KTO
and SFT rows, which the training commands read (and `jielong train dpo` trains on)."""

from __future__ import annotations

import json

import pytest
from conftest import bot, one_thread_tiny_model, user

from jielong.cli import run
from jielong.data.formats import read_conversations
from jielong.data.preferences import read_pairs, read_ratings
from jielong.errors import UserError
from jielong.serve.feedback import export
from jielong.serve.store import Store

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
Q1, Q1_EDITED = "What is the capital of France?", "What's the capital of France? One word."
Q2, QB = "And of Germany?", "臺灣的首都是哪裡？"


@pytest.fixture
def db(tmp_path):
    """Conversation A (system prompt): Q1 → 👍 "Paris." / 👎 "London." / an unrated
    regeneration / an edit of the 👎 reply / an edit of the 👍 reply; a second turn under
    "Paris." (👍 "Berlin.", and "Munich." whose 👎 was cleared); Q1 edited → 👎 "Paris".
    Conversation B (deleted, no system prompt): 👍 "臺北。" / 👎 "台北" (simplified script)."""
    path = tmp_path / "feedback.db"
    with Store(path) as s:
        a = s.create_conversation(title="A", system_prompt=SYSTEM["content"])["id"]
        u1 = s.add_message(a, None, "user", Q1)["id"]
        a1 = s.add_message(a, u1, "assistant", "Paris.", model="m", finish_reason="stop")["id"]
        a2 = s.add_message(a, u1, "assistant", "London.", model="m", origin="regenerate")["id"]
        s.add_message(a, u1, "assistant", "Lyon?", model="m", origin="regenerate")
        s.add_message(a, u1, "assistant", "The capital of France is Paris.", model="m",
                      origin="edit", edited_from=a2)
        s.add_message(a, u1, "assistant", "Paris, of course.", origin="edit", edited_from=a1)
        s.add_message(a, u1, "assistant", "", model="m", finish_reason="stopped")  # no text
        s.rate(a1, 1, ["correct"])
        s.rate(a2, -1, ["wrong"], "Paris!")
        u2 = s.add_message(a, a1, "user", Q2)["id"]
        b1 = s.add_message(a, u2, "assistant", "Berlin.", model="m")["id"]
        b2 = s.add_message(a, u2, "assistant", "Munich.", model="m", origin="regenerate")["id"]
        s.rate(b1, -1)
        s.rate(b1, 1, ["correct"])  # changed mind: 👍 is current
        s.rate(b2, -1)
        s.rate(b2, 0)  # cleared
        u1e = s.add_message(a, None, "user", Q1_EDITED, origin="edit", edited_from=u1)["id"]
        c1 = s.add_message(a, u1e, "assistant", "Paris", model="m")["id"]
        s.rate(c1, -1, ["not helpful"])

        b = s.create_conversation(title="B")["id"]
        ub = s.add_message(b, None, "user", QB)["id"]
        d1 = s.add_message(b, ub, "assistant", "臺北。", model="m")["id"]
        d2 = s.add_message(b, ub, "assistant", "台北", model="m", origin="regenerate")["id"]
        s.rate(d1, 1)
        s.rate(d2, -1, ["wrong script (繁/简)"])
        s.delete_conversation(b)
    return path


P1 = [SYSTEM, user(Q1)]
P2 = [SYSTEM, user(Q1), bot("Paris."), user(Q2)]
P1E = [SYSTEM, user(Q1_EDITED)]
PB = [user(QB)]

DPO = [
    {"prompt": P1, "chosen": [bot("Paris.")], "rejected": [bot("London.")]},
    {"prompt": P1, "chosen": [bot("The capital of France is Paris.")],
     "rejected": [bot("London.")]},
    {"prompt": PB, "chosen": [bot("臺北。")], "rejected": [bot("台北")]},
]
KTO = [
    {"prompt": P1, "completion": [bot("Paris.")], "label": True},
    {"prompt": P1, "completion": [bot("London.")], "label": False},
    {"prompt": P2, "completion": [bot("Berlin.")], "label": True},
    {"prompt": P1E, "completion": [bot("Paris")], "label": False},
    {"prompt": PB, "completion": [bot("臺北。")], "label": True},
    {"prompt": PB, "completion": [bot("台北")], "label": False},
]
SFT = [
    {"messages": P1 + [bot("Paris.")]},
    {"messages": P2 + [bot("Berlin.")]},
    {"messages": PB + [bot("臺北。")]},
]


def lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_exact_rows_of_each_format(db, tmp_path):
    for fmt, want in (("dpo", DPO), ("kto", KTO), ("sft", SFT)):
        out = tmp_path / "out" / f"{fmt}.jsonl"
        counts = export(db, fmt, out, include_deleted=True)
        assert lines(out) == want, fmt
        assert counts["rows"] == len(want) and counts["conversations"] == 2
        first = out.read_bytes()
        export(db, fmt, out, include_deleted=True)
        assert out.read_bytes() == first  # the same database, the same file
    out = tmp_path / "live.jsonl"
    counts = export(db, "dpo", out)  # by default, the deleted conversation B is left out
    assert lines(out) == DPO[:2]
    assert (counts["siblings"], counts["edits"], counts["conversations"]) == (1, 1, 1)


def test_the_training_readers_take_the_rows(db, tmp_path):
    export(db, "dpo", tmp_path / "dpo.jsonl", include_deleted=True)
    pairs = read_pairs([tmp_path / "dpo.jsonl"])
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == \
        [(r["prompt"], r["chosen"], r["rejected"]) for r in DPO]
    export(db, "kto", tmp_path / "kto.jsonl", include_deleted=True)
    ratings = read_ratings([tmp_path / "kto.jsonl"])
    assert [(r.prompt, r.completion, r.label) for r in ratings] == \
        [(r["prompt"], r["completion"], r["label"]) for r in KTO]
    export(db, "sft", tmp_path / "sft.jsonl", include_deleted=True)
    assert [m for _, m in read_conversations([tmp_path / "sft.jsonl"])] == \
        [r["messages"] for r in SFT]


def test_train_dpo_runs_on_the_export(db, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with one_thread_tiny_model(tmp_path) as base:
        run(["feedback", "export", "--db", str(db), "--format", "dpo", "--out", "prefs.jsonl",
             "--include_deleted"])
        assert capsys.readouterr().out.strip() == (
            f"exported 3 DPO pairs (2 from 👍/👎 siblings, 1 from edits) from 2 conversations "
            f"of {db} to prefs.jsonl")
        out = run(["train", "dpo", "prefs.jsonl", "--model", str(base), "--out", "run",
                   "--steps", "2", "--batch_size", "2", "--max_len", "64", "--val_fraction", "0",
                   "--eval_every", "2", "--save_every", "2"])
    assert "done: 2 steps" in capsys.readouterr().out
    assert out is not None and (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_cli_summaries_and_errors(db, tmp_path, capsys):
    run(["feedback", "export", "--db", str(db), "--format", "kto", "--include_deleted"])
    assert capsys.readouterr().out.strip().startswith("exported 6 KTO ratings (3 👍, 3 👎) from "
                                                      "2 conversations")
    assert lines(db.with_name("kto.jsonl")) == KTO  # default: beside the database
    run(["feedback", "export", "--db", str(db), "--format", "sft", "--out",
         str(tmp_path / "s.jsonl"), "--no-include_deleted"])
    assert "exported 2 SFT conversations" in capsys.readouterr().out

    with pytest.raises(UserError, match="give a .jsonl file"):
        export(db, "dpo", tmp_path / "x.csv")
    with pytest.raises(UserError, match="no such feedback database"):
        export(tmp_path / "none.db", "dpo", tmp_path / "x.jsonl")
    assert not (tmp_path / "none.db").exists()
    with pytest.raises(UserError, match="use one of dpo, kto, sft"):
        export(db, "orpo", tmp_path / "x.jsonl")
    empty = tmp_path / "empty.db"
    with Store(empty) as s:  # a regeneration nobody rated: no preference
        c = s.create_conversation()["id"]
        u = s.add_message(c, None, "user", "hi")["id"]
        s.add_message(c, u, "assistant", "hello")
        s.add_message(c, u, "assistant", "hey", origin="regenerate")
    for fmt in ("dpo", "kto", "sft"):
        with pytest.raises(UserError, match=f"nothing to export as {fmt}"):
            export(empty, fmt, tmp_path / "e.jsonl")
    assert not (tmp_path / "e.jsonl").exists()


def test_turns_a_safety_rail_flagged_are_left_out_unless_kept(db, tmp_path, capsys):
    """Conversation A's second turn: its 👍 reply "Berlin." is flagged by the output rail; a
    new conversation's question was answered by the input rail (crisis lines, rated 👍) and
    a rated reply follows it. Dropped: the flagged messages and all after them."""
    with Store(db) as s:
        conv = s.conversation(s.list_conversations()[0]["id"])
        berlin = next(m for m in conv["messages"] if m["content"] == "Berlin.")
        s.add_safety([{"rail": "output", "category": "hate", "action": "flag", "score": 0.6,
                       "evidence": ["x"]}], "Berlin.", "chat", berlin["id"])
        c = s.create_conversation()["id"]
        q = s.add_message(c, None, "user", "我想自殺")["id"]
        a = s.add_message(c, q, "assistant", "聽到你這麼難受…… 1925", model="m",
                          finish_reason="content_filter")["id"]
        s.add_safety([{"rail": "input", "category": "self_harm", "action": "resources",
                       "score": 0.6, "evidence": ["想自殺"]}], "我想自殺", "chat", q)
        s.rate(a, 1)
        q2 = s.add_message(c, a, "user", "謝謝")["id"]
        s.rate(s.add_message(c, q2, "assistant", "不客氣", model="m")["id"], 1)
    out = tmp_path / "sft.jsonl"
    counts = export(db, "sft", out, include_deleted=True)
    assert lines(out) == [SFT[0], SFT[2]] and counts["flagged"] == 5
    kept = export(db, "sft", out, include_deleted=True, flagged="keep")
    assert kept["flagged"] == 0 and len(lines(out)) == 5
    assert lines(out)[1]["messages"][-1] == bot("Berlin.")
    run(["feedback", "export", "--db", str(db), "--format", "kto", "--out", str(out),
         "--include_deleted"])
    assert "left out 5 messages a safety rail flagged" in capsys.readouterr().out
    assert all(r["completion"] != [bot("Berlin.")] for r in lines(out))
    with pytest.raises(UserError, match="--flagged maybe: use drop"):
        export(db, "sft", out, flagged="maybe")
