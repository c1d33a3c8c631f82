"""Draw the app icon with QPainter and write resources/icon*.png, icon.ico and icon.icns.

`python -m app.ui.make_icon` regenerates them (the PNGs are committed; packaging uses .ico/.icns).
The picture: a base slab (the shared model) with four coloured tabs (one adapter per task), one lit.
"""
from __future__ import annotations

import sys

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QImage, QLinearGradient, QPainter, QPainterPath, QPen

from app import paths

TASK_COLORS = ("#f97316", "#22c55e", "#eab308", "#ec4899")  # math, code, summarize, paraphrase


def draw_icon(size: int) -> QImage:
    img = QImage(size, size, QImage.Format.Format_ARGB32)
    img.fill(Qt.GlobalColor.transparent)
    p = QPainter(img)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = size / 256.0
    bg = QPainterPath()
    bg.addRoundedRect(QRectF(8 * s, 8 * s, 240 * s, 240 * s), 52 * s, 52 * s)
    grad = QLinearGradient(0, 0, 0, size)
    grad.setColorAt(0, QColor("#3b82f6"))
    grad.setColorAt(1, QColor("#1e3a8a"))
    p.fillPath(bg, grad)
    # four adapter tabs standing on the slab; the second one is "active" (taller, with a glow)
    w, gap, x0 = 36 * s, 12 * s, 46 * s
    for i, color in enumerate(TASK_COLORS):
        h = (96 if i == 1 else 64) * s
        rect = QRectF(x0 + i * (w + gap), 168 * s - h, w, h)
        tab = QPainterPath()
        tab.addRoundedRect(rect, 9 * s, 9 * s)
        p.fillPath(tab, QColor(color))
        if i == 1:
            p.setPen(QPen(QColor(255, 255, 255, 230), max(1.0, 5 * s)))
            p.drawPath(tab)
            p.setPen(Qt.PenStyle.NoPen)
    slab = QPainterPath()
    slab.addRoundedRect(QRectF(36 * s, 176 * s, 184 * s, 40 * s), 12 * s, 12 * s)
    p.fillPath(slab, QColor("#f8fafc"))
    p.end()
    return img


def main(out_dir=None) -> list[str]:
    from PySide6.QtGui import QGuiApplication

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 - painting needs one
    out = out_dir or paths.resources_dir()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for size, name in ((256, "icon.png"), (64, "icon-64.png"), (32, "icon-32.png"), (16, "icon-16.png")):
        draw_icon(size).save(str(out / name))
        written.append(str(out / name))
    big = draw_icon(1024)
    big.save(str(out / "icon-1024.png"))
    try:  # .ico / .icns through Pillow (a matplotlib dependency)
        from PIL import Image

        src = Image.open(out / "icon-1024.png")
        src.save(out / "icon.ico", sizes=[(16, 16), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)])
        written.append(str(out / "icon.ico"))
        src.save(out / "icon.icns")
        written.append(str(out / "icon.icns"))
    except Exception as e:  # noqa: BLE001 - the PNGs are enough to run; packaging reports the rest
        print(f"note: .ico/.icns not written: {e}", file=sys.stderr)
    (out / "icon-1024.png").unlink()
    return written


if __name__ == "__main__":
    for f in main():
        print(f)
