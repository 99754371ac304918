"""Implicit feedback (`jielong feedback export --format kto --implicit`): planted conversation
trees in 繁/简/en give exactly the expected weighted KTO rows, the agreement report's numbers
worked out by hand, the explicit export unchanged, and one-line errors."""

from __future__ import annotations

import json

import pytest
from conftest import bot, one_thread_tiny_model, user

from jielong.cli import main, run
from jielong.data.preferences import read_ratings
from jielong.errors import UserError
from jielong.serve.complaints import complaint_probability
from jielong.serve.feedback import export
from jielong.serve.implicit import signals, weighted_rows
from jielong.serve.store import Store

SYSTEM = {"role": "system", "content": "你是助手。"}
QA, QB, QB_EDITED, QC, QD = ("台灣最高的山是哪座？", "中国的首都是哪里？", "中国的首都是哪座城市？",
                             "What is 2 + 2?", "Name a prime number.")
SCOLD_A, SCOLD_B, SCOLD_C = "不對，你答錯了", "答非所问", "stupid bot"


@pytest.fixture
def db(tmp_path):
    """A (繁, system prompt): 阿里山 → regenerated 雪山 → regenerated 玉山; "不對，你答錯了"
    under 阿里山, "謝謝，答對了" under 玉山.
    B (简): 上海 👎 → regenerated 北京 👍, "你搞错了吧" under 北京; the question edited by its
    user, answered 北京市, "答非所问" under that.
    C (en): "5" → edited "2 + 2 = 4." → edited again "4"; a regeneration "Four." with "stupid
    bot" under it; "That's wrong." under the user's own edit; a regeneration stopped before
    its first token; an edit of "Four." that changes nothing.
    D (en): Nine 👎 → edited Seven 👍; regenerated Two 👍 → regenerated Eleven."""
    path = tmp_path / "feedback.db"
    with Store(path) as s:
        a = s.create_conversation(system_prompt=SYSTEM["content"])["id"]
        ua = s.add_message(a, None, "user", QA)["id"]
        a1 = s.add_message(a, ua, "assistant", "阿里山。")["id"]
        s.add_message(a, ua, "assistant", "雪山。", origin="regenerate")
        a4 = s.add_message(a, ua, "assistant", "玉山。", origin="regenerate")["id"]
        s.add_message(a, a1, "user", SCOLD_A)
        s.add_message(a, a4, "user", "謝謝，答對了")

        b = s.create_conversation()["id"]
        ub = s.add_message(b, None, "user", QB)["id"]
        b1 = s.add_message(b, ub, "assistant", "上海。")["id"]
        b2 = s.add_message(b, ub, "assistant", "北京。", origin="regenerate")["id"]
        s.rate(b1, -1)
        s.rate(b2, 1)
        s.add_message(b, b2, "user", "你搞错了吧")
        ub2 = s.add_message(b, None, "user", QB_EDITED, origin="edit", edited_from=ub)["id"]
        b4 = s.add_message(b, ub2, "assistant", "北京市。")["id"]
        s.add_message(b, b4, "user", SCOLD_B)

        c = s.create_conversation(system_prompt="Be brief.")["id"]
        uc = s.add_message(c, None, "user", QC)["id"]
        c1 = s.add_message(c, uc, "assistant", "5")["id"]
        c2 = s.add_message(c, uc, "assistant", "2 + 2 = 4.", origin="edit", edited_from=c1)["id"]
        c3 = s.add_message(c, uc, "assistant", "4", origin="edit", edited_from=c2)["id"]
        c4 = s.add_message(c, uc, "assistant", "Four.", origin="regenerate")["id"]
        s.add_message(c, c4, "user", SCOLD_C)
        s.add_message(c, c3, "user", "That's wrong.")
        s.add_message(c, uc, "assistant", "", origin="regenerate", finish_reason="stopped")
        s.add_message(c, uc, "assistant", "Four.", origin="edit", edited_from=c4)

        d = s.create_conversation()["id"]
        ud = s.add_message(d, None, "user", QD)["id"]
        d1 = s.add_message(d, ud, "assistant", "Nine.")["id"]
        d2 = s.add_message(d, ud, "assistant", "Seven.", origin="edit", edited_from=d1)["id"]
        d3 = s.add_message(d, ud, "assistant", "Two.", origin="regenerate")["id"]
        s.add_message(d, ud, "assistant", "Eleven.", origin="regenerate")
        for m, v in ((d1, -1), (d2, 1), (d3, 1)):
            s.rate(m, v)
    return path


def p(text):
    return round(complaint_probability(text), 3)


