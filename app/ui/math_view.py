"""The Math tab's answer view: «a=b» calculator annotations shown readably, wrong ones marked.

`48/2 = «48/2=24»24 clips` reads as `48/2 = 24 clips` with the 24 marked as checked; a wrong
annotation («48/2=25»25) is shown in red with the right value. The final `#### 72` line becomes
"Answer: 72".
"""
from __future__ import annotations

import html
import re

from PySide6.QtWidgets import QTextBrowser

from app.annotations import Annotation, check_annotations, format_value

OK_STYLE = "background-color:#dcfce7; color:#14532d; border-radius:3px;"
BAD_STYLE = "background-color:#fee2e2; color:#991b1b; font-weight:bold;"
UNKNOWN_STYLE = "background-color:#f3f4f6; color:#374151;"
_FINAL = re.compile(r"^####\s*(.+)$", re.M)
_FENCE = re.compile(r"```[\w-]*\n(.*?)(?:```|\Z)", re.S)
# Light LaTeX that small models write in math answers, shown as plain text.
_LATEX = [
    (re.compile(r"\\boxed\{([^{}]*)\}"), r"<b>\1</b>"),
    (re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}"), r"\1/\2"),
    (re.compile(r"\\(?:times)\b"), "×"),
    (re.compile(r"\\(?:cdot)\b"), "·"),
    (re.compile(r"\\text\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\\[()\[\]]"), ""),
]


def _latex(segment: str) -> str:
    for pattern, repl in _LATEX:
        segment = pattern.sub(repl, segment)
    return segment


def _badge(a: Annotation) -> str:
    shown = html.escape(a.claimed.strip())
    expr = html.escape(a.expression.strip())
    if a.ok is None:
        return f'<span style="{UNKNOWN_STYLE}" title="not checked: {expr}">{shown}</span>'
    if a.ok:
        return f'<span style="{OK_STYLE}" title="checked: {expr} = {shown}">&nbsp;{shown}&nbsp;&#10003;</span>'
    right = html.escape(format_value(a.value))
    return (f'<span style="{BAD_STYLE}" title="wrong: {expr} = {right}">&nbsp;{shown}&nbsp;&#10007;</span>'
            f'<span style="color:#991b1b;"> ({expr} is {right})</span>')


def render_html(text: str) -> tuple[str, int, int]:
    """HTML for an answer, and (annotations checked, wrong ones)."""
    notes = check_annotations(text)
    parts, pos = [], 0
    for a in notes:
        parts.append(html.escape(text[pos:a.start]))
        pos = a.end
        # The text usually repeats the result right after the annotation: show it once, as the badge.
        rest = text[pos:]
        claimed = a.claimed.strip()
        if claimed and rest.startswith(claimed):
            pos += len(claimed)
        parts.append(_badge(a))
    parts.append(html.escape(text[pos:]))
    body = _FINAL.sub(lambda m: f'<b style="font-size:larger;">Answer: {m.group(1)}</b>', "".join(parts))
    # Fenced blocks (a model may show its working as code) keep their lines, in monospace.
    chunks = _FENCE.split(body)
    last = len(chunks) - 1
    chunks = [c if i % 2 else c[c.startswith("\n") and i > 0:len(c) - (c.endswith("\n") and i < last)]
              for i, c in enumerate(chunks)]  # the <pre> block brings its own line breaks
    body = "".join(f'<pre style="background:#f3f4f6;">{c.strip(chr(10))}</pre>' if i % 2 else
                   _latex(c).replace("\n", "<br>") for i, c in enumerate(chunks))
    checked = sum(1 for a in notes if a.ok is not None)
    wrong = sum(1 for a in notes if a.ok is False)
    return body, checked, wrong


def summary(checked: int, wrong: int) -> str:
    if not checked:
        return ""
    if not wrong:
        return f"{checked} calculation{'s' if checked > 1 else ''} checked, all right"
    return f"{checked} calculation{'s' if checked > 1 else ''} checked, {wrong} wrong"


class MathView(QTextBrowser):
    """Read-only answer view; `set_answer(raw)` re-renders the whole (short) answer."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setOpenLinks(False)
        self.raw = ""
        self.checked = self.wrong = 0

    def set_answer(self, raw: str) -> None:
        self.raw = raw
        body, self.checked, self.wrong = render_html(raw)
        bar = self.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        self.setHtml(f'<div style="line-height:140%;">{body}</div>')
        if at_end:
            bar.setValue(bar.maximum())

    def toPlainAnswer(self) -> str:  # noqa: N802 - matches Qt naming of its neighbours
        return self.raw
