"""The store's safety decisions (schema 3) and the upgrade from a version 2 file."""

from __future__ import annotations

import sqlite3

import pytest

from jielong.errors import UserError
from jielong.serve import store as store_module
from jielong.serve.store import Store

CARD = {"region": "TW", "lines": [{"name": "安心專線", "number": "1925"}]}


def decision(rail="input", category="self_harm", action="resources", **kw):
    return {"rail": rail, "category": category, "action": action, "score": 0.6,
            "evidence": ["想自殺"], "card": CARD if action == "resources" else None, **kw}


def test_decisions_are_stored_with_their_message_and_listed_for_review(tmp_path):
    with Store(tmp_path / "f.db") as s:
        c = s.create_conversation()
        q = s.add_message(c["id"], None, "user", "我想自殺")
        a = s.add_message(c["id"], q["id"], "assistant", "聽到你這麼難受……1925",
                          finish_reason="content_filter")
        s.add_safety([decision()], "我想自殺", "chat", q["id"])
        s.add_safety([decision("output", "private_data", "redact")], "電話 0912345678", "v1")
        conv = s.conversation(c["id"])
        by_id = {m["id"]: m for m in conv["messages"]}
        [e] = by_id[q["id"]]["safety"]
        assert (e["rail"], e["category"], e["action"], e["card"]) == \
            ("input", "self_harm", "resources", CARD)
        assert by_id[a["id"]]["safety"] == [] and by_id[a["id"]]["finish_reason"] == "content_filter"
        assert s.message(q["id"])["safety"] == [e] and s.path(a["id"])[0]["safety"] == [e]
        newest = s.safety_events()
        assert [x["source"] for x in newest] == ["v1", "chat"]
        assert newest[0]["text"] == "電話 0912345678" and newest[0]["message_id"] is None
        assert [x["category"] for x in s.safety_events(source="chat")] == ["self_harm"]
        with pytest.raises(UserError, match="action 'allow' is not one of"):
            s.add_safety([decision(action="allow")], "x", "chat")
        with pytest.raises(UserError, match="source 'web' is not one of"):
            s.add_safety([decision()], "x", "web")
        assert s.integrity() == "ok"


def test_a_version_2_file_upgrades_to_3_and_keeps_rows_and_references(tmp_path):
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as db:  # the file jielong wrote at schema version 2
        for v in (1, 2):
            for statement in store_module._MIGRATIONS[v]:
                db.execute(statement)
        db.execute("INSERT INTO conversations (id, title, created, updated) VALUES ('c', 't', 1, 1)")
        db.execute("INSERT INTO messages (id, conversation_id, role, content, created) "
                   "VALUES ('q', 'c', 'user', '你好', 1)")
        db.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content, "
                   "finish_reason, created) VALUES ('a', 'c', 'q', 'assistant', '您好', 'stop', 2)")
        db.execute("INSERT INTO ratings (message_id, value, created) VALUES ('a', 1, 3)")
        with pytest.raises(sqlite3.IntegrityError):  # version 2 had no content_filter
            db.execute("UPDATE messages SET finish_reason = 'content_filter' WHERE id = 'a'")
        db.execute("PRAGMA user_version = 2")
    with Store(path, create=False) as s:
        assert s.path("a")[1]["content"] == "您好" and s.message("a")["rating"]["value"] == 1
        s.update_message("a", finish_reason="content_filter")
        s.add_safety([decision("output", "violence", "refuse")], "您好", "chat", "a")
        assert s.message("a")["safety"][0]["category"] == "violence"
        assert s.integrity() == "ok"
        assert s._db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert s._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
