"""Side by side: one prompt answered twice, one pane after the other on the one engine, each pane
with its own adapter (base model, this task's adapter, another stored adapter of the task, or a
mix) and its own tokens/s. Both answers are stored in the conversation as one turn (panes 1, 2).

The two runs are one engine job (engine_host.generation_job): each activates its own adapter under
the engine's lock before it streams, so a pane's tokens never come from the other pane's adapter.
"""
from __future__ import annotations

import time
from dataclasses import replace

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QLineEdit, QSplitter, QVBoxLayout, QWidget

from app.chats import Message, folder_hash
from app.conversation import TurnsDropped, dropped_note, settings_record
from app.ui.engine_host import Run
from app.ui.markdown_view import MarkdownView

BASE, TASK, STORED, MIX = "base", "task", "stored", "mix"


def adapter_choices(task: str, resident: dict) -> list[tuple[str, tuple]]:
    """(label, (kind, name, folder)) for a pane's menu: the base model, the task's adapter in use,
    every other stored adapter of the task, and a mix."""
    from app.store import current, list_adapters

    out = [("Base model (no adapter)", (BASE, None, None))]
    using = current(task)
    if task in resident:
        out.append((f"This task's adapter ({using.name if using else task})", (TASK, task, None)))
    for a in list_adapters(task):
        if using is None or a.name != using.name:
            out.append((f"Stored adapter: {a.name}", (STORED, f"{task}@{a.name}", str(a.path))))
    out.append(("Mix of adapters…", (MIX, None, None)))
    return out


class Pane(QWidget):
    def __init__(self, number: int, parent=None):
        super().__init__(parent)
        self.number = number
        self.setObjectName(f"pane-{number}")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel(f"<b>{'AB'[number - 1]}</b>"))
        self.choice = QComboBox()
        self.choice.setObjectName("pane-adapter")
        self.choice.currentIndexChanged.connect(self._choice_changed)
        row.addWidget(self.choice, 1)
        self.mix = QLineEdit()
        self.mix.setPlaceholderText("math=0.5,code=0.5")
        self.mix.hide()
        row.addWidget(self.mix, 1)
        lay.addLayout(row)
        self.view = MarkdownView()
        lay.addWidget(self.view, 1)
        self.status = QLabel()
        self.status.setObjectName("pane-status")
        lay.addWidget(self.status)
        self.text = ""
        self.last = None
        self.adapter: object = None  # what this pane's answer used (name, mix or None)

    def _choice_changed(self) -> None:
        data = self.choice.currentData()
        self.mix.setVisible(bool(data) and data[0] == MIX)

    def fill(self, choices: list[tuple[str, tuple]], prefer: str) -> None:
        kept = self.choice.currentData()
        self.choice.blockSignals(True)
        self.choice.clear()
        for label, data in choices:
            self.choice.addItem(label, data)
        i = next((j for j, (_l, d) in enumerate(choices) if d == kept), None)
        if i is None:
            i = next((j for j, (_l, d) in enumerate(choices) if d[0] == prefer), 0)
        self.choice.setCurrentIndex(i)
        self.choice.blockSignals(False)
        self._choice_changed()

    def select(self, kind: str, name: str | None = None) -> None:
        for i in range(self.choice.count()):
            data = self.choice.itemData(i)
            if data[0] == kind and (name is None or data[1] == name):
                self.choice.setCurrentIndex(i)
                return
        raise ValueError(f"pane {self.number}: no choice {kind} {name or ''}")

    def run_adapter(self) -> tuple[object, str | None]:
        """(the engine's adapter argument, the folder to load it from)."""
        kind, name, folder = self.choice.currentData()
        if kind == MIX:
            from app.engine.mix import parse

            return parse(self.mix.text() or self.mix.placeholderText(), f"pane {'AB'[self.number - 1]}'s mix"), None
        return name, folder

    def show_answer(self, text: str, status: str) -> None:
        self.text = text
        self.view.show_markdown(text)
        self.status.setText(status)


def label_of(adapter) -> str | None:
    if isinstance(adapter, dict):
        from app.engine.mix import label

        return label(adapter)
    return adapter


