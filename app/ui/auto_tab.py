"""The Auto tab: the router picks the task for what you type (app/router.py), shows its choice and
confidence above the answer, and one click on another task answers again with that one. "Mix"
answers with a weighted mix of the task adapters instead (Engine.activate_mix).

Routing is a few hashed features and one small matrix product (well under a millisecond, no model
involved), so it runs here on the GUI thread; the answer runs on the engine thread as every tab's.
"""
from __future__ import annotations

from dataclasses import replace

from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QLineEdit, QPushButton

from app.plan import for_route, mix_task, parse_mix_arg
from app.router import NONE, default_router
from app.tasks import get_task, load_tasks, task_names
from app.ui.engine_host import EngineHost, Run
from app.ui.task_tab import TaskTab

CHAT_LABEL = "Chat"  # the NONE route: general chat on the base model


class _Mix(dict):
    """A {adapter: weight} mix that the status line shows by its label."""

    def __str__(self):
        from app.engine.mix import label

        return label(self)


def _label(name: str) -> str:
    return CHAT_LABEL if name == NONE else get_task(name).label


class AutoTab(TaskTab):
    conversations = False  # one prompt at a time: the router picks a task per prompt
    route = None  # the router's last decision
    override: str | None = None  # a task (or NONE) chosen by a click instead of the router
    choice = None  # what the last answer used: a task, NONE, or a _Mix
    _chosen_adapter: str | None = None  # the engine's adapter for `choice` (None: base model)

    def __init__(self, host: EngineHost, parent=None):
        first = next(iter(load_tasks().values()))
        example = get_task("math").example_input if "math" in task_names() else first.example_input
        # The common tab wants a task record for its placeholder and name; Auto's own is the router.
        pseudo = replace(first, name="auto", label="Auto", example_input=example)
        super().__init__(pseudo, host, parent)
        self.input.textChanged.connect(self._new_input)

    # -- widgets -------------------------------------------------------------------------------
    def add_options(self, row: QHBoxLayout) -> None:
        self.mix_box = QCheckBox("Mix:")
        self.mix_box.setObjectName("mix")
        self.mix_box.setToolTip("Answer with a weighted mix of the task adapters: each adapter's own change "
                                "times its weight, added up (exact; weights need not sum to 1)")
        self.mix_edit = QLineEdit()
        self.mix_edit.setObjectName("mix-weights")
        self.mix_edit.setPlaceholderText("math=0.7,code=0.3")
        self.mix_edit.setMinimumWidth(220)
        self.mix_edit.setEnabled(False)
        self.mix_box.toggled.connect(self.mix_edit.setEnabled)
        row.addWidget(self.mix_box)
        row.addWidget(self.mix_edit)

    def add_buttons(self, row: QHBoxLayout) -> None:
        """The router's choice right above the answer, and one button per other choice."""
        row.addSpacing(16)
        self.choice_label = QLabel("Auto picks the task from what you type")
        self.choice_label.setObjectName("auto-choice")
        row.addWidget(self.choice_label)
        self.instead = QLabel("or answer as:")
        self.instead.hide()
        row.addWidget(self.instead)
        self.other_buttons: dict[str, QPushButton] = {}
        for name in task_names() + [NONE]:
            b = QPushButton(_label(name))
            b.setObjectName(f"use-{name}")
            b.setToolTip(f"Answer again as {_label(name)}" + (" (the base model, no adapter)" if name == NONE else ""))
            b.clicked.connect(lambda _=False, n=name: self.use(n))
            b.hide()
            row.addWidget(b)
            self.other_buttons[name] = b

    # -- choosing ------------------------------------------------------------------------------
    def _new_input(self) -> None:
        self.override = None  # a new prompt is routed afresh

    def use(self, name: str) -> None:
        """One click on another task: answer the same input again with it."""
        if self.busy:
            return
        self.override = name
        self.mix_box.setChecked(False)
        self.generate()

    def mix_weights(self) -> dict[str, float]:
        return parse_mix_arg(self.mix_edit.text() or self.mix_edit.placeholderText())

    def runs(self, text: str) -> list[Run]:
        engine = self.host.engine
        if self.mix_box.isChecked():
            weights = self.mix_weights()  # a ValueError is shown under the answer
            missing = [n for n in weights if engine is None or n not in engine.adapters]
            if missing:
                raise ValueError(f"cannot mix {', '.join(missing)}: no adapter loaded for it "
                                 "(train one, or add one under Models & adapters)")
            self.choice = _Mix(weights)
            self._show_choice(f"Mix: {self.choice}", None)
            task = get_task(mix_task(weights))
            return [Run(task.messages(text), task.generation)]
        self.route = default_router().route(text)
        name = self.override or self.route.task
        adapter, messages, settings = for_route(replace(self.route, task=name), text, engine)
        self.choice = name
        self._chosen_adapter = adapter
        note = "" if adapter or name == NONE else " · no adapter loaded for it: the base model answers"
        self._show_choice(self._describe(name) + note, name)
        return [Run(messages, settings)]

    def _describe(self, name: str) -> str:
        r = self.route
        if self.override:
            return f"You chose <b>{_label(name)}</b> (Auto said {_label(r.task)}, {r.confidence:.0%} sure)"
        runner, p = r.runner_up()
        return f"Auto chose <b>{_label(name)}</b>, {r.confidence:.0%} sure (next: {_label(runner)} {p:.0%})"

    def _show_choice(self, text: str, name: str | None) -> None:
        self.choice_label.setText(text)
        self.instead.show()
        for n, b in self.other_buttons.items():
            b.setVisible(n != name)

    def wanted_adapter(self):
        if self.no_adapter.isChecked() or self.choice is None:
            return None
        if isinstance(self.choice, _Mix):
            return self.choice
        return self._chosen_adapter

    def set_running(self, running: bool) -> None:
        super().set_running(running)
        for b in self.other_buttons.values():
            b.setEnabled(not running)

    # -- settings ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {**super().state(), "mix": self.mix_box.isChecked(), "mix_weights": self.mix_edit.text()}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.mix_edit.setText(state.get("mix_weights", ""))
        self.mix_box.setChecked(bool(state.get("mix", False)))