def rows_expected():
    pa, pb, pc = [SYSTEM, user(QA)], [user(QB_EDITED)], [{"role": "system", "content": "Be brief."},
                                                       user(QC)]
    return [
        {"prompt": pa, "completion": [bot("阿里山。")], "label": False, "weight": p(SCOLD_A),
         "signal": "complaint"},  # also regenerated (0.5): the stronger signal names the row
        {"prompt": pa, "completion": [bot("雪山。")], "label": False, "weight": 0.5,
         "signal": "regenerate"},
        {"prompt": pb, "completion": [bot("北京市。")], "label": False, "weight": p(SCOLD_B),
         "signal": "complaint"},
        {"prompt": pc, "completion": [bot("5")], "label": False, "weight": 1.0, "signal": "edit"},
        {"prompt": pc, "completion": [bot("4")], "label": True, "weight": 1.0, "signal": "edit"},
        {"prompt": pc, "completion": [bot("Four.")], "label": False, "weight": p(SCOLD_C),
         "signal": "complaint"},
    ]


def lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_exact_rows_and_weights(db):
    for text in (SCOLD_A, SCOLD_B, SCOLD_C):
        assert 0.5 <= p(text) <= 1, text
    with Store(db, create=False) as s:
        conversations = s.dump()
    found, counts = signals(conversations)
    got, row_counts = weighted_rows(found)
    assert got == rows_expected()
    assert counts == {"user_edits": 1}
    # Rated replies with signals (上海, 北京, Nine, Seven, Two) are left to their rating.
    assert row_counts == {"regenerate": 1, "edit": 2, "complaint": 3, "rated": 5, "rows": 6}


def test_a_regeneration_names_the_reply_it_replaces(tmp_path):
    """The user paged back to the first reply and regenerated it: that one is the weak 👎,
    not the reply made just before (which the inference for older stores would pick)."""
    with Store(tmp_path / "f.db") as s:
        c = s.create_conversation()["id"]
        q = s.add_message(c, None, "user", "台灣最高的山？")["id"]
        first = s.add_message(c, q, "assistant", "阿里山。")["id"]
        s.add_message(c, q, "assistant", "雪山。", origin="regenerate", edited_from=first)
        s.add_message(c, q, "assistant", "玉山。", origin="regenerate", edited_from=first)
        with pytest.raises(UserError, match="edited_from"):
            s.add_message(c, q, "assistant", "x", edited_from=first)  # a new reply replaces nothing
        found, _ = signals(s.dump())
    assert [(f.kind, f.reply["content"]) for f in found] == [("regenerate", "阿里山。")] * 2
    [row], _ = weighted_rows(found)
    assert (row["completion"], row["weight"]) == ([bot("阿里山。")], 0.5)


def test_export_writes_both_files_and_the_agreement(db, tmp_path):
    explicit, weak = tmp_path / "kto.jsonl", tmp_path / "weak" / "implicit.jsonl"
    export(db, "kto", tmp_path / "plain.jsonl")
    counts = export(db, "kto", explicit, implicit_out=weak)
    assert explicit.read_bytes() == (tmp_path / "plain.jsonl").read_bytes()  # unchanged
    assert lines(weak) == rows_expected()
    ratings = read_ratings([weak])  # `jielong train kto` reads the weights
    assert [r.weight for r in ratings] == [r["weight"] for r in rows_expected()]
    # By hand: regenerated away: 阿里山, 雪山, 上海 👎, 5, Four., Nine 👎, Two 👍 → 2 of 3 agree;
    # edited originals: 5, Nine 👎; edits: 4, Seven 👍; complained about: 阿里山, 北京 👍,
    # 北京市, Four. → 0 of 1. Rated: 上海 👎, 北京 👍, Nine 👎, Seven 👍, Two 👍: 2 of 5 👎.
    report = json.loads((tmp_path / "weak" / "implicit.agreement.json").read_text())
    assert report == counts["agreement"]
    assert [(r["signal"], r["label"], r["replies"], r["rated"], r["agree"], r["agreement"])
            for r in report["signals"]] == [
        ("regenerate", "👎", 7, 3, 2, 0.667), ("edit", "👎", 2, 1, 1, 1.0),
        ("edit", "👍", 2, 1, 1, 1.0), ("complaint", "👎", 4, 1, 0, 0.0)]
    assert (report["rated_replies"], report["rated_down"], report["down_share"]) == (2 + 3, 2, 0.4)
    md = (tmp_path / "weak" / "implicit.agreement.md").read_text()
    assert "| regenerate | 👎 | 7 | 3 | 2 | 67% |" in md and "2 of 5 rated replies are 👎" in md


