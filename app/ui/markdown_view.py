"""Answers shown as Markdown: headings, lists, tables and fenced code with Python highlighting.

Qt parses the Markdown (QTextDocument.setMarkdown, md4c: CommonMark + GitHub tables). A streamed
answer is re-parsed whole, but at most every RENDER_MS and only the view of the message being
streamed, keeping the scroll position (or following the end): no flicker, and a long earlier
conversation is never re-parsed per token.
"""
from __future__ import annotations

import re

from PySide6.QtCore import QTimer
from PySide6.QtGui import QTextFormat
from PySide6.QtWidgets import QTextBrowser

from app.ui.highlight import PythonHighlighter

RENDER_MS = 50  # at most 20 parses a second: smooth to the eye, cheap for a long answer


_FENCED = re.compile(r"(```.*?(?:```|\Z))", re.S)
_TIMES = re.compile(r"(?<=[\w)\]»])\*(?=[\w(\[«])")  # 24*1, (a+b)*c: a product, not emphasis


def protect_math(text: str) -> str:
    """Escape the `*` of products outside code blocks: math answers write «24*1=24», which Markdown
    would read as the start of italics and swallow."""
    parts = _FENCED.split(text)
    return "".join(p if i % 2 else _TIMES.sub(r"\\*", p) for i, p in enumerate(parts))


class CodeBlockHighlighter(PythonHighlighter):
    """Python colours inside fenced code blocks only (Qt marks their blocks with BlockCodeFence)."""

    def highlightBlock(self, text: str) -> None:  # noqa: N802 - Qt override
        fmt = self.currentBlock().blockFormat()
        if not fmt.hasProperty(QTextFormat.Property.BlockCodeFence):
            self.setCurrentBlockState(0)
            return
        lang = fmt.stringProperty(QTextFormat.Property.BlockCodeLanguage).lower()
        if lang in ("", "python", "py", "python3"):
            super().highlightBlock(text)


class MarkdownView(QTextBrowser):
    """A read-only Markdown view; `show_markdown` renders now, `stream_markdown` at most every RENDER_MS."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setOpenExternalLinks(True)
        self.highlighter = CodeBlockHighlighter(self.document())
        self._pending: str | None = None
        self._timer = QTimer(self, singleShot=True, interval=RENDER_MS, timeout=self._flush)
        self.markdown_text = ""

    def show_markdown(self, text: str) -> None:
        self._timer.stop()
        self._pending = None
        self._render(text)

    def stream_markdown(self, text: str) -> None:
        self._pending = text
        if not self._timer.isActive():
            self._timer.start()

    def _flush(self) -> None:
        if self._pending is not None:
            text, self._pending = self._pending, None
            self._render(text)

    def _render(self, text: str) -> None:
        if text == self.markdown_text:
            return
        bar = self.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        keep = bar.value()
        self.markdown_text = text
        self.setMarkdown(protect_math(text))
        bar.setValue(bar.maximum() if at_end else keep)
