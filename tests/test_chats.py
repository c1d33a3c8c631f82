"""The conversation store (app/chats.py): persistence, search, undoable delete, a damaged or locked
file, and two writers at once."""
from __future__ import annotations

import sqlite3
import threading

from app.chats import ChatStore, Message, folder_hash, open_store, store_path
from app.jsonfile import pop_notices


def turn(store, chat, q, a, **kw):
    return store.add_turn(chat.id, Message("user", q), [Message("assistant", a, **kw)])


def test_turns_persist_across_a_reopen_with_their_facts():
    store = ChatStore()
    chat = store.create("math", "Sums")
    turn(store, chat, "What is 2+2?", "4", adapter="math", adapter_hash="abc", model="m", tps=12.5,
         settings={"max_tokens": 8}, finish="stop")
    turn(store, chat, "And times 3?", "12")
    store.close()

    again = ChatStore()
    c = again.get("Sums")
    assert c.task == "math" and c.turns == 2
    msgs = again.messages(c.id)
    assert [(m.role, m.content, m.turn) for m in msgs] == [
        ("user", "What is 2+2?", 1), ("assistant", "4", 1), ("user", "And times 3?", 2), ("assistant", "12", 2)]
    a = msgs[1]
    assert (a.adapter, a.adapter_hash, a.model, a.tps, a.settings, a.finish) == ("math", "abc", "m", 12.5,
                                                                                 {"max_tokens": 8}, "stop")
    assert a.created > 0


def test_newest_first_unique_names_and_rename():
    store = ChatStore()
    a = store.create("code", "Sort a list")
    b = store.create("code", "Sort a list")
    assert b.name == "Sort a list (2)"
    turn(store, a, "q", "x")  # written last: now the newest
    assert [c.id for c in store.chats("code")] == [a.id, b.id]
    assert store.chats("math") == []
    assert store.last_chat("code").id == a.id
    store.rename(b.id, "Heaps")
    assert store.get("Heaps").id == b.id
    try:
        store.rename(a.id, "Heaps")
    except ValueError as e:
        assert "already a conversation named 'Heaps'" in str(e)
    else:
        raise AssertionError("a duplicate name was accepted")


def test_search_finds_words_across_conversations_with_a_snippet():
    store = ChatStore()
    one = store.create("summarize", "Harbour")
    two = store.create("code", "Parser")
    turn(store, one, "Summarize: the lighthouse keeper rowed out at dawn.", "A keeper rows out.")
    turn(store, two, "Write a tokenizer", "def tokenize(text): return text.split()")
    hits = store.search("lighthouse")
    assert [c.id for c in hits] == [one.id] and "[lighthouse]" in hits[0].snippet
    assert [c.id for c in store.search("tokeni")] == [two.id]  # a word's start is enough
    assert [c.id for c in store.search("keeper dawn")] == [one.id]  # every word
    assert store.search("keeper tokenize") == []
    assert [c.id for c in store.search("pars")] == [two.id]  # the name too
    assert store.search("lighthouse", task="code") == []
    assert store.search('"unbalanced quote') == []  # user text is never FTS syntax


def test_delete_with_undo_then_purge():
    store = ChatStore()
    chat = store.create("math", "Gone")
    turn(store, chat, "q", "a")
    store.delete(chat.id, undo=True)
    assert store.get("Gone") is None and store.chats() == []
    store.restore(chat.id)
    assert store.get("Gone").turns == 1
    store.delete(chat.id, undo=True)
    store.purge(older_than=0)
    store.restore(chat.id)
    assert store.get("Gone") is None
    assert store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    assert store.search("q") == []


def test_drop_last_turn_returns_it():
    store = ChatStore()
    chat = store.create("math", "c")
    turn(store, chat, "first", "1")
    turn(store, chat, "second", "2")
    dropped = store.drop_last_turn(chat.id)
    assert [m.content for m in dropped] == ["second", "2"]
    assert [m.content for m in store.messages(chat.id)] == ["first", "1"]
    assert store.search("second") == []  # the index follows


def test_a_damaged_file_is_kept_aside_and_a_new_store_starts():
    path = store_path()
    path.write_bytes(b"this is not an SQLite database at all" * 100)
    pop_notices()
    store = ChatStore()
    assert store.chats() == []
    kept = [p for p in path.parent.iterdir() if p.name.startswith("chats.db.damaged-")]
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not")
    assert "was damaged" in store.notice and kept[0].name in store.notice
    assert store.notice in pop_notices()
    turn(store, store.create("math", "fresh"), "q", "a")
    assert ChatStore().get("fresh").turns == 1


def test_a_locked_file_is_kept_aside():
    ChatStore().close()
    holder = sqlite3.connect(store_path(), isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store = ChatStore(busy_ms=200)
        assert "locked" in store.notice
        turn(store, store.create("math", "after"), "q", "a")
        assert store.get("after").turns == 1
    finally:
        holder.close()


def test_two_writers_at_once_lose_nothing():
    path = store_path()
    chat = ChatStore(path).create("math", "shared")
    n = 60

    def writer(tag):
        store = ChatStore(path)  # its own connection, as a second process has
        for i in range(n):
            store.add_turn(chat.id, Message("user", f"{tag} q{i}"), [Message("assistant", f"{tag} a{i}")])
        store.close()

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("app", "cli")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    msgs = ChatStore(path).messages(chat.id)
    assert len(msgs) == 4 * n
    turns = {}
    for m in msgs:
        turns.setdefault(m.turn, []).append(m.content)
    assert len(turns) == 2 * n  # every turn numbered once, its question and answer together
    assert all(q.split()[0] == a.split()[0] and q[-1] == a[-1] for q, a in turns.values())


def test_open_store_is_per_data_folder(tmp_path, monkeypatch):
    first = open_store()
    assert open_store() is first
    monkeypatch.setenv("LORADESK_HOME", str(tmp_path / "other"))
    assert open_store() is not first and open_store().path == tmp_path / "other" / "chats.db"


def test_folder_hash_changes_with_the_weights(tmp_path):
    (tmp_path / "adapters.safetensors").write_bytes(b"a" * 100)
    h = folder_hash(tmp_path)
    assert h == folder_hash(tmp_path) and len(h) == 12
    (tmp_path / "adapters.safetensors").write_bytes(b"b" * 101)
    assert folder_hash(tmp_path) != h
    assert folder_hash(tmp_path / "missing") is None
