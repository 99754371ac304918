"""Chats and feedback in one SQLite file: conversations as trees of messages, and every 👍/👎.

    store = Store("runs/serve/feedback.db")
    c = store.create_conversation(system_prompt="You are helpful.")
    q = store.add_message(c["id"], None, "user", "What is 2 + 2?")
    a = store.add_message(c["id"], q["id"], "assistant", "4", model="mine", finish_reason="stop")
    store.rate(a["id"], 1, reasons=["correct"])
    store.path(a["id"])       # [q, a]: the branch from the root to a

A conversation is a tree: a message's parent is the message it answers or follows (None for
the first), so a regenerated reply or an edited message is a sibling of the one it replaces
(same conversation, same parent) and the old branch stays. The system prompt lives on the
conversation, not as a message. Ratings are appended, never overwritten: the latest one of a
message is its current rating (value 0 clears it).

Durability: the file is in WAL mode with synchronous=FULL, and every write is one
transaction; a method returns only after its commit, so what it acknowledged survives a
killed process (and a power cut). One connection serves every thread, behind a lock.
`jielong feedback export` (jielong.serve.feedback) turns the file into training data.

Arena battles (the web chat's arena mode): one question answered by two served models side
by side, the answers being two sibling assistant messages, each with its model's name. A
battle names the question and its answers A (shown on the left) and B; its votes ("a", "b",
"tie" or "both_bad") are appended like ratings, the latest being the battle's current vote,
so changing one's mind replaces the vote and keeps the history. `arena_votes()` gives every
battle's current vote in the fixed format `jielong eval arena` writes to votes.jsonl.

Safety (jielong.safety.rails): every decision of a rail (which rail, category, action, score,
evidence, the crisis card, and the text it read) is a row of safety_events, tied to the web
chat's message it was about (the user message for the input rail, the reply for the output
rail) or, for the /v1 API, to none; a message comes with its decisions ("safety"), so a
team can review false positives, and `jielong feedback export` can leave flagged turns out.

Documents (`jielong serve --rag`): a reply answered from the user's documents keeps them with
it, as the message's `rag`: {"collection", "sources" (the passages the model was given),
"citations" (those its [n] markers name)}, each passage {n, id, source, page, heading, score,
quote} (jielong.rag.answer.citation); None for a reply without retrieval.

Tools (the web chat's "tools" setting, jielong.serve.chat_tools): a reply the model wrote
calling tools keeps the calls with it, as the message's `tools`: a list of {"id", "name",
"arguments" (JSON text), "result", "error", "step"}, in the order they ran; None for a reply
that called none.

Privacy and retention: `delete_conversation` hides a conversation (the web chat's Delete;
`jielong feedback export` leaves it out unless asked) or, with `hard=True` (the store's
default with `hard_delete=True`, `jielong serve --hard_delete`), removes it from the file with
everything tied to it: messages, ratings, safety events, arena battles and votes. `purge`
does that to every hidden conversation and every one not active for a retention period
(and the /v1 API's safety events as old), then VACUUMs, so the bytes are gone from the file,
not only unlinked (`jielong feedback purge`). The connection runs with secure_delete on
(SQLite zeroes what it deletes) and a hard delete checkpoints the write-ahead log, so a
removed message's text is not left in either file. With `redact_pii=True` (`jielong serve
--redact_pii`) every text the store keeps (messages, titles, system prompts, comments, the
rails' texts and evidence, passages) passes through jielong.prep.pii.redact first, the
detectors `jielong data clean` uses: "撥 0912-345-678" is kept as "撥 <PHONE>". The client
sees its reply as generated while it streams; what is kept, and what a later turn reads back
from the store, is redacted.

Schema versions (PRAGMA user_version): 1 conversations, messages, ratings; 2 adds battles and
votes; 3 adds safety_events and finish_reason "content_filter"; 4 adds messages.rag; 5 adds
finish_reason "interrupted" (a reply the server's shutdown or a crash cut off:
`mark_interrupted`, which `jielong serve` runs as it starts); 6 adds messages.tools. Opening an older file
upgrades it in place, in one transaction (all or nothing), and touches none of its rows.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jielong.errors import UserError
from jielong.prep.pii import redact_all

SCHEMA_VERSION = 6
ROLES = ("user", "assistant")
ORIGINS = ("new", "regenerate", "edit")
FINISH_REASONS = ("stop", "length", "stopped", "error", "content_filter", "interrupted")
SOURCES = ("chat", "v1")
RAILS = ("input", "output")
SAFETY_ACTIONS = ("refuse", "resources", "redact", "flag")  # where a safety decision was made: the web chat, the /v1 API
CONVERSATION_FIELDS = ("title", "system_prompt", "settings")
TITLE_CHARS = 48  # an untitled conversation is named after the start of its first message
WINNERS = ("a", "b", "tie", "both_bad")

# The statements that bring a file from version v - 1 to v, for each v.
_MIGRATIONS: dict[int, list[str]] = {}
_MIGRATIONS[1] = [
    """CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        system_prompt TEXT,
        settings TEXT NOT NULL DEFAULT '{}',
        created REAL NOT NULL,
        updated REAL NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)))""",
    """CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        parent_id TEXT REFERENCES messages(id),
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content TEXT NOT NULL,
        model TEXT,
        origin TEXT NOT NULL DEFAULT 'new' CHECK (origin IN ('new', 'regenerate', 'edit')),
        edited_from TEXT REFERENCES messages(id),
        finish_reason TEXT CHECK (finish_reason IN ('stop', 'length', 'stopped', 'error')),
        sampling TEXT,
        created REAL NOT NULL)""",
    "CREATE INDEX messages_by_parent ON messages (conversation_id, parent_id)",
    """CREATE TABLE ratings (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        value INTEGER NOT NULL CHECK (value IN (-1, 0, 1)),
        reasons TEXT NOT NULL DEFAULT '[]',
        comment TEXT NOT NULL DEFAULT '',
        model TEXT,
        created REAL NOT NULL)""",
    "CREATE INDEX ratings_by_message ON ratings (message_id, id)",
]
_MIGRATIONS[2] = [
    """CREATE TABLE battles (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        question_id TEXT NOT NULL REFERENCES messages(id),
        message_a TEXT NOT NULL REFERENCES messages(id),
        message_b TEXT NOT NULL REFERENCES messages(id),
        created REAL NOT NULL,
        CHECK (message_a != message_b))""",
    "CREATE INDEX battles_by_conversation ON battles (conversation_id)",
    """CREATE TABLE votes (
        id INTEGER PRIMARY KEY,
        battle_id TEXT NOT NULL REFERENCES battles(id),
        winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'both_bad')),
        created REAL NOT NULL)""",
    "CREATE INDEX votes_by_battle ON votes (battle_id, id)",
]

# Version 3: finish_reason "content_filter" (a reply a safety rail stopped or replaced) and
# every safety rail decision. SQLite cannot change a CHECK in place, so messages is rebuilt
# as its documentation's "other kinds of table schema changes" do it (a new table, the rows
# copied, the old one dropped, the new one renamed), with foreign keys off (see _migrate).
_MIGRATIONS[3] = [
    """CREATE TABLE messages_v3 (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        parent_id TEXT REFERENCES messages(id),
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content TEXT NOT NULL,
        model TEXT,
        origin TEXT NOT NULL DEFAULT 'new' CHECK (origin IN ('new', 'regenerate', 'edit')),
        edited_from TEXT REFERENCES messages(id),
        finish_reason TEXT CHECK (finish_reason IN ('stop', 'length', 'stopped', 'error',
                                                    'content_filter')),
        sampling TEXT,
        created REAL NOT NULL)""",
    "INSERT INTO messages_v3 SELECT id, conversation_id, parent_id, role, content, model, origin, "
    "edited_from, finish_reason, sampling, created FROM messages ORDER BY rowid",
    "DROP TABLE messages",
    "ALTER TABLE messages_v3 RENAME TO messages",
    "CREATE INDEX messages_by_parent ON messages (conversation_id, parent_id)",
    """CREATE TABLE safety_events (
        id INTEGER PRIMARY KEY,
        message_id TEXT REFERENCES messages(id),
        source TEXT NOT NULL CHECK (source IN ('chat', 'v1')),
        rail TEXT NOT NULL CHECK (rail IN ('input', 'output')),
        category TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('refuse', 'resources', 'redact', 'flag')),
        score REAL NOT NULL,
        evidence TEXT NOT NULL DEFAULT '[]',
        card TEXT,
        text TEXT NOT NULL,
        created REAL NOT NULL)""",
    "CREATE INDEX safety_by_message ON safety_events (message_id, id)",
]

# Version 4: the documents a reply was answered from (JSON, see the module docstring); a
# column added at the end, so every row keeps its values and reads NULL (no retrieval).
_MIGRATIONS[4] = ["ALTER TABLE messages ADD COLUMN rag TEXT"]

# Version 5: finish_reason "interrupted" (cut off by a shutdown or a crash); messages rebuilt
# as for version 3.
_MIGRATIONS[5] = [
    """CREATE TABLE messages_v5 (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        parent_id TEXT REFERENCES messages(id),
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content TEXT NOT NULL,
        model TEXT,
        origin TEXT NOT NULL DEFAULT 'new' CHECK (origin IN ('new', 'regenerate', 'edit')),
        edited_from TEXT REFERENCES messages(id),
        finish_reason TEXT CHECK (finish_reason IN ('stop', 'length', 'stopped', 'error',
                                                    'content_filter', 'interrupted')),
        sampling TEXT,
        created REAL NOT NULL,
        rag TEXT)""",
    "INSERT INTO messages_v5 SELECT id, conversation_id, parent_id, role, content, model, origin, "
    "edited_from, finish_reason, sampling, created, rag FROM messages ORDER BY rowid",
    "DROP TABLE messages",
    "ALTER TABLE messages_v5 RENAME TO messages",
    "CREATE INDEX messages_by_parent ON messages (conversation_id, parent_id)",
]

# Version 6: the tool calls a reply made, with their results (JSON, see the module
# docstring); a column added at the end, as for version 4 (every row reads NULL: no tools).
_MIGRATIONS[6] = ["ALTER TABLE messages ADD COLUMN tools TEXT"]

# A message with its current rating (the latest row of ratings for it).
_MESSAGES = """
    SELECT m.*, r.value AS r_value, r.reasons AS r_reasons, r.comment AS r_comment,
           r.created AS r_created
    FROM messages m
    LEFT JOIN ratings r ON r.id = (SELECT max(id) FROM ratings WHERE message_id = m.id)"""


class NotFound(UserError):
    """An id that names no conversation or message (or one that was deleted)."""


def new_id() -> str:
    return uuid.uuid4().hex


class Store:
    """The feedback database at `path` (created with its folder when missing, unless
    `create=False`). `redact_pii`: keep every text with its personal data redacted;
    `hard_delete`: deleting a conversation removes it (see the module's docstring). Safe to
    share between threads."""

    def __init__(self, path: str | Path, create: bool = True, redact_pii: bool = False,
                 hard_delete: bool = False):
        self.file = Path(path)
        self.redact_pii, self.hard_delete = redact_pii, hard_delete
        if self.file.is_dir():
            raise UserError(f"{self.file}: is a folder; give a file path for the feedback "
                            "database, e.g. runs/serve/feedback.db")
        if not self.file.exists():
            if not create:
                raise UserError(f"{self.file}: no such feedback database; `jielong serve --db "
                                f"{self.file}` writes one")
            self.file.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = sqlite3.connect(self.file, isolation_level=None, check_same_thread=False,
                                       timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA secure_delete=ON")  # deleted text is zeroed, not left
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.close()
            raise UserError(f"{self.file}: not a readable feedback database ({e}); move it aside "
                            "or give another --db") from None
        except BaseException:
            self.close()
            raise

    def _migrate(self) -> None:
        with self._tx() as db:  # a file already set up needs no write lock (export, a reader)
            if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return
        # Rebuilding a table others refer to needs foreign keys off, and that pragma only
        # takes effect outside a transaction; every reference is checked before the commit.
        self._db.execute("PRAGMA foreign_keys=OFF")
        try:
            self._upgrade()
        finally:
            self._db.execute("PRAGMA foreign_keys=ON")

    def _upgrade(self) -> None:
        with self._tx(write=True) as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UserError(f"{self.file}: written by a newer jielong (schema version "
                                f"{version}; this one reads up to {SCHEMA_VERSION}); upgrade "
                                "jielong")
            if version == SCHEMA_VERSION:
                return
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            if version == 0 and tables:
                raise UserError(f"{self.file}: an SQLite database, but not a jielong feedback "
                                f"database (its tables: {', '.join(tables[:5])}); give another "
                                "--db")
            for v in range(version + 1, SCHEMA_VERSION + 1):  # rolled back as one on an error
                for statement in _MIGRATIONS[v]:
                    db.execute(statement)
            broken = db.execute("PRAGMA foreign_key_check").fetchone()
            if broken:
                raise UserError(f"{self.file}: a row of {broken[0]} refers to a missing row of "
                                f"{broken[2]}; the file is damaged (upgrade not applied)")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction, committed (on disk) when the block ends, rolled back on an error.
        A read transaction sees one consistent snapshot."""
        with self._lock:
            db = self._db
            if db is None:
                raise RuntimeError(f"the feedback database {self.file} is closed")
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ conversations

    def create_conversation(self, title: str | None = None, system_prompt: str | None = None,
                            settings: dict | None = None) -> dict:
        cid, now = new_id(), time.time()
        title, system_prompt = self._clean(title or ""), self._clean(system_prompt)
        with self._tx(write=True) as db:
            db.execute("INSERT INTO conversations (id, title, system_prompt, settings, created, "
                       "updated) VALUES (?, ?, ?, ?, ?, ?)",
                       (cid, title, system_prompt, _dumps(settings or {}), now, now))
            return self._conversation(db, cid)

    def list_conversations(self) -> list[dict]:
        """The conversations not deleted, most recently active first."""
        with self._tx() as db:
            rows = db.execute("SELECT id, title, updated, created FROM conversations "
                              "WHERE deleted = 0 ORDER BY updated DESC, rowid DESC").fetchall()
        return [dict(r) for r in rows]

    def conversation(self, cid: str, messages: bool = True) -> dict:
        """A conversation with all its messages (every branch, in the order they were made),
        each with its current rating."""
        with self._tx() as db:
            return self._conversation(db, cid, messages)

    def update_conversation(self, cid: str, **changes) -> dict:
        """Change the title, system_prompt and/or settings given."""
        unknown = set(changes) - set(CONVERSATION_FIELDS)
        if unknown:
            raise UserError(f"cannot change {', '.join(sorted(unknown))} of a conversation; "
                            f"only {', '.join(CONVERSATION_FIELDS)}")
        if "settings" in changes:
            changes["settings"] = _dumps(changes["settings"] or {})
        if "title" in changes:
            changes["title"] = self._clean(changes["title"] or "")
        if "system_prompt" in changes:
            changes["system_prompt"] = self._clean(changes["system_prompt"])
        with self._tx(write=True) as db:
            self._live(db, cid)
            sets = "".join(f"{k} = ?, " for k in changes)
            db.execute(f"UPDATE conversations SET {sets}updated = ? WHERE id = ?",
                       (*changes.values(), time.time(), cid))
            return self._conversation(db, cid)

    def delete_conversation(self, cid: str, hard: bool | None = None) -> None:
        """Hide a conversation (it stays in the file, with its feedback), or with `hard`
        (default: the store's `hard_delete`) remove it and everything tied to it."""
        hard = self.hard_delete if hard is None else hard
        with self._tx(write=True) as db:
            self._live(db, cid)
            if hard:
                _remove(db, [cid])
            else:
                db.execute("UPDATE conversations SET deleted = 1 WHERE id = ?", (cid,))
        if hard:
            self._checkpoint()

    def purge(self, older_than_days: float | None = None, now: float | None = None) -> dict:
        """Remove every deleted conversation and, with `older_than_days`, every one not
        active since then (its last message or change), with what is tied to them, and the
        /v1 API's safety events as old; then VACUUM the file. The counts removed:
        {"conversations", "messages", "ratings", "safety_events", "battles", "votes"}."""
        if older_than_days is not None and older_than_days < 0:
            raise UserError(f"--older_than_days {older_than_days}: give 0 or more days (0: "
                            "every conversation)")
        now = time.time() if now is None else now
        cutoff = None if older_than_days is None else now - older_than_days * 86400
        with self._tx(write=True) as db:
            where, args = "deleted = 1", []
            if cutoff is not None:
                where, args = "deleted = 1 OR updated < ?", [cutoff]
            ids = [r[0] for r in db.execute(f"SELECT id FROM conversations WHERE {where}", args)]
            counts = _remove(db, ids)
            counts["safety_events"] += db.execute(
                "DELETE FROM safety_events WHERE message_id IS NULL AND created < ?",
                (cutoff if cutoff is not None else float("-inf"),)).rowcount
        with self._lock:  # VACUUM runs outside a transaction
            self._db.execute("VACUUM")
        self._checkpoint()
        return counts

    def _checkpoint(self) -> None:
        """Copy the write-ahead log into the file and empty it (old page images go too)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _clean(self, value):
        """`value` (a string, or lists and dicts of them) as the store keeps it: with its
        personal data redacted when the store redacts."""
        return redact_all(value) if self.redact_pii and value is not None else value

    # ------------------------------------------------------------------ messages

    def add_message(self, cid: str, parent_id: str | None, role: str, content: str, *,
                    model: str | None = None, origin: str = "new",
                    edited_from: str | None = None, finish_reason: str | None = None,
                    sampling: dict | None = None, rag: dict | None = None,
                    tools: list[dict] | None = None) -> dict:
        """A new message under `parent_id` (None: a first message). A user message follows an
        assistant message (or starts the conversation); an assistant message answers a user
        message. origin "edit" needs `edited_from`, a message of the same role and parent; a
        "regenerate" may name in it the reply it replaces (the web chat does). `rag`: the
        documents an assistant message is answered from, `tools` the calls it made (see the
        module docstring)."""
        _check(role, ROLES, "role")
        _check(origin, ORIGINS, "origin")
        if finish_reason is not None:
            _check(finish_reason, FINISH_REASONS, "finish_reason")
        if not isinstance(content, str):
            raise UserError(f"content must be a string, not {type(content).__name__}")
        if origin == "edit" and edited_from is None or origin == "new" and edited_from is not None:
            raise UserError("edited_from is the message an edit (origin 'edit', where it is "
                            "needed) or a regeneration (origin 'regenerate') replaces")
        mid, now = new_id(), time.time()
        content, rag, tools = self._clean(content), self._clean(rag), self._clean(tools)
        with self._tx(write=True) as db:
            conv = self._live(db, cid)
            if parent_id is None:
                if role != "user":
                    raise UserError("a conversation starts with a user message, not an "
                                    "assistant one")
            else:
                parent = self._message_row(db, parent_id)
                if parent["conversation_id"] != cid:
                    raise UserError(f"message {parent_id} is in another conversation")
                want = "user" if role == "assistant" else "assistant"
                if parent["role"] != want:
                    raise UserError(f"{_a(role)} message follows {_a(want)} message, and "
                                    f"{parent_id} is {_a(parent['role'])} message")
            if edited_from is not None:
                old = self._message_row(db, edited_from)
                if (old["conversation_id"], old["parent_id"], old["role"]) != \
                        (cid, parent_id, role):
                    raise UserError(f"an edit or a regeneration is a sibling of the message it "
                                    f"replaces: same conversation, parent and role as {edited_from}")
            db.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content, "
                       "model, origin, edited_from, finish_reason, sampling, rag, tools, created) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (mid, cid, parent_id, role, content, model, origin, edited_from,
                        finish_reason, None if sampling is None else _dumps(sampling),
                        None if rag is None else _dumps(rag),
                        None if tools is None else _dumps(tools), now))
            title = conv["title"]
            if not title and role == "user" and content.strip():
                title = _title(content)
            db.execute("UPDATE conversations SET updated = ?, title = ? WHERE id = ?",
                       (now, title, cid))
            return self._message(db, mid)

    def update_message(self, mid: str, content: str | None = None,
                       finish_reason: str | None = None, rag: dict | None = None,
                       tools: list[dict] | None = None) -> dict:
        """Set a message's content, finish_reason, rag and/or tools (a streamed reply, once
        at its end)."""
        if finish_reason is not None:
            _check(finish_reason, FINISH_REASONS, "finish_reason")
        content, rag, tools = self._clean(content), self._clean(rag), self._clean(tools)
        with self._tx(write=True) as db:
            self._message_row(db, mid, live=False)
            if content is not None:
                db.execute("UPDATE messages SET content = ? WHERE id = ?", (content, mid))
            if finish_reason is not None:
                db.execute("UPDATE messages SET finish_reason = ? WHERE id = ?",
                           (finish_reason, mid))
            if rag is not None:
                db.execute("UPDATE messages SET rag = ? WHERE id = ?", (_dumps(rag), mid))
            if tools is not None:
                db.execute("UPDATE messages SET tools = ? WHERE id = ?", (_dumps(tools), mid))
            return self._message(db, mid)

    def mark_interrupted(self) -> int:
        """Mark every reply left unfinished (no finish_reason: the process stopped while it
        was written) "interrupted"; how many. For a server starting, before it takes
        requests."""
        with self._tx(write=True) as db:
            return db.execute("UPDATE messages SET finish_reason = 'interrupted' "
                              "WHERE role = 'assistant' AND finish_reason IS NULL").rowcount

    def message(self, mid: str) -> dict:
        with self._tx() as db:
            self._message_row(db, mid)
            return self._message(db, mid)

    def path(self, mid: str) -> list[dict]:
        """The messages from the conversation's first one down to `mid`, in order."""
        with self._tx() as db:
            self._message_row(db, mid)
            return self._path(db, mid)

    def siblings(self, mid: str) -> list[dict]:
        """The messages with `mid`'s parent (`mid` among them), in the order they were made."""
        with self._tx() as db:
            m = self._message_row(db, mid)
            rows = db.execute(f"{_MESSAGES} WHERE m.conversation_id = ? AND m.parent_id IS ? "
                              "ORDER BY m.rowid", (m["conversation_id"], m["parent_id"]))
            return [_message_dict(r) for r in rows.fetchall()]

    # ------------------------------------------------------------------ ratings

    def rate(self, mid: str, value: int, reasons: list[str] | tuple = (), comment: str = "",
             model: str | None = None) -> dict:
        """Rate an assistant message: 1 (👍), -1 (👎) or 0 (clear the rating); kept beside the
        earlier ratings, the latest being current. `model` defaults to the message's."""
        if isinstance(value, bool) or value not in (1, -1, 0):
            raise UserError(f"a rating is 1 (👍), -1 (👎) or 0 (cleared), not {value!r}")
        if not all(isinstance(r, str) for r in reasons):
            raise UserError("reasons must be strings")
        if not isinstance(comment, str):
            raise UserError("comment must be a string")
        comment, now = self._clean(comment), time.time()
        with self._tx(write=True) as db:
            m = self._message_row(db, mid)
            if m["role"] != "assistant":
                raise UserError(f"message {mid} is a user message; only replies are rated")
            cur = db.execute("INSERT INTO ratings (message_id, value, reasons, comment, model, "
                             "created) VALUES (?, ?, ?, ?, ?, ?)",
                             (mid, value, _dumps(list(reasons)), comment,
                              model if model is not None else m["model"], now))
            return {"id": cur.lastrowid, "value": value, "reasons": list(reasons),
                    "comment": comment, "created": now}

    def ratings(self, mid: str) -> list[dict]:
        """Every rating of a message, oldest first."""
        with self._tx() as db:
            self._message_row(db, mid, live=False)
            rows = db.execute("SELECT * FROM ratings WHERE message_id = ? ORDER BY id",
                              (mid,)).fetchall()
        return [{**dict(r), "reasons": json.loads(r["reasons"])} for r in rows]

    # ------------------------------------------------------------------ arena battles

    def add_battle(self, cid: str, question_id: str, message_a: str, message_b: str) -> dict:
        """A battle: two different replies to the user message `question_id`, A (shown on the
        left) and B."""
        bid, now = new_id(), time.time()
        with self._tx(write=True) as db:
            self._live(db, cid)
            for mid in (message_a, message_b):
                m = self._message_row(db, mid)
                if (m["conversation_id"], m["parent_id"], m["role"]) != \
                        (cid, question_id, "assistant"):
                    raise UserError(f"message {mid} is not a reply to {question_id} in "
                                    f"conversation {cid}; a battle's answers are two replies to "
                                    "its question")
            if message_a == message_b:
                raise UserError("a battle's answers A and B must be two different messages")
            db.execute("INSERT INTO battles (id, conversation_id, question_id, message_a, "
                       "message_b, created) VALUES (?, ?, ?, ?, ?, ?)",
                       (bid, cid, question_id, message_a, message_b, now))
            return self._battle(db, bid)

    def battle(self, bid: str) -> dict:
        """{"id", "conversation_id", "question_id", "message_a", "message_b", "created",
        "models": {"a", "b"}, "vote": the current vote or None}."""
        with self._tx() as db:
            return self._battle(db, bid)

    def battles(self, cid: str) -> list[dict]:
        """The battles of a conversation, oldest first."""
        with self._tx() as db:
            self._live(db, cid)
            ids = [r[0] for r in db.execute("SELECT id FROM battles WHERE conversation_id = ? "
                                            "ORDER BY created, rowid", (cid,))]
            return [self._battle(db, bid) for bid in ids]

    def vote(self, bid: str, winner: str) -> dict:
        """Vote on a battle: "a", "b", "tie" or "both_bad"; kept beside the earlier votes, the
        latest being current. Both answers must be written (not still being generated)."""
        if not isinstance(winner, str) or winner not in WINNERS:
            raise UserError(f"a vote is one of {', '.join(WINNERS)}, not {winner!r}")
        now = time.time()
        with self._tx(write=True) as db:
            b = self._battle(db, bid)
            for side in ("a", "b"):
                if self._message_row(db, b[f"message_{side}"])["finish_reason"] is None:
                    raise UserError(f"answer {side.upper()} of battle {bid} is still being "
                                    "written; vote when both are done")
            cur = db.execute("INSERT INTO votes (battle_id, winner, created) VALUES (?, ?, ?)",
                             (bid, winner, now))
            return {"id": cur.lastrowid, "winner": winner, "created": now}

    def battle_votes(self, bid: str) -> list[dict]:
        """Every vote on a battle, oldest first."""
        with self._tx() as db:
            self._battle(db, bid, live=False)
            rows = db.execute("SELECT id, winner, created FROM votes WHERE battle_id = ? "
                              "ORDER BY id", (bid,)).fetchall()
        return [dict(r) for r in rows]

    def arena_votes(self, include_deleted: bool = True) -> list[dict]:
        """Every battle's current vote, oldest battle first, as `jielong eval arena` writes
        votes.jsonl: {"id", "prompt", "model_a", "model_b", "answer_a", "answer_b", "winner",
        "time"}; "prompt" is the system prompt (when there is one) and the messages down to
        the question, "time" the vote's."""
        where = "" if include_deleted else "AND c.deleted = 0"
        out = []
        with self._tx() as db:
            rows = db.execute(
                "SELECT b.*, c.system_prompt, v.winner, v.created AS voted, "
                "a.model AS model_a, a.content AS answer_a, "
                "bb.model AS model_b, bb.content AS answer_b FROM battles b "
                "JOIN conversations c ON c.id = b.conversation_id "
                "JOIN votes v ON v.id = (SELECT max(id) FROM votes WHERE battle_id = b.id) "
                "JOIN messages a ON a.id = b.message_a JOIN messages bb ON bb.id = b.message_b "
                f"WHERE 1 {where} ORDER BY b.created, b.rowid").fetchall()
            for r in rows:
                prompt = [{"role": m["role"], "content": m["content"]}
                          for m in self._path(db, r["question_id"])]
                if r["system_prompt"]:
                    prompt.insert(0, {"role": "system", "content": r["system_prompt"]})
                out.append({"id": r["id"], "prompt": prompt, "model_a": r["model_a"] or "",
                            "model_b": r["model_b"] or "", "answer_a": r["answer_a"],
                            "answer_b": r["answer_b"], "winner": r["winner"],
                            "time": r["voted"]})
        return out

    # ------------------------------------------------------------------ safety

    def add_safety(self, decisions: list[dict], text: str, source: str,
                   message_id: str | None = None) -> list[dict]:
        """Record a rail's `decisions` (each {rail, category, action, score, evidence, card?},
        as jielong.safety.rails.Decision.to_dict gives them) about `text`, the text the rail
        read, made by `source` ("chat" or "v1"), about the message `message_id` (or none)."""
        _check(source, SOURCES, "source")
        for d in decisions:
            _check(d["rail"], RAILS, "rail")
            _check(d["action"], SAFETY_ACTIONS, "action")
        now, text = time.time(), self._clean(text)
        with self._tx(write=True) as db:
            if message_id is not None:
                self._message_row(db, message_id, live=False)
            ids = [db.execute(
                "INSERT INTO safety_events (message_id, source, rail, category, action, score, "
                "evidence, card, text, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, source, d["rail"], d["category"], d["action"], float(d["score"]),
                 _dumps(self._clean(d.get("evidence") or [])),
                 None if d.get("card") is None else _dumps(d["card"]), text, now)).lastrowid
                for d in decisions]
            rows = [db.execute("SELECT * FROM safety_events WHERE id = ?", (i,)).fetchone()
                    for i in ids]
            return [_safety_dict(r, text=True) for r in rows]

    def safety_events(self, source: str | None = None, category: str | None = None,
                      limit: int | None = None) -> list[dict]:
        """The recorded decisions, newest first, each with the text it read (for review)."""
        where, args = [], []
        for col, value in (("source", source), ("category", category)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        sql = "SELECT * FROM safety_events" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC" + (" LIMIT ?" if limit is not None else "")
        with self._tx() as db:
            rows = db.execute(sql, (*args, *([limit] if limit is not None else []))).fetchall()
        return [_safety_dict(r, text=True) for r in rows]

    # ------------------------------------------------------------------ export

    def dump(self, include_deleted: bool = True) -> list[dict]:
        """Every conversation (oldest first) with its messages and current ratings, read as
        one snapshot; deleted ones carry "deleted": True."""
        with self._tx() as db:
            where = "" if include_deleted else "WHERE deleted = 0"
            ids = [r[0] for r in db.execute(
                f"SELECT id FROM conversations {where} ORDER BY created, rowid")]
            out = []
            for cid in ids:
                c = self._conversation(db, cid, live=False)
                c["deleted"] = bool(db.execute("SELECT deleted FROM conversations WHERE id = ?",
                                               (cid,)).fetchone()[0])
                out.append(c)
            return out

    def integrity(self) -> str:
        """SQLite's own check of the file: "ok" when it is sound."""
        with self._tx() as db:
            return "; ".join(r[0] for r in db.execute("PRAGMA integrity_check"))

    # ------------------------------------------------------------------ inside a transaction

    def _live(self, db: sqlite3.Connection, cid: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM conversations WHERE id = ?", (cid,)).fetchone()
        if row is None or row["deleted"]:
            raise NotFound(f"no conversation {cid}" + (" (it was deleted)" if row else ""))
        return row

    def _conversation(self, db: sqlite3.Connection, cid: str, messages: bool = True,
                      live: bool = True) -> dict:
        if live:
            row = self._live(db, cid)
        else:
            row = db.execute("SELECT * FROM conversations WHERE id = ?", (cid,)).fetchone()
        out = {"id": row["id"], "title": row["title"], "system_prompt": row["system_prompt"],
               "settings": json.loads(row["settings"]), "created": row["created"],
               "updated": row["updated"]}
        if messages:
            rows = db.execute(f"{_MESSAGES} WHERE m.conversation_id = ? ORDER BY m.rowid",
                              (cid,)).fetchall()
            events = db.execute("SELECT e.* FROM safety_events e JOIN messages m ON "
                                "m.id = e.message_id WHERE m.conversation_id = ? ORDER BY e.id",
                                (cid,)).fetchall()
            out["messages"] = _with_safety([_message_dict(r) for r in rows], events)
        return out

    def _message_row(self, db: sqlite3.Connection, mid: str, live: bool = True) -> sqlite3.Row:
        row = db.execute("SELECT m.*, c.deleted FROM messages m JOIN conversations c "
                         "ON c.id = m.conversation_id WHERE m.id = ?", (mid,)).fetchone()
        if row is None or (live and row["deleted"]):
            raise NotFound(f"no message {mid}" + (" (its conversation was deleted)" if row else ""))
        return row

    def _path(self, db: sqlite3.Connection, mid: str) -> list[dict]:
        rows = db.execute(
            "WITH RECURSIVE up(id, depth) AS (SELECT ?, 0 UNION ALL "
            "SELECT m.parent_id, up.depth + 1 FROM messages m JOIN up ON m.id = up.id "
            "WHERE m.parent_id IS NOT NULL) "
            f"{_MESSAGES} JOIN up ON up.id = m.id ORDER BY up.depth DESC", (mid,)).fetchall()
        return [self._message(db, r["id"]) for r in rows]

    def _battle(self, db: sqlite3.Connection, bid: str, live: bool = True) -> dict:
        row = db.execute("SELECT b.*, c.deleted, a.model AS model_a, bb.model AS model_b "
                         "FROM battles b JOIN conversations c ON c.id = b.conversation_id "
                         "JOIN messages a ON a.id = b.message_a "
                         "JOIN messages bb ON bb.id = b.message_b WHERE b.id = ?",
                         (bid,)).fetchone()
        if row is None or (live and row["deleted"]):
            raise NotFound(f"no battle {bid}" + (" (its conversation was deleted)" if row else ""))
        vote = db.execute("SELECT winner, created FROM votes WHERE battle_id = ? "
                          "ORDER BY id DESC LIMIT 1", (bid,)).fetchone()
        return {"id": row["id"], "conversation_id": row["conversation_id"],
                "question_id": row["question_id"], "message_a": row["message_a"],
                "message_b": row["message_b"], "created": row["created"],
                "models": {"a": row["model_a"], "b": row["model_b"]},
                "vote": dict(vote) if vote else None}

    def _message(self, db: sqlite3.Connection, mid: str) -> dict:
        events = db.execute("SELECT * FROM safety_events WHERE message_id = ? ORDER BY id",
                            (mid,)).fetchall()
        return _with_safety([_message_dict(db.execute(f"{_MESSAGES} WHERE m.id = ?",
                                                      (mid,)).fetchone())], events)[0]


def _remove(db: sqlite3.Connection, cids: list[str]) -> dict[str, int]:
    """Delete the conversations `cids` and every row tied to them (children first, so the
    foreign keys hold at each statement); the counts deleted, by table."""
    counts = dict.fromkeys(("votes", "battles", "ratings", "safety_events", "messages",
                            "conversations"), 0)
    of_messages = "SELECT id FROM messages WHERE conversation_id = ?"
    for cid in cids:
        for table, sql in (
                ("votes", "DELETE FROM votes WHERE battle_id IN "
                          "(SELECT id FROM battles WHERE conversation_id = ?)"),
                ("battles", "DELETE FROM battles WHERE conversation_id = ?"),
                ("ratings", f"DELETE FROM ratings WHERE message_id IN ({of_messages})"),
                ("safety_events", f"DELETE FROM safety_events WHERE message_id IN ({of_messages})"),
                ("messages", "DELETE FROM messages WHERE conversation_id = ?"),
                ("conversations", "DELETE FROM conversations WHERE id = ?")):
            counts[table] += db.execute(sql, (cid,)).rowcount
    return counts


def sealed_battle(b: dict) -> dict:
    """A battle as the arena shows it: its models (`models`) only once it has a vote, so
    the voter does not know who answered what."""
    return {**b, "models": b["models"] if b["vote"] else None}


def sealed(conversation: dict, battles: list[dict]) -> dict:
    """A conversation as the web chat shows it: with its battles (sealed_battle), and the
    answers of a battle nobody has voted on yet without their model's name."""
    hidden = {b[k] for b in battles if not b["vote"] for k in ("message_a", "message_b")}
    out = {**conversation, "battles": [sealed_battle(b) for b in battles]}
    if "messages" in out:
        out["messages"] = [{**m, "model": None} if m["id"] in hidden else m
                           for m in out["messages"]]
    return out


def _message_dict(r: sqlite3.Row) -> dict:
    rating = None
    if r["r_value"]:  # no rating, or the latest cleared it (0): none current
        rating = {"value": r["r_value"], "reasons": json.loads(r["r_reasons"]),
                  "comment": r["r_comment"], "created": r["r_created"]}
    return {"id": r["id"], "conversation_id": r["conversation_id"], "parent_id": r["parent_id"],
            "role": r["role"], "content": r["content"], "model": r["model"],
            "origin": r["origin"], "edited_from": r["edited_from"],
            "finish_reason": r["finish_reason"],
            "sampling": None if r["sampling"] is None else json.loads(r["sampling"]),
            "rag": None if r["rag"] is None else json.loads(r["rag"]),
            "tools": None if r["tools"] is None else json.loads(r["tools"]),
            "created": r["created"], "rating": rating}


def _safety_dict(r: sqlite3.Row, text: bool = False) -> dict:
    out = {"id": r["id"], "message_id": r["message_id"], "source": r["source"],
           "rail": r["rail"], "category": r["category"], "action": r["action"],
           "score": r["score"], "evidence": json.loads(r["evidence"]),
           "card": None if r["card"] is None else json.loads(r["card"]), "created": r["created"]}
    if text:
        out["text"] = r["text"]
    return out


def _with_safety(messages: list[dict], events: list[sqlite3.Row]) -> list[dict]:
    """`messages`, each with the list of its safety decisions ("safety", oldest first)."""
    by_message: dict[str, list[dict]] = {}
    for e in events:
        by_message.setdefault(e["message_id"], []).append(_safety_dict(e))
    for m in messages:
        m["safety"] = by_message.get(m["id"], [])
    return messages


def _a(role: str) -> str:
    return f"an {role}" if role == "assistant" else f"a {role}"


def _check(value: str, allowed: tuple, what: str) -> None:
    if value not in allowed:
        raise UserError(f"{what} {value!r} is not one of {', '.join(allowed)}")


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1].rstrip() + "…"
