"""A task tab's conversation actions: Compare, Regenerate, Edit and resend, Export, New chat
(Ctrl+N), and storing each finished answer. Functions of the tab (app/ui/task_tab.py), kept here
so the tab stays about one answer."""
from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QFileDialog, QPushButton

from app.chats import Message, folder_hash
from app.conversation import settings_record, to_markdown


def add_chat_actions(tab, buttons) -> None:
    """The buttons after Copy, the Compare panes under the answer, and Ctrl+N."""
    from app.ui.compare import ComparePanel

    tab.compare_btn = QPushButton("Compare")
    tab.compare_btn.setCheckable(True)
    tab.compare_btn.setToolTip("Answer twice, side by side: choose each pane's adapter (base model, this task's "
                               "adapter, another stored one, or a mix); both answers are kept in the conversation")
    tab.regen_btn = QPushButton("Regenerate")
    tab.regen_btn.setToolTip("Answer the last question again (the old answer is replaced)")
    tab.edit_btn = QPushButton("Edit")
    tab.edit_btn.setToolTip("Put the last question back in the input; Generate then replaces that turn")
    tab.export_btn = QPushButton("Export…")
    tab.export_btn.setToolTip("Save this conversation as Markdown")
    i = buttons.count() - 1 if buttons.count() and buttons.itemAt(buttons.count() - 1).spacerItem() else buttons.count()
    for b in (tab.compare_btn, tab.regen_btn, tab.edit_btn, tab.export_btn):
        buttons.insertWidget(i, b)
        i += 1
    tab.compare = ComparePanel(tab)
    tab.splitter.addWidget(tab.compare)
    tab.compare.hide()
    tab.editing = False
    tab.compare_btn.toggled.connect(lambda on: set_compare(tab, on))
    tab.compare.finished.connect(lambda reason: _compare_finished(tab, reason))
    tab.regen_btn.clicked.connect(lambda: regenerate(tab))
    tab.edit_btn.clicked.connect(lambda: edit(tab))
    tab.export_btn.clicked.connect(lambda: _export_dialog(tab))
    QShortcut(QKeySequence("Ctrl+N"), tab, lambda: new_chat(tab), context=Qt.ShortcutContext.WidgetWithChildrenShortcut)


def set_compare(tab, on: bool) -> None:
    if on:
        tab.compare.refresh_choices()
    tab.compare.setVisible(on)
    tab.output.setVisible(not on)


def context(tab) -> list[dict]:
    """The earlier turns for the question being sent; an Edit replaces the last one."""
    if tab.editing:
        tab.editing = False
        tab.session.drop_last_turn()
    return tab.session.earlier()


def start_compare(tab, runs) -> None:
    try:
        tab.compare.start(tab._question[0], runs)
    except ValueError as e:
        tab.show_message(str(e))
        return
    tab.worker = tab.compare.worker
    tab.adapter_used = "A and B side by side (below)"
    tab.last_chunk, tab.finish_reason, tab.turns_dropped = None, None, 0
    tab._started = time.perf_counter()
    tab.set_running(True)
    tab.update_status()


def _compare_finished(tab, reason: str) -> None:
    tab.finish_reason = reason
    tab.set_running(False)
    tab.update_status()
    tab.generation_finished.emit(reason)


def record_answer(tab) -> None:
    """Store the finished (or stopped) answer with its question: written now, so a crash later
    loses nothing of it."""
    engine = tab.host.engine
    c = tab.last_chunk
    name = tab.adapter_used
    info = engine.adapters.get(name) if engine is not None and isinstance(name, str) else None
    text, prompt, settings = tab._question
    answer = Message("assistant", tab.answer_text(), task=tab.task.name, adapter=name,
                     adapter_hash=folder_hash(info.path) if info else None,
                     model=str(engine.model_info.ref) if engine is not None and engine.model_info else "",
                     settings=settings_record(settings) if settings else {},
                     tps=c.generation_tps if c is not None else 0.0, finish=tab.finish_reason)
    tab.session.record(text or tab.input_text(), prompt, [answer])


def show_last_turn(tab) -> None:
    """The opened chat's latest turn in the tab's own widgets (question, answer or both panes)."""
    last = tab.session.last_turn()
    question = next((m.content for m in last if m.role == "user"), "")
    answers = [m for m in last if m.role == "assistant"]
    tab.editing = False
    tab.input.setPlainText(question)
    tab.texts = [answers[0].content] if answers else []
    tab.last_chunk, tab.finish_reason, tab.turns_dropped = None, None, 0
    tab.adapter_used = answers[0].adapter if answers else None
    tab.render()
    panes = [m for m in answers if m.pane]
    if panes:
        tab.compare.show_turn(panes)
    tab.compare_btn.setChecked(bool(panes))
    tab.show_message(tab.session.note)
    tab.update_status()


def regenerate(tab) -> None:
    if tab.busy or not tab.session.last_turn():
        return
    question = next((m.content for m in tab.session.last_turn() if m.role == "user"), "")
    tab.input.setPlainText(question)
    tab.editing = True  # the new answer replaces the last turn
    tab.generate()


def edit(tab) -> None:
    if tab.busy or not tab.session.last_turn():
        return
    tab.editing = True
    tab.input.setFocus()
    tab.show_message("Edit the question, then Generate: the new answer replaces the last turn.")


def new_chat(tab) -> None:
    if tab.busy:
        tab.stop()
    tab.session.new()
    tab.input.setFocus()


def export_markdown(tab, path: str | Path) -> Path:
    chat = tab.session.chat
    if chat is None:
        raise ValueError("nothing to export yet: this conversation has no answer")
    path = Path(path)
    path.write_text(to_markdown(tab.session.store.get_id(chat.id) or chat, tab.session.messages), encoding="utf-8")
    return path


def _export_dialog(tab) -> None:
    if tab.session.chat is None:
        tab.show_message("Nothing to export yet: generate an answer first.")
        return
    safe = "".join(ch if ch.isalnum() or ch in " -_" else "_" for ch in tab.session.chat.name).strip() or "chat"
    path, _ = QFileDialog.getSaveFileName(tab, "Export conversation", str(Path.home() / f"{safe}.md"),
                                          "Markdown (*.md)")
    if path:
        try:
            export_markdown(tab, path)
            tab.show_message(f"Exported to {path}")
        except OSError as e:
            tab.show_message(f"Could not export: {e}")
