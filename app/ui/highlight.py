"""Python syntax highlighting for the Code tab (and the sandbox output)."""
from __future__ import annotations

import builtins
import keyword
import re

from PySide6.QtGui import QColor, QFont, QSyntaxHighlighter, QTextCharFormat


def _fmt(color: str, bold: bool = False, italic: bool = False) -> QTextCharFormat:
    f = QTextCharFormat()
    f.setForeground(QColor(color))
    if bold:
        f.setFontWeight(QFont.Weight.Bold)
    f.setFontItalic(italic)
    return f


STYLES = {
    "keyword": _fmt("#7c3aed", bold=True),
    "builtin": _fmt("#0369a1"),
    "defname": _fmt("#b45309", bold=True),
    "decorator": _fmt("#0f766e"),
    "string": _fmt("#15803d"),
    "number": _fmt("#c2410c"),
    "comment": _fmt("#6b7280", italic=True),
    "fence": _fmt("#9ca3af"),
    "self": _fmt("#be185d"),
}

_BUILTINS = sorted(n for n in dir(builtins) if not n.startswith("_"))
RULES: list[tuple[re.Pattern, str, int]] = [
    (re.compile(r"\b(?:%s)\b" % "|".join(keyword.kwlist + keyword.softkwlist[:3])), "keyword", 0),
    (re.compile(r"\b(?:%s)\b" % "|".join(_BUILTINS)), "builtin", 0),
    (re.compile(r"\b(?:self|cls)\b"), "self", 0),
    (re.compile(r"\b(?:def|class)\s+(\w+)"), "defname", 1),
    (re.compile(r"^\s*@[\w.]+"), "decorator", 0),
    (re.compile(r"\b(?:0[xob][0-9a-fA-F_]+|\d[\d_]*\.?\d*(?:[eE][+-]?\d+)?j?)\b"), "number", 0),
    # one-line strings (optional prefix), then comments: both override what came before
    (re.compile(r"""[rRbBfFuU]{0,2}("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""), "string", 0),
    (re.compile(r"#[^\n]*"), "comment", 0),
    (re.compile(r"^```\w*\s*$"), "fence", 0),
]
_TRIPLE = [(re.compile('"""'), 1), (re.compile("'''"), 2)]  # block state = which quote is open


class PythonHighlighter(QSyntaxHighlighter):
    """Regex rules per line, plus a block state for triple-quoted strings that span lines."""

    def highlightBlock(self, text: str) -> None:  # noqa: N802 - Qt override
        for pattern, style, group in RULES:
            for m in pattern.finditer(text):
                start, end = m.span(group)
                if style == "comment" and self._inside_string(text, start):
                    continue
                self.setFormat(start, end - start, STYLES[style])
        self._triple_quotes(text)

    @staticmethod
    def _inside_string(text: str, pos: int) -> bool:
        """Whether `pos` sits inside a one-line string (so a '#' there is not a comment)."""
        quote = None
        i = 0
        while i < pos:
            c = text[i]
            if c == "\\":
                i += 2
                continue
            if quote is None and c in "\"'":
                quote = c
            elif c == quote:
                quote = None
            i += 1
        return quote is not None

    def _triple_quotes(self, text: str) -> None:
        self.setCurrentBlockState(0)
        start = 0
        state = self.previousBlockState()
        if state in (1, 2):  # a string opened on an earlier line
            start = self._close(text, 0, _TRIPLE[state - 1][0], state)
            if start < 0:
                return
        while start < len(text):
            hits = [(m.start(), st) for pat, st in _TRIPLE if (m := pat.search(text, start))]
            if not hits:
                return
            begin, st = min(hits)
            end = self._close(text, begin + 3, _TRIPLE[st - 1][0], st, begin)
            if end < 0:
                return
            start = end

    def _close(self, text: str, pos: int, pattern: re.Pattern, state: int, begin: int = 0) -> int:
        """Colour from `begin` to the closing quote; -1 (and carry the state) when the line ends first."""
        m = pattern.search(text, pos)
        if m is None:
            self.setFormat(begin, len(text) - begin, STYLES["string"])
            self.setCurrentBlockState(state)
            return -1
        self.setFormat(begin, m.end() - begin, STYLES["string"])
        return m.end()
