"""The chat store (jielong.serve.store): conversation trees, ratings history, clear errors,
and durability — many threads at once, and a writer killed mid-write loses nothing it
acknowledged."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

from jielong.errors import UserError
from jielong.serve import store as store_module
from jielong.serve.store import SCHEMA_VERSION, NotFound, Store


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "chat" / "feedback.db") as s:
        yield s


def test_a_conversation_tree_paths_and_siblings(store):
    c = store.create_conversation(system_prompt="Be brief.", settings={"temperature": 0.2})
    assert (c["title"], c["system_prompt"], c["settings"], c["messages"]) == \
        ("", "Be brief.", {"temperature": 0.2}, [])
    q = store.add_message(c["id"], None, "user", "  What is   2 + 2?\nThanks")
    a = store.add_message(c["id"], q["id"], "assistant", "4", model="m", finish_reason="stop",
                          sampling={"temperature": 0.2})
    b = store.add_message(c["id"], q["id"], "assistant", "5", model="m", origin="regenerate")
    e = store.add_message(c["id"], q["id"], "assistant", "four", model="m", origin="edit",
                          edited_from=b["id"])
    q2 = store.add_message(c["id"], a["id"], "user", "And 3 + 3?")
    a2 = store.add_message(c["id"], q2["id"], "assistant", "")
    store.update_message(a2["id"], content="6", finish_reason="length")

    assert [m["content"] for m in store.path(a2["id"])] == ["  What is   2 + 2?\nThanks", "4",
                                                          "And 3 + 3?", "6"]
    assert store.path(q["id"]) == [store.message(q["id"])]
    assert [m["id"] for m in store.siblings(b["id"])] == [a["id"], b["id"], e["id"]]
    assert [m["id"] for m in store.siblings(q["id"])] == [q["id"]]  # root siblings: parent None
    got = store.conversation(c["id"])
    assert got["title"] == "What is 2 + 2? Thanks"  # named after its first message
    assert [m["id"] for m in got["messages"]] == [q["id"], a["id"], b["id"], e["id"], q2["id"],
                                                  a2["id"]]
    last = got["messages"][-1]
    assert (last["content"], last["finish_reason"], last["parent_id"]) == ("6", "length", q2["id"])
    assert got["messages"][1]["sampling"] == {"temperature": 0.2}
    assert (got["messages"][3]["origin"], got["messages"][3]["edited_from"]) == ("edit", b["id"])
    assert got["updated"] >= got["created"]


def test_ratings_are_history_and_the_latest_is_current(store):
    c = store.create_conversation()
    q = store.add_message(c["id"], None, "user", "hi")
    a = store.add_message(c["id"], q["id"], "assistant", "hello", model="tiny")
    r = store.rate(a["id"], 1, reasons=["helpful"], comment="nice")
    assert (r["value"], r["reasons"], r["comment"]) == (1, ["helpful"], "nice")
    assert store.message(a["id"])["rating"]["reasons"] == ["helpful"]
    store.rate(a["id"], -1, reasons=["wrong script (繁/简)"], comment="用了簡體")
    assert store.message(a["id"])["rating"] == {
        "value": -1, "reasons": ["wrong script (繁/简)"], "comment": "用了簡體",
        "created": store.ratings(a["id"])[-1]["created"]}
    store.rate(a["id"], 0)
    assert store.message(a["id"])["rating"] is None  # cleared
    history = store.ratings(a["id"])
    assert [h["value"] for h in history] == [1, -1, 0]
    assert {h["model"] for h in history} == {"tiny"}


def test_list_update_and_soft_delete(store):
    first = store.create_conversation(title="first")
    second = store.create_conversation(title="second")
    assert [c["title"] for c in store.list_conversations()] == ["second", "first"]
    store.add_message(first["id"], None, "user", "bump")  # activity moves it up
    assert [c["title"] for c in store.list_conversations()] == ["first", "second"]
    assert set(store.list_conversations()[0]) == {"id", "title", "updated", "created"}
    changed = store.update_conversation(first["id"], title="renamed", system_prompt=None,
                                        settings={"max_tokens": 5})
    assert (changed["title"], changed["system_prompt"], changed["settings"]) == \
        ("renamed", None, {"max_tokens": 5})
    assert len(changed["messages"]) == 1
    store.delete_conversation(second["id"])
    assert [c["title"] for c in store.list_conversations()] == ["renamed"]
    with pytest.raises(NotFound, match="deleted"):
        store.conversation(second["id"])
    dump = store.dump()
    assert [(c["title"], c["deleted"]) for c in dump] == [("renamed", False), ("second", True)]
    assert [c["title"] for c in store.dump(include_deleted=False)] == ["renamed"]


def test_clear_errors_for_unknown_ids_and_bad_trees(store):
    c = store.create_conversation()
    other = store.create_conversation()
    q = store.add_message(c["id"], None, "user", "hi")
    a = store.add_message(c["id"], q["id"], "assistant", "hello")
    for call in (lambda: store.conversation("nope"), lambda: store.message("nope"),
                 lambda: store.path("nope"), lambda: store.siblings("nope"),
                 lambda: store.rate("nope", 1), lambda: store.update_message("nope", "x"),
                 lambda: store.delete_conversation("nope"),
                 lambda: store.update_conversation("nope", title="x"),
                 lambda: store.add_message("nope", None, "user", "x"),
                 lambda: store.add_message(c["id"], "nope", "user", "x")):
        with pytest.raises(NotFound, match="nope"):
            call()
    bad = [
        (lambda: store.add_message(c["id"], None, "assistant", "x"), "starts with a user"),
        (lambda: store.add_message(c["id"], q["id"], "user", "x"), "follows an assistant"),
        (lambda: store.add_message(c["id"], a["id"], "assistant", "x"), "answers|follows a user"),
        (lambda: store.add_message(other["id"], a["id"], "user", "x"), "another conversation"),
        (lambda: store.add_message(c["id"], None, "system", "x"), "role 'system'"),
        (lambda: store.add_message(c["id"], q["id"], "assistant", "x", origin="edit"),
         "edited_from"),
        (lambda: store.add_message(c["id"], a["id"], "user", "x", origin="edit",
                                   edited_from=q["id"]), "sibling"),
        (lambda: store.rate(q["id"], 1), "only replies are rated"),
        (lambda: store.rate(a["id"], 2), "1 \\(👍\\), -1 \\(👎\\) or 0"),
        (lambda: store.rate(a["id"], True), "not True"),
        (lambda: store.update_message(a["id"], finish_reason="done"), "finish_reason"),
        (lambda: store.update_conversation(c["id"], deleted=0), "cannot change deleted"),
    ]
    for call, message in bad:
        with pytest.raises(UserError, match=message):
            call()
    assert len(store.conversation(c["id"])["messages"]) == 2  # nothing half-written


def test_files_that_are_not_a_feedback_database(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all\n" * 100)
    with pytest.raises(UserError, match="junk.db: not a readable feedback database") as e:
        Store(junk)
    assert "\n" not in str(e.value)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (x)")
    with pytest.raises(UserError, match="not a jielong feedback database .*notes"):
        Store(other)
    newer = tmp_path / "newer.db"
    Store(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(UserError, match="newer jielong"):
        Store(newer)
    with pytest.raises(UserError, match="is a folder"):
        Store(tmp_path)
    with pytest.raises(UserError, match="no such feedback database"):
        Store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def battle(store, cid=None, done=True):
    """A conversation with a question, two answers (by "base" and "zh") and their battle."""
    cid = cid or store.create_conversation(system_prompt="用繁體中文。")["id"]
    q = store.add_message(cid, None, "user", "今天天气怎么样？")
    a = store.add_message(cid, q["id"], "assistant", "晴天。", model="base",
                          finish_reason="stop" if done else None)
    b = store.add_message(cid, q["id"], "assistant", "Sunny.", model="zh", finish_reason="stop")
    return store.add_battle(cid, q["id"], a["id"], b["id"]), q, a, b


def test_arena_battles_and_votes_are_history(store):
    bt, q, a, b = battle(store)
    assert (bt["message_a"], bt["message_b"], bt["models"], bt["vote"]) == \
        (a["id"], b["id"], {"a": "base", "b": "zh"}, None)
    assert store.arena_votes() == []  # no vote, no row
    store.vote(bt["id"], "a")
    store.vote(bt["id"], "tie")
    assert store.battle(bt["id"])["vote"]["winner"] == "tie"
    assert [v["winner"] for v in store.battle_votes(bt["id"])] == ["a", "tie"]
    assert store.battles(bt["conversation_id"]) == [store.battle(bt["id"])]
    (row,) = store.arena_votes()
    assert row == {"id": bt["id"], "prompt": [{"role": "system", "content": "用繁體中文。"},
                                              {"role": "user", "content": "今天天气怎么样？"}],
                   "model_a": "base", "model_b": "zh", "answer_a": "晴天。", "answer_b": "Sunny.",
                   "winner": "tie", "time": row["time"]}
    store.delete_conversation(bt["conversation_id"])
    assert len(store.arena_votes()) == 1 and store.arena_votes(include_deleted=False) == []

    late, *_ = battle(store, done=False)
    other = store.create_conversation()
    oq = store.add_message(other["id"], None, "user", "hi")
    bad = [(lambda: store.vote(late["id"], "a"), "answer A .* is still being written"),
           (lambda: store.vote(late["id"], "A"), "a vote is one of a, b, tie, both_bad"),
           (lambda: store.vote("nope", "a"), "no battle nope"),
           (lambda: store.vote(bt["id"], "a"), "its conversation was deleted"),
           (lambda: store.add_battle(other["id"], oq["id"], late["message_a"], late["message_b"]),
            "not a reply to"),
           (lambda: store.add_battle(late["conversation_id"], late["question_id"],
                                     late["message_a"], late["message_a"]), "two different")]
    for call, message in bad:
        with pytest.raises(UserError, match=message):
            call()
    assert store.battle_votes(late["id"]) == []


def test_a_version_1_file_upgrades_in_place_and_keeps_everything(tmp_path):
    path = tmp_path / "old.db"
    with Store(path) as s:
        c = s.create_conversation(title="old chat", system_prompt="Be brief.")
        q = s.add_message(c["id"], None, "user", "2 + 2?")
        a = s.add_message(c["id"], q["id"], "assistant", "4", model="m", finish_reason="stop")
        s.rate(a["id"], 1, reasons=["correct"], comment="好")
        before = s.dump()
    with sqlite3.connect(path) as db:  # what version 1 wrote: no arena or safety tables
        db.execute("DROP TABLE safety_events")
        db.execute("DROP TABLE votes")
        db.execute("DROP TABLE battles")
        db.execute("PRAGMA user_version = 1")
    with Store(path, create=False) as s:  # e.g. `jielong feedback export` on an old file
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert s.dump() == before and s.ratings(a["id"])[0]["comment"] == "好"
        assert s.integrity() == "ok"
        bt, *_ = battle(s, c["id"])  # a new root question in the old conversation
        s.vote(bt["id"], "b")
        assert s.arena_votes()[0]["winner"] == "b"

    # an upgrade that fails changes nothing: it is one transaction
    broken = tmp_path / "broken.db"
    with Store(broken) as s:
        s.create_conversation(title="kept")
    with sqlite3.connect(broken) as db:
        db.execute("DROP TABLE safety_events")
        db.execute("DROP TABLE votes")
        db.execute("DROP TABLE battles")
        db.execute("CREATE TABLE votes (x)")  # the upgrade makes battles, then fails on votes
        db.execute("PRAGMA user_version = 1")
    with pytest.raises(UserError, match="not a readable feedback database"):
        Store(broken)
    with sqlite3.connect(broken) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("SELECT title FROM conversations").fetchall() == [("kept",)]
        assert "battles" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}


def test_wal_mode_full_sync_and_reopening(tmp_path):
    path = tmp_path / "f.db"
    with Store(path) as s:
        c = s.create_conversation(title="kept")
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with Store(path) as s:
        assert s.conversation(c["id"])["title"] == "kept"


def test_many_threads_rating_at_once(store):
    c = store.create_conversation()
    q = store.add_message(c["id"], None, "user", "hi")
    replies = [store.add_message(c["id"], q["id"], "assistant", f"r{i}") for i in range(4)]
    errors, ids = [], [[] for _ in range(16)]

    def rate(t):
        try:
            for i in range(200):
                m = replies[(t + i) % 4]["id"]
                ids[t].append(store.rate(m, 1 if i % 2 else -1, comment=f"{t}:{i}")["id"])
                if i % 50 == 0:  # reads interleave with the writes
                    store.conversation(c["id"])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=rate, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    comments = {r["comment"] for m in replies for r in store.ratings(m["id"])}
    assert comments == {f"{t}:{i}" for t in range(16) for i in range(200)}
    assert len({i for chunk in ids for i in chunk}) == 3200
    assert store.integrity() == "ok"


WRITER = """
import sys
from jielong.serve.store import Store
store, mid, i = Store(sys.argv[1]), sys.argv[2], 0
while True:
    rating = store.rate(mid, 1 if i % 2 else -1, reasons=["x"] * (i % 3), comment="c" * (i % 50))
    print(rating["id"], flush=True)  # acknowledged: committed
    i += 1
