"""A tab's conversation: which stored chat it shows, the transcript of its earlier turns, the
history sidebar, and writing each finished answer to the store (app/chats.py).

The tab shows the latest turn in its own widgets (the question in the input, the answer in its
answer view); the transcript above shows the turns before it, rendered as Markdown once, never
while an answer streams.
"""
from __future__ import annotations

import logging
import time

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QApplication

from app.chats import Chat, ChatStore, Message, folder_hash, open_store
from app.conversation import chat_name, history
from app.ui.history import HistoryPanel
from app.ui.markdown_view import MarkdownView

log = logging.getLogger(__name__)
# Turns drawn above the latest: Qt lays out 5,000 turns of Markdown in ~0.4 s, 50 in a few ms.
TRANSCRIPT_TURNS = 50


def transcript_markdown(messages: list[Message], turns: int = TRANSCRIPT_TURNS) -> str:
    """The last `turns` turns of `messages` as Markdown (a note says how many came before)."""
    numbers = sorted({m.turn for m in messages})
    hidden = numbers[:-turns] if len(numbers) > turns else []
    note = f"*{len(hidden)} earlier turns are not shown here: Export… writes the whole conversation.*"
    out = [note] if hidden else []
    messages = [m for m in messages if not hidden or m.turn > hidden[-1]]
    for m in messages:
        if m.role == "user":
            out.append(f"**You**\n\n{m.content.strip()}")
        else:
            side = f"{'AB'[m.pane - 1]} · " if m.pane else ""
            speed = f" · {m.tps:.1f} tok/s" if m.tps else ""
            out.append(f"**{side}{m.adapter or 'base model'}{speed}**\n\n{m.content.strip()}")
    return "\n\n---\n\n".join(out)


def split_last_turn(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    if not messages:
        return [], []
    last = messages[-1].turn
    return [m for m in messages if m.turn != last], [m for m in messages if m.turn == last]


def removed_adapter_note(task: str, messages: list[Message]) -> str:
    """Said when the adapter that wrote this conversation is no longer stored."""
    from app.store import list_adapters

    used = next((m for m in reversed(messages) if m.role == "assistant" and m.adapter_hash), None)
    if used is None:
        return ""
    stored = {folder_hash(a.path) for a in list_adapters(task)}
    if used.adapter_hash in stored:
        return ""
    return (f"This conversation was answered with the adapter {used.adapter!r} (files {used.adapter_hash}), which is "
            "no longer stored; new answers use this tab's current adapter.")


class ChatSession(QObject):
    opened = Signal()  # another chat (or a new, empty one) is shown

    def __init__(self, task: str, store: ChatStore | None = None, parent=None):
        super().__init__(parent)
        self.task = task
        self.store = store or open_store()
        self.chat: Chat | None = None
        self.messages: list[Message] = []
        self.note = ""  # about the open chat (a removed adapter), for the tab to show
        self.transcript = MarkdownView()
        self.transcript.setObjectName("transcript")
        self.transcript.hide()
        self.panel = HistoryPanel(task, self.store)
        self.panel.open_requested.connect(self.open)
        self.panel.new_requested.connect(self.new)
        self.panel.deleted.connect(self._deleted)

    @property
    def chat_id(self) -> int | None:
        return self.chat.id if self.chat else None

    def earlier(self) -> list[dict]:
        """The conversation so far as chat messages, for the next question."""
        return history(self.messages)

    def last_turn(self) -> list[Message]:
        return split_last_turn(self.messages)[1]

    def open(self, chat_id: int) -> bool:
        chat = self.store.get_id(chat_id)
        if chat is None or chat.task != self.task:
            return False
        self.chat, self.messages = chat, self.store.messages(chat.id)
        self.note = removed_adapter_note(self.task, self.messages)
        self._show()
        self.opened.emit()
        return True

    def open_last(self) -> bool:
        chat = self.store.last_chat(self.task)
        return chat is not None and self.open(chat.id)

    def new(self) -> None:
        self.chat, self.messages, self.note = None, [], ""
        self._show()
        self.opened.emit()

    def record(self, question: str, prompt: str, answers: list[Message]) -> None:
        """Store a finished turn (the question and its answer, or both panes); the earlier turns
        move to the transcript."""
        if self.chat is None:
            self.chat = self.store.create(self.task, chat_name(question))
        q = Message("user", question, prompt=prompt, task=self.task)
        self.store.add_turn(self.chat.id, q, answers)
        self.messages += [q, *answers]
        self._show()

    def drop_last_turn(self) -> list[Message]:
        """For Regenerate and Edit: the last turn leaves the store (and the transcript)."""
        if self.chat is None:
            return []
        dropped = self.store.drop_last_turn(self.chat.id)
        self.messages = self.store.messages(self.chat.id)
        self._show()
        return dropped

    def _show(self) -> None:
        earlier, _last = split_last_turn(self.messages)
        self.transcript.show_markdown(transcript_markdown(earlier))
        self.transcript.setVisible(bool(earlier))
        self.panel.refresh(self.chat_id if self.chat else -1)

    def _deleted(self, chat_id: int) -> None:
        if chat_id == self.chat_id:
            self.new()


def time_tab_open(store: ChatStore, chat_id: int) -> list[float]:
    """Seconds a tab takes to open the chat (read, sidebar, last turns drawn), fresh each time, for
    `loradesk chats bench`."""
    app = QApplication.instance() or QApplication([])  # noqa: F841 - widgets need one
    out = []
    for i in range(8):
        session = ChatSession("summarize", store)
        t = time.perf_counter()
        session.open(chat_id)
        if i:  # the first one also sets up Qt's fonts and text layout, once per process
            out.append(time.perf_counter() - t)
        session.transcript.deleteLater()
        session.panel.deleteLater()
    return out
