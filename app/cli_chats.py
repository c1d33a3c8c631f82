"""Conversations on the command line: `ask --chat NAME` (ChatTurn) and `loradesk chats
list|show|export|delete|bench`. The same store as the app (app/chats.py), so a chat started in one
continues in the other."""
from __future__ import annotations
# The app's layers are imported inside the commands: `loradesk --help` imports this module (app/cli.py)
# and would otherwise pay for numpy, the engines and the Hub (python -X importtime -m app --help).

import importlib
import json
import sys
import time
from dataclasses import dataclass

from app.chats import Chat, ChatStore, Message, folder_hash, open_store
from app.conversation import (
    chat_name, drop_old_turns, dropped_note, history, settings_record, to_json, to_markdown, with_history,
)


def register(sub, common):
    c = sub.add_parser("chats", help="stored conversations (the app's and ask --chat's): list, show, export, delete")
    csub = c.add_subparsers(dest="chats_command", metavar="ACTION", required=True)
    lp = csub.add_parser("list", help="name, task, turns and last time of each conversation, newest first")
    lp.add_argument("--task", help="only this task's conversations")
    lp.add_argument("--search", metavar="WORDS", help="only conversations whose messages contain these words")
    lp.add_argument("--json", action="store_true", help="JSON for scripts")
    lp.set_defaults(func=cmd_list)
    for verb, text, func in (("show", "print a conversation", cmd_show),
                             ("export", "print a conversation as Markdown", cmd_export),
                             ("delete", "delete a conversation", cmd_delete)):
        p = csub.add_parser(verb, help=text)
        p.add_argument("name")
        p.add_argument("--json", action="store_true", help="JSON for scripts")
        p.set_defaults(func=func)
    bp = csub.add_parser("bench", help="time opening and searching a long conversation (a throwaway store)")
    bp.add_argument("--messages", type=int, default=10_000)
    bp.set_defaults(func=cmd_bench)


def _store() -> ChatStore:
    store = open_store()
    if store.notice:
        print(f"note: {store.notice}", file=sys.stderr)
        store.notice = None
    return store


@dataclass
class ChatTurn:
    """One `ask --chat` call: the stored conversation (None until its first answer) and its history."""

    store: ChatStore
    name: str
    chat: Chat | None
    earlier: list[dict]

    @classmethod
    def open(cls, args) -> "ChatTurn":
        store = _store()
        chat = store.get(args.chat)
        if chat is not None:
            if args.task not in (None, "auto", chat.task):
                raise ValueError(f"conversation {chat.name!r} is a {chat.task} conversation; leave out --task "
                                 f"(it is remembered) or start another with a new --chat NAME")
            from app.tasks import task_names

            # With --mix too the prompt stays the conversation's task's; Auto's general chat routes again.
            args.task = chat.task if chat.task in task_names() else "auto"
        earlier = history(store.messages(chat.id)) if chat else []
        return cls(store, args.chat, chat, earlier)

    def messages(self, messages: list[dict]) -> list[dict]:
        return with_history(messages, self.earlier)

    def fit(self, engine, messages: list[dict], max_tokens: int) -> list[dict]:
        messages, dropped = drop_old_turns(engine, messages, max_tokens)
        if dropped:
            print(f"note: {dropped_note(dropped)}", file=sys.stderr)
        return messages

    def save(self, text: str, plan, engine, settings, answer: str, last) -> None:
        """Written once the answer has finished: the question and the answer in one transaction."""
        if self.chat is None:
            self.chat = self.store.create(plan.task or "chat", self.name or chat_name(text))
        active = engine.active
        folder = engine.adapters[active].path if active in engine.adapters else None
        question = Message("user", text, prompt=plan.messages[-1]["content"], task=plan.task)
        reply = Message("assistant", answer, task=plan.task, adapter=active, adapter_hash=folder_hash(folder),
                        model=str(engine.model_info.ref), settings=settings_record(settings),
                        tps=last.generation_tps if last else 0.0, finish=last.finish_reason if last else None)
        self.store.add_turn(self.chat.id, question, [reply])


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def cmd_list(args) -> int:
    store = _store()
    chats = store.search(args.search, args.task) if args.search else store.chats(args.task)
    if args.json:
        print(json.dumps([{"name": c.name, "task": c.task, "turns": c.turns, "created": c.created,
                           "updated": c.updated, **({"snippet": c.snippet} if args.search else {})}
                          for c in chats], ensure_ascii=False, indent=1))
        return 0
    if not chats:
        print("no conversations yet (loradesk ask --chat NAME ..., or the app's tabs)")
        return 0
    cut = lambda name: name if len(name) <= 40 else name[:39] + "…"  # noqa: E731 - `show` prints it whole
    width = max(len(cut(c.name)) for c in chats)
    print(f"{'name':{width}}  {'task':10}  turns  last")
    for c in chats:
        print(f"{cut(c.name):{width}}  {c.task:10}  {c.turns:5}  {_when(c.updated)}")
    return 0


