"""The tasks whose tabs add options or their own view to TaskTab, and `make_tab`, the one place
that picks a task's tab class (so task_tab and code_tab need not know each other)."""
from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QLabel, QSpinBox

from app.tasks import Task
from app.ui.code_tab import CodeTab
from app.ui.engine_host import EngineHost, Run
from app.ui.task_tab import TaskTab


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
    kinds = {"math": MathTab, "code": CodeTab, "summarize": SummarizeTab, "paraphrase": ParaphraseTab}
    return kinds.get(task.name, TaskTab)(task, host)
