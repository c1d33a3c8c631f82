"""Small charts drawn with QPainter (QtCharts is not in PySide6-Essentials): a live loss curve and
grouped bars for benchmark scores."""
from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

PALETTE = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2"]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1-2-5 steps)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)  # the last tick is at or above hi
    return [round(i * step, 10) for i in range(first, last + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"



def _painter(widget) -> QPainter:
    """A painter on a white background with the charts' small font."""
    p = QPainter(widget)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.fillRect(widget.rect(), QColor("#ffffff"))
    small = QFont(widget.font())
    small.setPointSizeF(max(7.0, small.pointSizeF() * 0.85))
    p.setFont(small)
    return p

class LossPlot(QWidget):
    """Training (line) and validation (dots) loss against step; redraws as points arrive."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.series: dict[str, list[tuple[float, float]]] = {"train": [], "valid": []}
        self.total_steps: int | None = None
        self.setMinimumHeight(180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def clear(self) -> None:
        for s in self.series.values():
            s.clear()
        self.update()

    def add_point(self, kind: str, step: float, loss: float) -> None:
        if loss is None or not math.isfinite(loss):
            return
        self.series.setdefault(kind, []).append((float(step), float(loss)))
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt override
        p = _painter(self)
        fm = p.fontMetrics()
        plot = QRectF(48, 12, self.width() - 60, self.height() - 40)
        pts = [pt for s in self.series.values() for pt in s]
        p.setPen(QPen(QColor("#9ca3af")))
        p.drawRect(plot)
        if not pts:
            p.setPen(QColor("#6b7280"))
            p.drawText(plot, Qt.AlignmentFlag.AlignCenter, "The loss curve appears here while training runs.")
            return
        x_hi = max(self.total_steps or 0, max(x for x, _ in pts), 1)
        y_lo, y_hi = min(y for _, y in pts), max(y for _, y in pts)
        pad = (y_hi - y_lo) * 0.08 or 0.5
        yt = nice_ticks(max(0.0, y_lo - pad), y_hi + pad)
        y_lo, y_hi = yt[0], yt[-1]
        xt = nice_ticks(0, x_hi)
        x_hi = xt[-1]

        def to(x, y):
            return QPointF(plot.left() + x / x_hi * plot.width(),
                           plot.bottom() - (y - y_lo) / (y_hi - y_lo) * plot.height())

        grid = QPen(QColor("#e5e7eb"))
        for y in yt:
            p.setPen(grid)
            p.drawLine(to(0, y), to(x_hi, y))
            p.setPen(QColor("#374151"))
            p.drawText(QRectF(0, to(0, y).y() - 8, 44, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, _fmt(y))
        for x in xt:
            p.setPen(QColor("#374151"))
            p.drawText(QRectF(to(x, y_lo).x() - 30, plot.bottom() + 2, 60, 16), Qt.AlignmentFlag.AlignHCenter, _fmt(x))
        p.drawText(QRectF(plot.left(), plot.bottom() + 14, plot.width(), 14), Qt.AlignmentFlag.AlignHCenter, "step")

        for i, (name, s) in enumerate(self.series.items()):
            if not s:
                continue
            color = QColor(PALETTE[i % len(PALETTE)])
            if name == "train":
                path = QPainterPath(to(*s[0]))
                for pt in s[1:]:
                    path.lineTo(to(*pt))
                p.setPen(QPen(color, 2))
                p.drawPath(path)
            else:
                p.setPen(QPen(color, 2))
                p.setBrush(color)
                for pt in s:
                    p.drawEllipse(to(*pt), 3.5, 3.5)
                p.setBrush(Qt.BrushStyle.NoBrush)
            # legend, top right
            lx = plot.right() - 110
            ly = plot.top() + 8 + 16 * i
            p.setPen(QPen(color, 3))
            p.drawLine(QPointF(lx, ly + 6), QPointF(lx + 16, ly + 6))
            p.setPen(QColor("#111827"))
            last = s[-1][1]
            p.drawText(QPointF(lx + 22, ly + 6 + fm.ascent() / 2 - 1), f"{name} {last:.3f}")


class BarChart(QWidget):
    """Grouped bars: one group per category (task), one bar per series (configuration)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = ""
        self.categories: list[str] = []
        self.series: dict[str, list[float | None]] = {}
        self.setMinimumHeight(200)

    def set_data(self, title: str, categories: list[str], series: dict[str, list[float | None]]) -> None:
        self.title, self.categories, self.series = title, categories, series
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt override
        p = _painter(self)
        vals = [v for s in self.series.values() for v in s if v is not None]
        plot = QRectF(44, 26, self.width() - 56, self.height() - 62)
        p.setPen(QColor("#111827"))
        p.drawText(QRectF(0, 4, self.width(), 18), Qt.AlignmentFlag.AlignHCenter, self.title)
        if not vals or not self.categories:
            p.setPen(QColor("#6b7280"))
            p.drawText(plot, Qt.AlignmentFlag.AlignCenter, "Scores appear here when a run finishes.")
            return
        yt = nice_ticks(0, (max(vals) or 10.0) * 1.08)  # headroom for the value labels; all-zero: 0-10
        top = yt[-1]
        for y in yt:
            yy = plot.bottom() - y / top * plot.height()
            p.setPen(QColor("#e5e7eb"))
            p.drawLine(QPointF(plot.left(), yy), QPointF(plot.right(), yy))
            p.setPen(QColor("#374151"))
            p.drawText(QRectF(0, yy - 8, 40, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, _fmt(y))
        n_series = len(self.series)
        group_w = plot.width() / len(self.categories)
        bar_w = min(group_w * 0.8 / max(1, n_series), 90.0)  # a lone task does not get wall-wide bars
        for ci, cat in enumerate(self.categories):
            gx = plot.left() + ci * group_w + (group_w - bar_w * n_series) / 2  # centred in its group
            for si, (name, s) in enumerate(self.series.items()):
                v = s[ci] if ci < len(s) else None
                if v is None:
                    continue
                h = v / top * plot.height()
                rect = QRectF(gx + si * bar_w, plot.bottom() - h, bar_w - 2, h)
                p.fillRect(rect, QColor(PALETTE[si % len(PALETTE)]))
                p.setPen(QColor("#111827"))
                p.drawText(QRectF(rect.left() - 10, rect.top() - 15, rect.width() + 20, 14),
                           Qt.AlignmentFlag.AlignHCenter, _fmt(v))
            p.setPen(QColor("#374151"))
            p.drawText(QRectF(plot.left() + ci * group_w, plot.bottom() + 2, group_w, 16),
                       Qt.AlignmentFlag.AlignHCenter, cat)
        # legend along the bottom
        x = plot.left()
        for si, name in enumerate(self.series):
            p.fillRect(QRectF(x, self.height() - 16, 10, 10), QColor(PALETTE[si % len(PALETTE)]))
            p.setPen(QColor("#111827"))
            p.drawText(QPointF(x + 14, self.height() - 7), name)
            x += 24 + p.fontMetrics().horizontalAdvance(name)