class ComparePanel(QWidget):
    finished = Signal(str)  # finish reason of the second pane (or the error)

    def __init__(self, tab, parent=None):
        super().__init__(parent)
        self.setObjectName("compare")
        self.tab = tab
        self.worker = None
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        split = QSplitter(Qt.Orientation.Horizontal)
        self.panes = [Pane(1), Pane(2)]
        for p in self.panes:
            split.addWidget(p)
        lay.addWidget(split, 1)

    def refresh_choices(self) -> None:
        engine = self.tab.host.engine
        choices = adapter_choices(self.tab.task.name, engine.adapters if engine else {})
        self.panes[0].fill(choices, BASE)
        self.panes[1].fill(choices, TASK)

    @property
    def busy(self) -> bool:
        return self.worker is not None and not self.worker.done.is_set()

    def start(self, text: str, runs: list[Run]) -> None:
        """Answer `runs[0]` (the tab's prompt, with the conversation) once per pane."""
        run = runs[0]
        self.question, self.prompt = text, run.messages[-1]["content"]
        pane_runs = []
        for p in self.panes:
            adapter, folder = p.run_adapter()  # a bad mix raises ValueError before anything runs
            pane_runs.append(replace(run, adapter=adapter, folder=folder))
        for p, r in zip(self.panes, pane_runs):
            p.adapter, p.text, p.last = r.adapter, "", None
            p.show_answer("", "waiting…")
        self.dropped = 0
        self.error: str | None = None
        self.worker = self.tab.host.generate(self.tab.wanted_adapter(), pane_runs, connect={
            "yielded": self._chunk, "errored": self._error, "finished": self._finished}, owner=self)

    def _chunk(self, item) -> None:
        i, chunk = item
        if isinstance(chunk, TurnsDropped):
            self.dropped = chunk.turns
            return
        p = self.panes[i]
        p.text += chunk.text
        p.last = chunk
        p.view.stream_markdown(p.text)
        p.status.setText(self._status(p, done=bool(chunk.finish_reason)))

    def _status(self, p: Pane, done: bool) -> str:
        c = p.last
        parts = [f"adapter: {label_of(p.adapter) or 'none (base model)'}"]
        if c is not None and c.generation_tokens:
            parts += [f"{c.generation_tps:.1f} tok/s", f"{c.generation_tokens} tokens"]
        if self.dropped:
            parts.append(dropped_note(self.dropped))
        parts.append("done" if done else "generating…")
        return "  ·  ".join(parts)

    def _error(self, e: Exception) -> None:
        self.error = str(e)
        self.tab.show_message(f"Comparison failed: {e}")

    def _finished(self) -> None:
        for p in self.panes:
            p.show_answer(p.text, self._status(p, done=p.last is not None and bool(p.last.finish_reason)))
        reason = "error" if self.error else (self.panes[1].last.finish_reason if self.panes[1].last else "cancelled")
        if self.worker is not None and self.worker.abort_requested and not self.error:
            reason = "cancelled"
        if all(p.text.strip() for p in self.panes) and not self.error:
            self._record()
        self.finished.emit(reason or "stop")

    def _record(self) -> None:
        engine = self.tab.host.engine
        model = str(engine.model_info.ref) if engine and engine.model_info else ""
        answers = []
        for p in self.panes:
            name = label_of(p.adapter)
            info = engine.adapters.get(name) if engine and isinstance(name, str) else None
            answers.append(Message("assistant", p.text, pane=p.number, task=self.tab.task.name, adapter=name,
                                   adapter_hash=folder_hash(info.path) if info else None, model=model,
                                   settings=settings_record(self.tab._question[2]),
                                   tps=p.last.generation_tps if p.last else 0.0,
                                   finish=p.last.finish_reason if p.last else None, created=time.time()))
        self.tab.session.record(self.question, self.prompt, answers)

    def show_turn(self, answers: list[Message]) -> None:
        """A stored comparison, opened again."""
        for p, m in zip(self.panes, answers):
            p.adapter = m.adapter
            p.last = None
            p.show_answer(m.content, f"adapter: {m.adapter or 'none (base model)'}  ·  {m.tps:.1f} tok/s")