"""


def test_a_writer_killed_mid_write_loses_nothing_it_acknowledged(tmp_path):
    path = tmp_path / "f.db"
    with Store(path) as s:
        c = s.create_conversation()
        q = s.add_message(c["id"], None, "user", "hi")
        mid = s.add_message(c["id"], q["id"], "assistant", "hello")["id"]
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), mid],
                             stdout=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        for line in child.stdout:
            acknowledged.append(int(line))
            if len(acknowledged) == 300:
                os.kill(child.pid, signal.SIGKILL)
                break
        acknowledged += [int(line) for line in child.stdout]  # printed before it died
    finally:
        child.kill()
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 300
    with Store(path) as s:
        assert s.integrity() == "ok"
        stored = {r["id"] for r in s.ratings(mid)}
    assert set(acknowledged) <= stored
    with sqlite3.connect(path) as db:  # and SQLite's own view of the file agrees
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_version_3_file_upgrades_to_4_and_keeps_its_rows(tmp_path):
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as db:  # the file jielong wrote at schema version 3
        for v in (1, 2, 3):
            for statement in store_module._MIGRATIONS[v]:
                db.execute(statement)
        db.execute("INSERT INTO conversations (id, title, created, updated) VALUES ('c', 't', 1, 1)")
        db.execute("INSERT INTO messages (id, conversation_id, role, content, created) "
                   "VALUES ('q', 'c', 'user', '退貨要幾天？', 1)")
        db.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content, "
                   "finish_reason, created) VALUES ('a', 'c', 'q', 'assistant', '七天', "
                   "'content_filter', 2)")
        db.execute("INSERT INTO ratings (message_id, value, created) VALUES ('a', -1, 3)")
        db.execute("PRAGMA user_version = 3")
    with Store(path, create=False) as s:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        q, a = s.path("a")
        assert (q["content"], a["content"], a["finish_reason"], a["rating"]["value"], a["rag"]) == \
            ("退貨要幾天？", "七天", "content_filter", -1, None)
        rag = {"collection": "docs", "sources": [{"n": 1, "source": "退貨.md"}], "citations": []}
        b = s.add_message("c", "q", "assistant", "", model="m", origin="regenerate", rag=rag)
        assert s.update_message(b["id"], "七天 [1]", "stop",
                                {**rag, "citations": rag["sources"]})["rag"]["citations"] == \
            [{"n": 1, "source": "退貨.md"}]
        assert s.integrity() == "ok"


def test_a_version_5_file_upgrades_to_6_and_replies_keep_their_tool_calls(tmp_path):
    path = tmp_path / "v5.db"
    with sqlite3.connect(path) as db:  # the file jielong wrote at schema version 5
        for v in range(1, 6):
            for statement in store_module._MIGRATIONS[v]:
                db.execute(statement)
        db.execute("INSERT INTO conversations (id, title, created, updated) VALUES ('c', 't', 1, 1)")
        db.execute("INSERT INTO messages (id, conversation_id, role, content, created) "
                   "VALUES ('q', 'c', 'user', '三乘七是多少？', 1)")
        db.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content, "
                   "finish_reason, rag, created) VALUES ('a', 'c', 'q', 'assistant', '二十一', "
                   "'interrupted', '{\"collection\": \"docs\"}', 2)")
        db.execute("PRAGMA user_version = 5")
    with Store(path, create=False) as s:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        q, a = s.path("a")
        assert (a["content"], a["finish_reason"], a["rag"], a["tools"]) == \
            ("二十一", "interrupted", {"collection": "docs"}, None)
        calls = [{"id": "call_1", "name": "calculator", "arguments": '{"expression": "3*7"}',
                  "result": "21", "error": False, "step": 1}]
        b = s.add_message("c", "q", "assistant", "", model="m", origin="regenerate")
        assert b["tools"] is None
        done = s.update_message(b["id"], "三乘七是 21。", "stop", tools=calls)
        assert done["tools"] == calls and s.message(b["id"])["tools"] == calls
        assert s.integrity() == "ok"
    with Store(path, redact_pii=True) as s:  # the calls are kept redacted like the text
        said = [{**calls[0], "arguments": '{"phone": "0912-345-678"}'}]
        c = s.add_message("c", "q", "assistant", "", model="m", origin="regenerate", tools=said)
        assert "0912" not in json.dumps(c["tools"]) and "<PHONE>" in c["tools"][0]["arguments"]
