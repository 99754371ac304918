"""Privacy and retention in the chat store (jielong.serve.store): a hard delete and `jielong
feedback purge` remove a conversation with everything tied to it, and its text is no longer
in the file's bytes (write-ahead log included); the soft delete stays the default; with
redact_pii the store keeps personal data redacted, in 繁體, 简体 and English alike."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing

import pytest

from jielong.cli import run
from jielong.errors import UserError
from jielong.serve.store import Store

TABLES = ("conversations", "messages", "ratings", "safety_events", "battles", "votes")
SECRET = "my locker code is 7391-Zebra-Quartz"  # text that appears nowhere else


def file_bytes(store: Store) -> bytes:
    """The database's bytes on disk: the file and its write-ahead log."""
    wal = store.file.with_name(store.file.name + "-wal")
    return store.file.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def rows(store: Store) -> dict[str, int]:
    with closing(sqlite3.connect(store.file)) as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def chat(s: Store, question: str, answer: str = "ok") -> str:
    """A conversation with a question, two rated answers, a battle with a vote and a safety
    event; its id."""
    c = s.create_conversation(system_prompt="Be brief.")["id"]
    q = s.add_message(c, None, "user", question)["id"]
    a = s.add_message(c, q, "assistant", answer, model="m", finish_reason="stop")["id"]
    b = s.add_message(c, q, "assistant", answer + "!", model="n", finish_reason="stop")["id"]
    s.rate(a, 1, comment=question)
    s.vote(s.add_battle(c, q, a, b)["id"], "a")
    s.add_safety([{"rail": "input", "category": "pii", "action": "flag", "score": 1.0,
                   "evidence": [question]}], question, "chat", q)
    return c


def test_hard_delete_removes_every_row_and_the_bytes(tmp_path):
    with Store(tmp_path / "f.db") as s:
        keep, gone = chat(s, "hello there"), chat(s, SECRET)
        assert rows(s) == {"conversations": 2, "messages": 6, "ratings": 2, "safety_events": 2,
                           "battles": 2, "votes": 2}
        assert SECRET.encode() in file_bytes(s)  # the check below can fail
        s.delete_conversation(gone, hard=True)
        assert rows(s) == {"conversations": 1, "messages": 3, "ratings": 1, "safety_events": 1,
                           "battles": 1, "votes": 1}
        assert SECRET.encode() not in file_bytes(s)
        assert [c["id"] for c in s.list_conversations()] == [keep]
        assert s.integrity() == "ok"
        s.delete_conversation(keep)  # the default stays a soft delete: hidden, kept
        assert s.list_conversations() == [] and rows(s)["messages"] == 3
    with Store(tmp_path / "h.db", hard_delete=True) as s:  # jielong serve --hard_delete
        s.delete_conversation(chat(s, SECRET))
        assert rows(s)["conversations"] == 0 and SECRET.encode() not in file_bytes(s)


def test_purge_removes_deleted_and_expired_conversations_then_vacuums(tmp_path, capsys):
    db = tmp_path / "f.db"
    with Store(db) as s:
        deleted, old, recent = chat(s, SECRET), chat(s, "老對話 " + SECRET), chat(s, "新的")
        s.delete_conversation(deleted)
        s.add_safety([{"rail": "input", "category": "pii", "action": "flag", "score": 1.0}],
                     "a /v1 prompt " + SECRET, "v1")
        for _ in range(6):  # enough pages that removing them shrinks the file
            s.add_message(old, None, "user", SECRET * 200)
        with closing(sqlite3.connect(db)) as raw:  # `old` and the /v1 event: 100 days ago
            long_ago = time.time() - 100 * 86400
            raw.execute("UPDATE conversations SET updated = ? WHERE id = ?", (long_ago, old))
            raw.execute("UPDATE safety_events SET created = ? WHERE message_id IS NULL",
                        (long_ago,))
            raw.commit()
        assert s.purge() == {"votes": 1, "battles": 1, "ratings": 1, "safety_events": 1,
                             "messages": 3, "conversations": 1}  # deleted ones only
        assert {c["id"] for c in s.list_conversations()} == {old, recent}
        assert SECRET.encode() in file_bytes(s)  # still in `old`
    run(["feedback", "purge", "--db", str(db), "--older_than_days", "30"])
    out = capsys.readouterr().out
    assert out.startswith(f"purged 1 conversations (deleted or inactive for 30 days) from {db}: "
                          "9 messages, 1 ratings, 2 safety events, 1 votes; ")
    before, after = (int(x.replace(",", "")) for x in out.split("; ")[1].split()[::2][:2])
    assert after < before
    with Store(db) as s:
        assert [c["id"] for c in s.list_conversations()] == [recent]
        assert rows(s) == {"conversations": 1, "messages": 3, "ratings": 1, "safety_events": 1,
                           "battles": 1, "votes": 1}
        assert SECRET.encode() not in file_bytes(s) and s.integrity() == "ok"
    with pytest.raises(UserError, match="give 0 or more days"):
        run(["feedback", "purge", "--db", str(db), "--older_than_days", "-1"])
    with pytest.raises(UserError, match="no such feedback database"):
        run(["feedback", "purge", "--db", str(tmp_path / "none.db")])
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("text, kept, raw", [
    ("請撥 0912-345-678 找我，身分證 A123456789", "請撥 <PHONE> 找我，身分證 <TW_ID>",
     ["0912-345-678", "A123456789"]),
    ("我的手机是 138 0013 8000，邮箱 li@example.cn", "我的手机是 <PHONE>，邮箱 <EMAIL>",
     ["138 0013 8000", "li@example.cn"]),
    ("Email amy@example.com or call +1 415 555 0100", "Email <EMAIL> or call <PHONE>",
     ["amy@example.com", "+1 415 555 0100"]),
])
def test_redact_pii_keeps_no_personal_data(tmp_path, text, kept, raw):
    with Store(tmp_path / "f.db", redact_pii=True) as s:
        c = s.create_conversation(system_prompt=f"The user said: {text}")
        q = s.add_message(c["id"], None, "user", text)
        a = s.add_message(c["id"], q["id"], "assistant", "")
        a = s.update_message(a["id"], f"Noted: {text}", "stop")
        s.rate(a["id"], -1, comment=text)
        s.add_safety([{"rail": "output", "category": "pii", "action": "flag", "score": 1.0,
                       "evidence": [text]}], text, "chat", a["id"])
        conv = s.conversation(c["id"])
        assert q["content"] == kept and a["content"] == f"Noted: {kept}"
        assert conv["title"] == kept and conv["system_prompt"] == f"The user said: {kept}"
        assert s.ratings(a["id"])[0]["comment"] == kept
        [e] = s.safety_events()
        assert e["text"] == kept and e["evidence"] == [kept]
        data = file_bytes(s)
        assert not any(r.encode() in data for r in raw)
    with Store(tmp_path / "plain.db") as s:  # off by default: kept as written
        c = s.create_conversation()["id"]
        assert s.add_message(c, None, "user", text)["content"] == text
