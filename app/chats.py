"""The conversation store: every chat of every tab, in one SQLite file in the data folder.

The app and the CLI both write it, so it runs in WAL mode (readers never wait for a writer) and
each change is one `BEGIN IMMEDIATE` transaction with a busy timeout: two writers queue, neither
loses a message. An answer is written when it finishes, together with its question, so a crash
loses at most the answer being written. Full-text search is an FTS5 index kept by triggers.
A file that is not a readable database (or stays locked past the timeout when opened) is moved
aside as `chats.db.damaged-<time>` and a new one started, with a notice, as app/jsonfile.py does.
No Qt here: the UI and the CLI use the same functions.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from app import paths
from app.errors import EngineError
from app.jsonfile import _notify

BUSY_MS = 10_000  # how long a writer waits for the other one; a turn's write takes milliseconds
UNDO_SECONDS = 6.0  # a deleted chat can be brought back this long (the app's Undo)

SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, task TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, deleted REAL);
CREATE INDEX IF NOT EXISTS chats_task ON chats(task, updated);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    turn INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, prompt TEXT,
    pane INTEGER NOT NULL DEFAULT 0, task TEXT, adapter TEXT, adapter_hash TEXT, model TEXT,
    settings TEXT, tps REAL, finish TEXT, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS messages_chat ON messages(chat_id, turn, id);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(content, content='messages', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content); END;
CREATE TRIGGER IF NOT EXISTS messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content); END;
"""


@dataclass
class Message:
    """One message. `pane` is 0 for an ordinary answer, 1 or 2 for the two sides of a comparison."""

    role: str  # "user" or "assistant"
    content: str  # as shown (a user message: what was typed)
    prompt: str | None = None  # a user message as sent: the task's template filled
    pane: int = 0
    task: str = ""
    adapter: str | None = None  # the engine's adapter name or a mix label; None: the base model
    adapter_hash: str | None = None  # of the adapter's files (folder_hash), to see it was replaced
    model: str = ""
    settings: dict = field(default_factory=dict)
    tps: float = 0.0  # generation tokens/s
    finish: str | None = None  # "stop", "length", "cancelled"
    created: float = 0.0
    turn: int = 0
    id: int = 0


@dataclass
class Chat:
    id: int
    name: str
    task: str
    created: float
    updated: float
    turns: int = 0
    snippet: str = ""  # a search hit's context


_MSG_COLS = ("role", "content", "prompt", "pane", "task", "adapter", "adapter_hash", "model", "settings", "tps",
             "finish", "created", "turn", "id")


def _message(row) -> Message:
    m = Message(*row)
    m.settings = json.loads(m.settings) if m.settings and m.settings != "{}" else {}
    return m


def store_path() -> Path:
    return paths.home() / "chats.db"


