"""The Code tab: a monospace, highlighted answer and "Run in sandbox".

Generated code only ever runs through the benchmark's sandbox (a separate, limited subprocess),
started from a worker so the window stays live while it runs.
"""
from __future__ import annotations

import re

from PySide6.QtWidgets import QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from app.ui.highlight import PythonHighlighter
from app.ui.task_tab import TaskTab, fixed_font
from app.ui.workers import create_worker

SANDBOX_TIMEOUT_S = 10.0
SANDBOX_MEMORY_MB = 512
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def extract_code(answer: str) -> str:
    """The Python code of an answer: its fenced blocks joined, or the whole answer when it has none."""
    blocks = [b.strip("\n") for b in _FENCE.findall(answer)]
    blocks = [b for b in blocks if b.strip()]
    return "\n\n".join(blocks) if blocks else answer.strip()


def run_in_sandbox(code: str) -> str:
    """Run `code` in the sandbox and describe the outcome as text."""
    try:
        from app.bench.sandbox import run_python
    except ImportError:
        raise RuntimeError("the sandbox (app.bench.sandbox) is not installed in this build") from None
    return describe_result(run_python(code, timeout=SANDBOX_TIMEOUT_S, memory_mb=SANDBOX_MEMORY_MB))


def describe_result(res) -> str:
    """Text for the sandbox's result object (any object or dict with stdout/stderr/exit status)."""
    get = (lambda k, d=None: res.get(k, d)) if isinstance(res, dict) else (lambda k, d=None: getattr(res, k, d))
    lines = []
    status = get("status")
    code = get("returncode", get("exit_code"))
    if get("timed_out"):
        lines.append(f"✗ timed out after {SANDBOX_TIMEOUT_S:.0f} s (the process was killed)")
    elif status not in (None, ""):
        lines.append(f"status: {status}" + (f" (exit code {code})" if code is not None else ""))
    elif code is not None:
        lines.append(("✓ " if code == 0 else "✗ ") + f"exit code {code}")
    duration = get("duration", get("seconds", get("elapsed")))
    if duration is not None:
        lines[-1:] = [(lines[-1] if lines else "") + f" in {float(duration):.2f} s"]
    out, err = get("stdout", ""), get("stderr", "")
    if out:
        lines += ["", "stdout:", out.rstrip()]
    if err:
        lines += ["", "stderr:", err.rstrip()]
    if not out and not err:
        lines += ["", "(no output)"]
    return "\n".join(lines).strip()


class CodeTab(TaskTab):
    def make_output(self):
        view = QPlainTextEdit()
        view.setReadOnly(True)
        view.setFont(fixed_font())
        view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.highlighter = PythonHighlighter(view.document())
        return view

    def add_buttons(self, row):
        self.run_btn = QPushButton("Run in sandbox")
        self.run_btn.setToolTip(f"Run the answer's Python code in a separate sandboxed process "
                                f"({SANDBOX_TIMEOUT_S:.0f} s, {SANDBOX_MEMORY_MB} MB, no network)")
        self.run_btn.clicked.connect(self.run_code)
        row.addWidget(self.run_btn)
        self.sandbox_worker = None

    def add_panes(self, splitter):
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel("Sandbox output"))
        self.sandbox_output = QPlainTextEdit()
        self.sandbox_output.setObjectName("sandbox")
        self.sandbox_output.setReadOnly(True)
        self.sandbox_output.setFont(fixed_font())
        self.sandbox_output.setPlaceholderText("Run in sandbox shows the program's output here.")
        lay.addWidget(self.sandbox_output)
        splitter.addWidget(box)
        box.hide()
        self.sandbox_box = box

    def run_code(self):
        code = extract_code(self.answer_text())
        if not code:
            self.show_message("There is no code to run yet: generate an answer first.")
            return
        self.show_message("")
        self.sandbox_box.show()
        self.sandbox_output.setPlainText("running…")
        self.run_btn.setEnabled(False)
        self.sandbox_worker = create_worker(run_in_sandbox, code, _connect={
            "returned": self.sandbox_output.setPlainText,
            "errored": lambda e: self.sandbox_output.setPlainText(f"could not run the code: {e}"),
            "finished": lambda: self.run_btn.setEnabled(True),
        })

    def set_running(self, running):
        super().set_running(running)
        self.run_btn.setEnabled(not running)
