"""One tab per task: input, Generate / Stop / Copy, the streamed answer and a status line; beside
it the tab's conversations (app/ui/chat_session.py), whose earlier turns every question carries.

The tab reads everything about its task from the task record (label, example, options,
generation settings) and asks the EngineHost for answers; it never touches the engine itself.
"""
from __future__ import annotations

import logging
import time

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QSizePolicy, QSplitter, QVBoxLayout, QWidget,
)

from app.conversation import TurnsDropped, dropped_note, with_history
from app.tasks import Task
from app.ui.engine_host import EngineHost, Run

log = logging.getLogger(__name__)
RENDER_MS = 50  # streamed text is redrawn at most this often: fast models send hundreds of pieces/s


def fixed_font():
    return QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)


class TaskTab(QWidget):
    """The common tab. Subclasses add options (`add_options`), their own answer view
    (`make_output` / `render`) and several runs per input (`runs`)."""

    adapter_choice_changed = Signal()  # the "No adapter" toggle moved
    generation_finished = Signal(str)  # finish reason ("stop", "length", "cancelled", "error")
    find_adapter_requested = Signal(str)  # task: the "no adapter yet" offer's Hub link
    train_requested = Signal(str)  # task: the offer's Train link
    conversations = True  # a history sidebar and follow-ups (app/ui/chat_session.py)

    def __init__(self, task: Task, host: EngineHost, parent=None):
        super().__init__(parent)
        self.setObjectName(f"tab-{task.name}")
        self.task, self.host = task, host
        self.worker = None
        self.texts: list[str] = []
        self.last_chunk = None
        self.adapter_used: str | None = None
        self.finish_reason: str | None = None
        self._started = 0.0
        self.turns_dropped = 0
        self._question = ("", "", None)  # the question being answered: as typed, as sent, its settings
        self._render_timer = QTimer(self, singleShot=True, interval=RENDER_MS, timeout=self.render)
        self.session = None
        if self.conversations:
            from app.ui.chat_session import ChatSession

            self.session = ChatSession(task.name, parent=self)
            self.session.opened.connect(self.show_last_turn)

        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.add_options(top)
        top.addStretch(1)
        self.no_adapter = QCheckBox("No adapter (base model)")
        self.no_adapter.setToolTip("Answer with the base model alone, to compare with the adapter's answer")
        self.no_adapter.toggled.connect(self.adapter_choice_changed)
        top.addWidget(self.no_adapter)
        layout.addLayout(top)

        self.input = QPlainTextEdit()
        self.input.setObjectName("input")
        self.input.setPlaceholderText(task.example_input)
        self.input.setToolTip("Ctrl+Enter generates. Left empty, the example shown here is used.")

        buttons = QHBoxLayout()
        self.generate_btn = QPushButton("Generate  (Ctrl+Enter)")
        self.generate_btn.setObjectName("primary")
        self.generate_btn.setToolTip("Ctrl+Enter")
        self.stop_btn = QPushButton("Stop  (Esc)")
        self.stop_btn.setEnabled(False)
        self.copy_btn = QPushButton("Copy")
        self.copy_btn.setToolTip("Copy the answer to the clipboard")
        for b in (self.generate_btn, self.stop_btn, self.copy_btn):
            buttons.addWidget(b)
        self.add_buttons(buttons)
        buttons.addStretch(1)
        self.generate_btn.clicked.connect(self.generate)
        self.stop_btn.clicked.connect(self.stop)
        self.copy_btn.clicked.connect(self.copy)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(keys), self, self.generate, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
        QShortcut(QKeySequence("Escape"), self, self.stop, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.stop_btn.setToolTip("Esc")

        self.output = self.make_output()
        self.output.setObjectName("output")

        top_box = QWidget()
        tl = QVBoxLayout(top_box)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.input)
        tl.addLayout(buttons)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        if self.session is not None:
            self.splitter.addWidget(self.session.transcript)  # the earlier turns, above the latest
        self.splitter.addWidget(top_box)
        self.splitter.addWidget(self.output)
        self.add_panes(self.splitter)
        for i in range(self.splitter.count()):
            self.splitter.setStretchFactor(i, 5 if self.splitter.widget(i) is not top_box else 2)
        layout.addWidget(self.splitter, 1)

        self.message = QLabel()
        self.message.setObjectName("error")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        layout.addWidget(self.message)
        # No adapter yet: a ready-made one from the Hub takes a minute, training one takes hours on a CPU.
        self.offer = QLabel(f"No {task.label} adapter yet, so the base model answers. "
                            '<a href="hub">Find one on the Hub</a> or <a href="train">train one</a>.')
        self.offer.setObjectName("adapter-offer")
        self.offer.linkActivated.connect(lambda link: (self.find_adapter_requested if link == "hub"
                                                       else self.train_requested).emit(task.name))
        self.offer.hide()
        layout.addWidget(self.offer)
        self.status = QLabel()
        self.status.setObjectName("status")
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout.addWidget(self.status)
        outer = QHBoxLayout(self)
        if self.session is None:
            outer.setContentsMargins(0, 0, 0, 0)
            outer.addWidget(body)
        else:
            from app.ui.chat_actions import add_chat_actions

            add_chat_actions(self, buttons)
            sides = QSplitter(Qt.Orientation.Horizontal)
            sides.addWidget(self.session.panel)
            sides.addWidget(body)
            sides.setStretchFactor(1, 4)
            sides.setSizes([220, 780])
            outer.setContentsMargins(0, 0, 0, 0)
            outer.addWidget(sides)
        self.update_status()

    # -- hooks for the task's own tab ------------------------------------------------------------
    def add_options(self, row: QHBoxLayout) -> None:
        """Task options left of the "No adapter" toggle."""

    def add_buttons(self, row: QHBoxLayout) -> None:
        """Extra buttons after Copy."""

    def add_panes(self, splitter: QSplitter) -> None:
        """Extra panes under the answer."""

    def make_output(self) -> QWidget:
        from app.ui.markdown_view import MarkdownView

        return MarkdownView()

    def options(self) -> dict[str, str]:
        return {}

    def runs(self, text: str) -> list[Run]:
        return [Run(self.task.messages(text, **self.options()), self.task.generation)]

    def answer_text(self) -> str:
        return "\n\n".join(self.texts)

    def render(self) -> None:
        self.output.show_markdown(self.answer_text())  # called at most every RENDER_MS while streaming

    # -- actions ---------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.worker is not None and not self.worker.done.is_set()

    def wanted_adapter(self) -> str | None:
        return self.host.adapter_for(self.task.name, not self.no_adapter.isChecked())

    def input_text(self) -> str:
        return self.input.toPlainText().strip() or self.task.example_input

    def generate(self) -> None:
        if self.busy:
            return
        self.show_message("")
        if self.host.engine is None or self.host.loading:
            why = "the model is still loading" if self.host.loading else "no model is loaded"
            self.show_message(f"Cannot generate: {why}. Choose a model under Models & adapters.")
            return
        try:
            runs = self.runs(self.input_text())
        except ValueError as e:
            self.show_message(str(e))
            return
        if self.session is not None:  # a follow-up: the whole conversation is its context
            from app.ui import chat_actions

            earlier = chat_actions.context(self)
            runs = [Run(with_history(r.messages, earlier), r.settings, fit_turns=True) for r in runs]
            self._question = (self.input_text(), runs[0].messages[-1]["content"], runs[0].settings)
            if self.compare_btn.isChecked():
                return chat_actions.start_compare(self, runs)
        self.texts = [""] * len(runs)
        self.last_chunk, self.finish_reason, self.turns_dropped = None, None, 0
        self.adapter_used = self.wanted_adapter()
        self._started = time.perf_counter()
        self.render()
        self.set_running(True)
        self.worker = self.host.generate(self.adapter_used, runs, connect={
            "yielded": self.on_chunk, "errored": self.on_error, "finished": self.on_finished}, owner=self)
        self.update_status()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.answer_text())

    def set_running(self, running: bool) -> None:
        self.generate_btn.setEnabled(not running)
        self.stop_btn.setEnabled(running)

    # -- worker signals ------------------------------------------------------------------------
    def on_chunk(self, item) -> None:
        i, chunk = item
        if isinstance(chunk, TurnsDropped):
            self.turns_dropped = chunk.turns
            return
        self.texts[i] += chunk.text
        self.last_chunk = chunk
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
        if not self._render_timer.isActive():
            self._render_timer.start()
        self.update_status()

    def on_error(self, e: Exception) -> None:
        self.finish_reason = "error"
        self.show_message(f"Generation failed: {e}")

    def on_finished(self) -> None:
        if self.worker is not None and self.worker.abort_requested and self.finish_reason != "error":
            self.finish_reason = "cancelled"
        self._render_timer.stop()
        self.render()
        self.set_running(False)
        if self.session is not None and self.finish_reason != "error" and self.answer_text().strip():
            from app.ui.chat_actions import record_answer

            record_answer(self)
        self.update_status()
        self.generation_finished.emit(self.finish_reason or "stop")

    def show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))

    def update_status(self) -> None:
        parts = [self.host.model_label()]
        if self.worker is not None:
            parts.append(f"adapter: {self.adapter_used or 'none (base model)'}")
        else:
            wanted = self.wanted_adapter()
            problem = self.host.problems.get(self.task.name)
            self.offer.setVisible(self.host.engine is not None and not wanted and bool(problem)
                                  and problem.startswith("no adapter for"))
            if wanted:
                parts.append(f"adapter: {wanted}")
            elif self.no_adapter.isChecked():
                parts.append("adapter: none (base model)")
            elif self.host.engine is not None:
                if problem and problem.startswith("no adapter for"):
                    problem = "none yet: train one in the Train tab or add one under Models & adapters"
                parts.append(f"adapter: none ({problem})" if problem else "adapter: none")
        if self.turns_dropped:
            parts.append(dropped_note(self.turns_dropped))
        c = self.last_chunk
        if c is not None and c.truncated_tokens:  # first after the adapter: a long line is clipped on the right
            parts.append(f"input cut to fit the context (its last {c.truncated_tokens} tokens left out)")
        if c is not None:
            if c.generation_tokens:
                parts.append(f"{c.generation_tps:.1f} tok/s")
            if c.time_to_first_token:
                parts.append(f"first token {c.time_to_first_token:.2f} s")
            parts.append(f"{c.generation_tokens} tokens")
        if self.busy:
            parts.append(f"generating… {time.perf_counter() - self._started:.1f} s")
        elif self.finish_reason:
            parts.append({"stop": "done", "length": "stopped at the length limit",
                          "cancelled": "stopped", "error": "failed"}.get(self.finish_reason, self.finish_reason))
        self.status.setText("  ·  ".join(parts))

    def show_last_turn(self) -> None:
        from app.ui.chat_actions import show_last_turn

        show_last_turn(self)

    # -- settings ---------------------------------------------------------------------------------
    def state(self) -> dict:
        chat = {"chat": self.session.chat_id} if self.session is not None and self.session.chat_id else {}
        return {"no_adapter": self.no_adapter.isChecked(), **chat}

    def restore(self, state: dict) -> None:
        self.no_adapter.setChecked(bool(state.get("no_adapter", False)))
        if self.session is not None:  # the tab's last conversation (else the newest of its task)
            if not (state.get("chat") and self.session.open(int(state["chat"]))):
                self.session.open_last()
