"""A tab's conversation list: newest first, full-text search over every conversation, New chat
(Ctrl+N), rename in place, and delete with a few seconds to undo."""
from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget,
)

from app.chats import UNDO_SECONDS, Chat, ChatStore

CHAT_ID = Qt.ItemDataRole.UserRole
CHAT_TASK = Qt.ItemDataRole.UserRole + 1


def when(t: float) -> str:
    """'14:05' today, else 'Mar 3'."""
    now = time.localtime()
    then = time.localtime(t)
    return time.strftime("%H:%M" if then[:3] == now[:3] else "%b %d", then)


class HistoryPanel(QWidget):
    open_requested = Signal(int)  # chat id, of this tab's task
    open_elsewhere = Signal(str, int)  # task, chat id: a search hit in another task's conversations
    new_requested = Signal()
    deleted = Signal(int)  # chat id, hidden now (Undo brings it back)

    def __init__(self, task: str, store: ChatStore, parent=None):
        super().__init__(parent)
        self.setObjectName("history")
        self.task, self.store = task, store
        self.current: int | None = None
        self._undo_id: int | None = None
        self._filling = False
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 4, 0)
        self.new_btn = QPushButton("New chat  (Ctrl+N)")
        self.new_btn.clicked.connect(self.new_requested)
        lay.addWidget(self.new_btn)
        self.search = QLineEdit()
        self.search.setObjectName("chat-search")
        self.search.setPlaceholderText("Search all conversations")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(lambda _t: self.refresh())
        lay.addWidget(self.search)
        self.list = QListWidget()
        self.list.setObjectName("chat-list")
        self.list.setWordWrap(True)
        self.list.itemActivated.connect(self._activated)
        self.list.itemClicked.connect(self._activated)
        self.list.itemChanged.connect(self._renamed)
        lay.addWidget(self.list, 1)
        row = QHBoxLayout()
        self.rename_btn = QPushButton("Rename")
        self.rename_btn.setToolTip("Rename the selected conversation (F2)")
        self.rename_btn.clicked.connect(self.start_rename)
        self.delete_btn = QPushButton("Delete")
        self.delete_btn.clicked.connect(self.delete_selected)
        row.addWidget(self.rename_btn)
        row.addWidget(self.delete_btn)
        lay.addLayout(row)
        self.undo_bar = QWidget()
        ub = QHBoxLayout(self.undo_bar)
        ub.setContentsMargins(0, 0, 0, 0)
        self.undo_label = QLabel()
        self.undo_label.setWordWrap(True)
        self.undo_btn = QPushButton("Undo")
        self.undo_btn.clicked.connect(self.undo_delete)
        ub.addWidget(self.undo_label, 1)
        ub.addWidget(self.undo_btn)
        self.undo_bar.hide()
        lay.addWidget(self.undo_bar)
        self._purge_timer = QTimer(self, singleShot=True, interval=int(UNDO_SECONDS * 1000), timeout=self._purge)
        QShortcut(QKeySequence("F2"), self.list, self.start_rename, context=Qt.ShortcutContext.WidgetShortcut)
        QShortcut(QKeySequence.StandardKey.Delete, self.list, self.delete_selected,
                  context=Qt.ShortcutContext.WidgetShortcut)
        self.refresh()

    # -- the list ---------------------------------------------------------------------------
    def chats(self) -> list[Chat]:
        text = self.search.text().strip()
        return self.store.search(text) if text else self.store.chats(self.task)

    def refresh(self, current: int | None = None) -> None:
        if current is not None:
            self.current = current
        self._filling = True
        self.list.clear()
        for chat in self.chats():
            other = chat.task != self.task
            label = f"{chat.name}\n{chat.turns} turn{'s' if chat.turns != 1 else ''} · {when(chat.updated)}"
            if other:
                label = f"[{chat.task}] {label}"
            if chat.snippet:
                label += f"\n{chat.snippet}"
            item = QListWidgetItem(label)
            item.setData(CHAT_ID, chat.id)
            item.setData(CHAT_TASK, chat.task)
            item.setToolTip(chat.name)
            if not other:
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            self.list.addItem(item)
            if chat.id == self.current:
                self.list.setCurrentItem(item)
        self._filling = False

    def ids(self) -> list[int]:
        return [self.list.item(i).data(CHAT_ID) for i in range(self.list.count())]

    def item_for(self, chat_id: int) -> QListWidgetItem | None:
        return next((self.list.item(i) for i in range(self.list.count())
                     if self.list.item(i).data(CHAT_ID) == chat_id), None)

    def _activated(self, item: QListWidgetItem) -> None:
        chat_id, task = item.data(CHAT_ID), item.data(CHAT_TASK)
        if task != self.task:
            self.open_elsewhere.emit(task, chat_id)
        elif chat_id != self.current:
            self.open_requested.emit(chat_id)

    # -- rename -------------------------------------------------------------------------------
    def start_rename(self) -> None:
        item = self.list.currentItem()
        if item is not None and item.flags() & Qt.ItemFlag.ItemIsEditable:
            chat = self.store.get_id(item.data(CHAT_ID))
            self._filling = True
            item.setText(chat.name if chat else item.text())  # edit the name alone, not the details
            self._filling = False
            self.list.editItem(item)

    def _renamed(self, item: QListWidgetItem) -> None:
        if self._filling:
            return
        name = item.text().split("\n")[0]
        try:
            self.store.rename(item.data(CHAT_ID), name)
            self.undo_label.setText("")
        except ValueError as e:
            self.undo_label.setText(str(e))
        QTimer.singleShot(0, self.refresh)  # not inside the item's own signal

    # -- delete and undo -----------------------------------------------------------------------
    def delete_selected(self) -> None:
        item = self.list.currentItem()
        if item is not None and item.data(CHAT_TASK) == self.task:
            self.delete(item.data(CHAT_ID))

    def delete(self, chat_id: int) -> None:
        self._purge()  # an earlier deletion can no longer be undone
        chat = self.store.get_id(chat_id)
        self.store.delete(chat_id, undo=True)
        self._undo_id = chat_id
        self.undo_label.setText(f"Deleted “{chat.name if chat else chat_id}”.")
        self.undo_bar.show()
        self._purge_timer.start()
        self.refresh()
        self.deleted.emit(chat_id)

    def undo_delete(self) -> None:
        if self._undo_id is None:
            return
        chat_id, self._undo_id = self._undo_id, None
        self._purge_timer.stop()
        self.store.restore(chat_id)
        self.undo_bar.hide()
        self.refresh()
        self.open_requested.emit(chat_id)

    def _purge(self) -> None:
        if self._undo_id is not None:
            self._undo_id = None
            self.store.purge(older_than=0)
        self.undo_bar.hide()
