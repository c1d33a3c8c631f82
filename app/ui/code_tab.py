"""The Code tab: a monospace, highlighted answer and "Run in sandbox".

Generated code only ever runs through the benchmark's sandbox (a separate, limited subprocess),
started from a worker so the window stays live while it runs. Where the system cannot isolate it
(no user namespaces, no Seatbelt) the sandbox refuses; the tab then asks once per session whether to
run such code with the user's own permissions.
"""
from __future__ import annotations

from PySide6.QtWidgets import QLabel, QMessageBox, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from app.code_blocks import extract_code
from app.ui.highlight import PythonHighlighter
from app.ui.task_tab import TaskTab, fixed_font
from app.ui.workers import create_worker

SANDBOX_TIMEOUT_S = 10.0
SANDBOX_MEMORY_MB = 512
_unisolated_answer: list[bool] = []  # the user's one answer this session: may unisolated code run?


def run_in_sandbox(code: str, allow_unisolated: bool = False):
    """Run `code` in the sandbox; the sandbox's result (status "not isolated" when it refused)."""
    try:
        from app.bench.sandbox import run_python
    except ImportError:
        raise RuntimeError("the sandbox (app.bench.sandbox) is not installed in this build") from None
    return run_python(code, timeout=SANDBOX_TIMEOUT_S, memory_mb=SANDBOX_MEMORY_MB, allow_unisolated=allow_unisolated)


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
    if status not in ("not isolated", None) and get("isolation", "?") is None:
        lines.append("⚠ not isolated: it ran with your own permissions (you allowed this)")
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

    def render(self):
        bar = self.output.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        self.output.setPlainText(self.answer_text())
        if at_end:
            bar.setValue(bar.maximum())

    def add_buttons(self, row):
        self.run_btn = QPushButton("Run in sandbox")
        self.run_btn.setToolTip(f"Run the answer's Python code in a separate sandboxed process "
                                f"({SANDBOX_TIMEOUT_S:.0f} s, {SANDBOX_MEMORY_MB} MB). Isolated (Linux "
                                f"namespaces, macOS Seatbelt) it has no network and sees none of your "
                                f"files; where that is not possible you are asked first.")
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
        self._start(code, bool(_unisolated_answer and _unisolated_answer[0]))

    def _start(self, code: str, allow_unisolated: bool) -> None:
        self.run_btn.setEnabled(False)
        self.sandbox_worker = create_worker(run_in_sandbox, code, allow_unisolated, _connect={
            "returned": lambda res: self._show(code, res),
            "errored": lambda e: self.sandbox_output.setPlainText(f"could not run the code: {e}"),
            "finished": self._finished,
        })

    def _finished(self):
        if self.sandbox_worker is None or self.sandbox_worker.done.is_set():
            self.run_btn.setEnabled(True)

    def _show(self, code: str, res) -> None:
        if res.status == "not isolated" and not _unisolated_answer:
            _unisolated_answer.append(self.ask_unisolated(res.stderr.strip()))
            if _unisolated_answer[0]:
                self.sandbox_output.setPlainText("running without isolation…")
                self._start(code, True)
                return
        self.sandbox_output.setPlainText(describe_result(res))

    def ask_unisolated(self, reason: str) -> bool:
        """Once per session: may code that cannot be isolated run with the user's permissions?"""
        answer = QMessageBox.question(
            self, "Run without isolation?",
            f"{reason}\n\nRun it anyway? The code could then read and change your files and use the "
            "network. Your answer holds until LoRA Desk is closed.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def set_running(self, running):
        super().set_running(running)
        self.run_btn.setEnabled(not running)
