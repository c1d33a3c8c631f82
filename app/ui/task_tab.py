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
    QCheckBox, QComboBox, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QSizePolicy, QSpinBox,
    QSplitter, QVBoxLayout, QWidget,
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
            "yielded": self.on_chunk, "errored": self.on_error, "finished": self.on_finished})
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


class SummarizeTab(TaskTab):
    def add_options(self, row):
        row.addWidget(QLabel("Length:"))
        self.length = QComboBox()
        self.length.setObjectName("length")
        # Shortest first reads naturally; the record's first choice stays the default.
        choices = self.task.option_choices("length")
        order = {"short": 0, "medium": 1, "long": 2}
        for c in sorted(choices, key=lambda c: order.get(c, 9)):
            self.length.addItem(c, c)
        self.length.setCurrentIndex(self.length.findData(choices[0]))
        row.addWidget(self.length)

    def options(self):
        return {"length": self.length.currentData()}

    def state(self):
        return {**super().state(), "length": self.length.currentData()}

    def restore(self, state):
        super().restore(state)
        i = self.length.findData(state.get("length"))
        if i >= 0:
            self.length.setCurrentIndex(i)


class ParaphraseTab(TaskTab):
    VARIANT_TEMPERATURE = 0.8  # variants 2..n sample; variant 1 is the task's greedy answer

    def add_options(self, row):
        row.addWidget(QLabel("Variants:"))
        self.variants = QSpinBox()
        self.variants.setObjectName("variants")
        self.variants.setRange(1, 5)
        self.variants.setToolTip("Variant 1 is the greedy answer; the others are sampled "
                                 f"(temperature {self.VARIANT_TEMPERATURE}, a different seed each)")
        row.addWidget(self.variants)

    def runs(self, text):
        messages = self.task.messages(text)
        base = self.task.generation
        out = [Run(messages, base)]
        for i in range(2, self.variants.value() + 1):
            out.append(Run(messages, base.replace(temperature=self.VARIANT_TEMPERATURE, top_p=0.95, seed=1000 + i)))
        return out

    def answer_text(self):
        if len(self.texts) <= 1:
            return super().answer_text()
        return "\n\n".join(f"Variant {i + 1}:\n{t.strip()}" for i, t in enumerate(self.texts))

    def make_output(self):
        from PySide6.QtWidgets import QTextBrowser

        return QTextBrowser()

    def render(self):
        import html

        if len(self.texts) <= 1:
            body = html.escape(self.answer_text()).replace("\n", "<br>")
        else:
            body = "".join(
                f'<p style="margin-bottom:2px;"><b style="color:#1d4ed8;">Variant {i + 1}</b>'
                f'<span style="color:#6b7280;"> · {"greedy" if i == 0 else "sampled"}</span></p>'
                f'<p style="margin-top:0;">{html.escape(t.strip()).replace(chr(10), "<br>") or "…"}</p>'
                for i, t in enumerate(self.texts))
        self.output.setHtml(body)

    def state(self):
        return {**super().state(), "variants": self.variants.value()}

    def restore(self, state):
        super().restore(state)
        self.variants.setValue(int(state.get("variants", 1)))


class MathTab(TaskTab):
    def make_output(self):
        from app.ui.math_view import MathView

        return MathView()

    def render(self):
        self.output.set_answer(self.answer_text())

    def update_status(self):
        super().update_status()
        from app.ui.math_view import summary

        out = getattr(self, "output", None)
        note = summary(out.checked, out.wrong) if out is not None else ""
        if note and not self.busy:
            self.status.setText(self.status.text() + "  ·  " + note)


def make_tab(task: Task, host: EngineHost) -> TaskTab:
    from app.ui.code_tab import CodeTab

    kinds = {"math": MathTab, "code": CodeTab, "summarize": SummarizeTab, "paraphrase": ParaphraseTab}
    return kinds.get(task.name, TaskTab)(task, host)