class ChatStore:
    def __init__(self, path: str | Path | None = None, busy_ms: int = BUSY_MS):
        self.path = Path(path) if path else store_path()
        self.busy_ms = busy_ms
        self.notice: str | None = None  # what happened to a damaged file, said once by the caller
        try:
            self.db = self._connect()
        except sqlite3.DatabaseError as e:  # not a database, malformed, or locked past the timeout
            self.notice = self._set_aside(e)
            self.db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self.busy_ms / 1000, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout={int(self.busy_ms)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: an app crash loses nothing committed; 10x faster
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(SCHEMA)
            db.execute("SELECT count(*) FROM chats").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _set_aside(self, error: Exception) -> str:
        kept = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(kept) + suffix))
        why = "locked by another program" if "locked" in str(error) else "damaged"
        message = (f"the conversation store ({self.path}) was {why} ({error}); it is kept as {kept.name} and a "
                   "new, empty one was started")
        _notify(message)
        return message

    def close(self) -> None:
        self.db.close()

    def _write(self):
        """A write transaction: BEGIN IMMEDIATE takes the write lock first, so two writers queue
        (busy_timeout) instead of failing halfway."""
        return _Transaction(self.db)

    # -- chats ------------------------------------------------------------------------------
    def create(self, task: str, name: str) -> Chat:
        now = time.time()
        with self._write():
            name = self._unique(name)
            cur = self.db.execute("INSERT INTO chats(name, task, created, updated) VALUES (?,?,?,?)",
                                  (name, task, now, now))
        return Chat(cur.lastrowid, name, task, now, now)

    def _unique(self, name: str) -> str:
        name = " ".join(name.split())[:80] or "Chat"
        taken = {r[0] for r in self.db.execute("SELECT name FROM chats WHERE name = ? OR name LIKE ?",
                                              (name, name + " (%)"))}
        n, out = 2, name
        while out in taken:
            out, n = f"{name} ({n})", n + 1
        return out

    _CHAT = ("SELECT c.id, c.name, c.task, c.created, c.updated, "
             "(SELECT count(*) FROM messages m WHERE m.chat_id = c.id AND m.role = 'user') FROM chats c ")

    def get(self, name: str) -> Chat | None:
        row = self.db.execute(self._CHAT + "WHERE c.name = ? AND c.deleted IS NULL", (name,)).fetchone()
        return Chat(*row) if row else None

    def get_id(self, chat_id: int) -> Chat | None:
        row = self.db.execute(self._CHAT + "WHERE c.id = ? AND c.deleted IS NULL", (chat_id,)).fetchone()
        return Chat(*row) if row else None

    def find(self, name: str) -> Chat:
        chat = self.get(name)
        if chat is None:
            known = ", ".join(c.name for c in self.chats()[:10]) or "none yet"
            raise EngineError(f"no conversation named {name!r} (conversations: {known}; see loradesk chats list)")
        return chat

    def chats(self, task: str | None = None) -> list[Chat]:
        """Newest (last written) first."""
        where, args = ("WHERE c.deleted IS NULL AND c.task = ? ", (task,)) if task else ("WHERE c.deleted IS NULL ", ())
        return [Chat(*r) for r in self.db.execute(self._CHAT + where + "ORDER BY c.updated DESC, c.id DESC", args)]

    def last_chat(self, task: str) -> Chat | None:
        found = self.chats(task)
        return found[0] if found else None

    def rename(self, chat_id: int, name: str) -> str:
        name = " ".join(name.split())
        if not name:
            raise ValueError("a conversation's name cannot be empty")
        with self._write():
            other = self.db.execute("SELECT id FROM chats WHERE name = ?", (name,)).fetchone()
            if other and other[0] != chat_id:
                raise ValueError(f"there is already a conversation named {name!r}; choose another name")
            self.db.execute("UPDATE chats SET name = ? WHERE id = ?", (name, chat_id))
        return name

    def delete(self, chat_id: int, undo: bool = False) -> None:
        """Delete a chat; with `undo`, only mark it (restore() brings it back until purge())."""
        with self._write():
            if undo:
                self.db.execute("UPDATE chats SET deleted = ? WHERE id = ?", (time.time(), chat_id))
            else:
                self.db.execute("DELETE FROM messages WHERE chat_id = ?", (chat_id,))
                self.db.execute("DELETE FROM chats WHERE id = ?", (chat_id,))

    def restore(self, chat_id: int) -> None:
        with self._write():
            self.db.execute("UPDATE chats SET deleted = NULL WHERE id = ?", (chat_id,))

    def purge(self, older_than: float = UNDO_SECONDS) -> None:
        """Delete for good the chats marked deleted more than `older_than` seconds ago."""
        with self._write():
            ids = [r[0] for r in self.db.execute("SELECT id FROM chats WHERE deleted IS NOT NULL AND deleted <= ?",
                                                 (time.time() - older_than,))]
            for chat_id in ids:
                self.db.execute("DELETE FROM messages WHERE chat_id = ?", (chat_id,))
                self.db.execute("DELETE FROM chats WHERE id = ?", (chat_id,))

    # -- messages -----------------------------------------------------------------------------
    def messages(self, chat_id: int) -> list[Message]:
        rows = self.db.execute(f"SELECT {', '.join(_MSG_COLS)} FROM messages WHERE chat_id = ? ORDER BY turn, id",
                               (chat_id,))
        return [_message(r) for r in rows]

    def add_turn(self, chat_id: int, question: Message, answers: list[Message]) -> int:
        """Store a question and its answer(s) (two for a comparison) in one transaction; the turn
        number is taken inside it, so turns written by two processes never collide."""
        now = time.time()
        with self._write():
            turn = self.db.execute("SELECT coalesce(max(turn), 0) + 1 FROM messages WHERE chat_id = ?",
                                   (chat_id,)).fetchone()[0]
            for m in [question, *answers]:
                m.turn, m.created = turn, m.created or now
                values = [getattr(m, c) for c in _MSG_COLS[:-1]]
                values[_MSG_COLS.index("settings")] = json.dumps(m.settings)
                cur = self.db.execute(f"INSERT INTO messages(chat_id, {', '.join(_MSG_COLS[:-1])}) "
                                      f"VALUES (?{', ?' * (len(_MSG_COLS) - 1)})", [chat_id, *values])
                m.id = cur.lastrowid
            self.db.execute("UPDATE chats SET updated = ? WHERE id = ?", (now, chat_id))
        return turn

    def drop_last_turn(self, chat_id: int) -> list[Message]:
        """Remove the last turn (for Regenerate and Edit): its messages, as they were."""
        with self._write():
            turn = self.db.execute("SELECT max(turn) FROM messages WHERE chat_id = ?", (chat_id,)).fetchone()[0]
            if turn is None:
                return []
            rows = self.db.execute(f"SELECT {', '.join(_MSG_COLS)} FROM messages WHERE chat_id = ? AND turn = ? "
                                   "ORDER BY id", (chat_id, turn)).fetchall()
            self.db.execute("DELETE FROM messages WHERE chat_id = ? AND turn = ?", (chat_id, turn))
        return [_message(r) for r in rows]

    def search(self, text: str, task: str | None = None, limit: int = 50) -> list[Chat]:
        """Chats whose messages contain every word of `text` (as word prefixes), or whose name
        contains it; newest first, each with a snippet of a matching message."""
        words = text.split()
        if not words:
            return self.chats(task)
        query = " ".join('"' + w.replace('"', '""') + '"*' for w in words)
        task_sql, args = ("AND c.task = ? ", [task]) if task else ("", [])
        # The newest matching message of each chat, then its snippet (FTS5 functions cannot sit
        # under an aggregate, so the hits are found first and the snippets read for those alone).
        sql = (self._CHAT.replace("FROM chats c", ", hit.mid FROM chats c") +
               "JOIN (SELECT m.chat_id AS chat_id, max(m.id) AS mid FROM messages_fts "
               "JOIN messages m ON m.id = messages_fts.rowid WHERE messages_fts MATCH ? "
               "GROUP BY m.chat_id) hit ON hit.chat_id = c.id "
               f"WHERE c.deleted IS NULL {task_sql}ORDER BY c.updated DESC LIMIT ?")
        found = {}
        for *row, mid in self.db.execute(sql, [query, *args, limit]):
            snip = self.db.execute("SELECT snippet(messages_fts, 0, '[', ']', '…', 8) FROM messages_fts "
                                   "WHERE messages_fts MATCH ? AND rowid = ?", (query, mid)).fetchone()
            found[row[0]] = Chat(*row, snippet=snip[0] if snip else "")
        by_name = self.db.execute(self._CHAT + f"WHERE c.deleted IS NULL AND c.name LIKE ? {task_sql}"
                                  "ORDER BY c.updated DESC LIMIT ?", [f"%{text.strip()}%", *args, limit])
        for r in by_name:
            found.setdefault(r[0], Chat(*r))
        return sorted(found.values(), key=lambda c: -c.updated)[:limit]


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise EngineError(f"the conversation store is busy ({e}) for over {BUSY_MS / 1000:.0f}s; another "
                              "LoRA Desk process is writing it. Try again.") from None
        return self.db

    def __exit__(self, kind, value, tb):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False


_stores: dict[Path, ChatStore] = {}


def open_store() -> ChatStore:
    """The data folder's store, opened once per process (per folder: tests change LORADESK_HOME)."""
    path = store_path()
    if path not in _stores or not path.exists():
        _stores[path] = ChatStore(path)
    return _stores[path]


def folder_hash(folder: str | Path | None) -> str | None:
    """A short hash of an adapter folder's files: the same name with other weights is another adapter."""
    if folder is None or not Path(folder).is_dir():
        return None
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in (".safetensors", ".json", ".gguf"))
    return _hash(tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files))


@lru_cache(maxsize=256)
def _hash(files: tuple) -> str:
    h = hashlib.sha256()
    for path, _mtime, _size in files:
        h.update(Path(path).name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]