def cmd_show(args) -> int:
    store = _store()
    chat = store.find(args.name)
    messages = store.messages(chat.id)
    if args.json:
        print(json.dumps(to_json(chat, messages), ensure_ascii=False, indent=1))
        return 0
    print(f"{chat.name}  ({chat.task}, {chat.turns} turns, last {_when(chat.updated)})")
    for m in messages:
        if m.role == "user":
            print(f"\n> {m.content.strip()}")
        else:
            side = f"[pane {m.pane}] " if m.pane else ""
            speed = f", {m.tps:.1f} tok/s" if m.tps else ""
            print(f"\n{side}[{m.adapter or 'base model'}{speed}]\n{m.content.strip()}")
    return 0


def cmd_export(args) -> int:
    store = _store()
    chat = store.find(args.name)
    messages = store.messages(chat.id)
    print(json.dumps(to_json(chat, messages), ensure_ascii=False, indent=1) if args.json
          else to_markdown(chat, messages), end="" if not args.json else "\n")
    return 0


def cmd_delete(args) -> int:
    store = _store()
    chat = store.find(args.name)
    store.delete(chat.id)
    said = f"deleted conversation {chat.name!r} ({chat.turns} turns)"
    print(json.dumps({"deleted": chat.name}) if args.json else said)
    return 0


def cmd_bench(args) -> int:
    """Build a throwaway store with one conversation of N messages, then time opening it (connect,
    read every message, build the follow-up context) and searching it; best and median of 7."""
    import statistics
    import tempfile
    from pathlib import Path

    words = ("harbour lantern copper meadow violin glacier pepper orbit quartz saddle thimble walnut "
             "falcon ember tundra").split()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chats.db"
        store = ChatStore(path)
        chat = store.create("summarize", "benchmark")
        t = time.perf_counter()
        for i in range(args.messages // 2):
            w = [words[(i * k) % len(words)] for k in (1, 3, 7)]
            store.add_turn(chat.id, Message("user", f"Question {i}: tell me about the {w[0]} and the {w[1]}."),
                           [Message("assistant", f"Answer {i}: the {w[1]} sits beside the {w[2]}. " * 4, tps=20.0)])
        build = time.perf_counter() - t
        store.close()

        def time_open() -> float:
            t = time.perf_counter()
            s = ChatStore(path)
            c = s.get("benchmark")
            history(s.messages(c.id))
            out = time.perf_counter() - t
            s.close()
            return out

        opens = [time_open() for _ in range(7)]
        store = ChatStore(path)
        store.messages(chat.id)  # warm, as the app's open store is
        searches = []
        for query in ("quartz", "Question 4321", "walnut falcon", "nothingmatches"):
            for _ in range(7):
                t = time.perf_counter()
                store.search(query)
                searches.append(time.perf_counter() - t)
        app_opens = _time_app_open(store, chat.id)
        n = len(store.messages(chat.id))
        size = path.stat().st_size + Path(str(path) + "-wal").stat().st_size
        store.close()
    ms = lambda xs: f"best {min(xs) * 1000:.1f} ms, median {statistics.median(xs) * 1000:.1f} ms"  # noqa: E731
    print(f"conversation of {n} messages ({size / 1e6:.1f} MB on disk; written in {build:.1f} s, "
          "one transaction a turn)")
    print(f"open (connect, read every message, build the context): {ms(opens)}")
    print(f"search (FTS5, 4 queries x 7):                          {ms(searches)}")
    if app_opens:
        print(f"open in a tab (read, sidebar, last 50 turns drawn):   {ms(app_opens)}")
    return 0


def _time_app_open(store: ChatStore, chat_id: int) -> list[float]:
    """A tab opening the chat (app/ui/chat_session.py), fresh each time; [] without Qt. The GUI sits
    above the command line, so it is found by name, as app.cli finds its optional command modules."""
    import os

    try:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        time_tab_open = importlib.import_module("app.ui.chat_session").time_tab_open
    except ImportError:
        return []
    return time_tab_open(store, chat_id)