def test_cli(db, capsys):
    run(["feedback", "export", "--db", str(db), "--format", "kto", "--implicit"])
    out = capsys.readouterr().out
    weak = db.with_name("kto-implicit.jsonl")
    assert out.startswith(f"exported 5 KTO ratings (3 👍, 2 👎) from 2 conversations of {db} to "
                          f"{db.with_name('kto.jsonl')}\nexported 6 implicit KTO rows (1 "
                          "regenerated, 2 edited, 3 complained about; 5 replies with signals "
                          f"are rated and left to their rating) to {weak}\n")
    assert "| complaint | 👎 | 4 | 1 | 0 | 0% |" in out
    assert lines(weak) == rows_expected()
    assert db.with_name("kto-implicit.agreement.md").exists()


def test_only_implicit_feedback(tmp_path, capsys):
    """No ratings at all: no explicit file, the implicit rows still written."""
    path = tmp_path / "f.db"
    with Store(path) as s:
        c = s.create_conversation()["id"]
        u = s.add_message(c, None, "user", "hi")["id"]
        s.add_message(c, u, "assistant", "hello")
        s.add_message(c, u, "assistant", "hey", origin="regenerate")
    run(["feedback", "export", "--db", str(path), "--format", "kto", "--implicit_out",
         str(tmp_path / "w.jsonl")])
    assert capsys.readouterr().out.startswith(
        f"exported 0 KTO ratings (0 👍, 0 👎) from 0 conversations of {path} to nowhere (no "
        "rated replies)\nexported 1 implicit KTO rows")
    assert not (tmp_path / "kto.jsonl").exists()
    assert lines(tmp_path / "w.jsonl") == [{"prompt": [user("hi")], "completion": [bot("hello")],
                                            "label": False, "weight": 0.5, "signal": "regenerate"}]
    plain = tmp_path / "plain.db"  # a reply nobody rated, regenerated or answered
    with Store(plain) as s:
        c = s.create_conversation()["id"]
        s.add_message(c, s.add_message(c, None, "user", "hi")["id"], "assistant", "hello")
    with pytest.raises(UserError, match="nothing to export as kto"):
        export(plain, "kto", tmp_path / "k.jsonl", implicit_out=tmp_path / "w2.jsonl")
    assert not (tmp_path / "w2.jsonl").exists()


def test_bad_input(db, tmp_path):
    with pytest.raises(UserError, match="--implicit writes weighted KTO rows; use it with "
                                        "--format kto, not dpo"):
        export(db, "dpo", tmp_path / "d.jsonl", implicit_out=tmp_path / "w.jsonl")
    with pytest.raises(UserError, match="--implicit_out .*w.csv: give a .jsonl file"):
        export(db, "kto", tmp_path / "k.jsonl", implicit_out=tmp_path / "w.csv")
    with pytest.raises(UserError, match="is the --out file"):
        export(db, "kto", tmp_path / "k.jsonl", implicit_out=tmp_path / "k.jsonl")
    with pytest.raises(UserError, match='weight -1 is not a number ≥ 0'):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"prompt": "hi", "completion": "yo", "label": false, "weight": -1}\n')
        read_ratings([bad])


def test_cli_errors_are_one_line(db, tmp_path, capsys):
    missing = tmp_path / "none.db"
    for argv, last in (
            (["--db", str(missing), "--format", "kto", "--implicit"],
             f"error: {missing}: no such feedback database; `jielong serve --db {missing}` "
             "writes one"),
            (["--db", str(db), "--format", "dpo", "--implicit"],
             "error: --implicit writes weighted KTO rows; use it with --format kto, not dpo"),
            (["--db", str(db), "--format", "orpo", "--implicit"],
             "jielong feedback export: error: argument --format: invalid choice: 'orpo' "
             "(choose from 'dpo', 'kto', 'sft')")):
        with pytest.raises(SystemExit) as e:
            main(["feedback", "export", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1] == last, argv
        assert len(err) == 1 or err[0].startswith("usage:")  # argparse shows the usage first
    assert not missing.exists()


def test_train_kto_runs_on_both_files(db, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with one_thread_tiny_model(tmp_path) as base:
        run(["feedback", "export", "--db", str(db), "--format", "kto", "--out", "kto.jsonl",
             "--implicit"])
        capsys.readouterr()
        run(["train", "kto", "kto.jsonl", "kto-implicit.jsonl", "--model", str(base), "--out",
             "run", "--steps", "2", "--batch_size", "4", "--max_len", "128", "--val_fraction",
             "0", "--eval_every", "2", "--save_every", "2"])
    out = capsys.readouterr().out
    w_up = 3 + 1.0  # the ratings' 👍, and the edit "4"
    w_down = 2 + sum(r["weight"] for r in rows_expected() if not r["label"])
    assert f"note: weighted ratings: the 👍 weigh {w_up:,.4g} in all, the 👎 {w_down:,.4g}" in out
    assert "11 train ratings (4 👍, 7 👎)" in out
    assert "done: 2 steps" in out and (tmp_path / "run" / "model" / "model.safetensors").exists()
