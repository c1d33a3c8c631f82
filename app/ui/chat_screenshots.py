"""Screenshots of a conversation and of a side-by-side comparison, on a real model:
`python -m app.ui.chat_screenshots --model M --engine llamacpp --out docs` (offscreen works).

In the Math tab: a new chat of two turns (the second a follow-up), saved as chat-history.png; then
Compare (A: base model, B: the task's adapter) on a question in a new chat, saved as chat-compare.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from app.ui.screenshots import _wait

QUESTIONS = ("A shop sells pens at 3 dollars each. How much do 7 pens cost?",
             "How much change is left from a 50 dollar note?")
COMPARE = "Tom has 12 apples and gives away a third of them. How many apples does he have left?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--engine", default="llamacpp")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--size", default="1180x760")
    ap.add_argument("--timeout", type=float, default=1200)
    args = ap.parse_args(argv)

    from app.ui.app import create_app, preload_engine, setup_logging
    from app.ui.chat_actions import new_chat
    from app.ui.main_window import MainWindow

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging()
    app = create_app()
    preload_engine(args.engine)
    win = MainWindow(model=args.model, engine=args.engine)
    win.resize(*(int(v) for v in args.size.split("x")))
    win.show()
    win.start()
    if not _wait(app, lambda: win.host.engine is not None, args.timeout):
        print("model did not load in time", file=sys.stderr)
        return 1
    tab = win.task_tabs["math"]
    win.tabs.setCurrentWidget(tab)
    orig = tab.runs
    tab.runs = lambda text: [type(r)(r.messages, r.settings.replace(max_tokens=args.max_tokens)) for r in orig(text)]

    def ask(text: str) -> None:
        tab.input.setPlainText(text)
        t = time.monotonic()
        tab.generate()
        _wait(app, lambda: not tab.busy, args.timeout)
        print(f"{time.monotonic() - t:.0f} s: {tab.status.text()}", flush=True)

    def shot(name: str) -> None:
        _wait(app, lambda: False, 0.5)  # let the last paint land
        path = out / f"{name}.png"
        win.grab().save(str(path))
        print(f"{path}: {path.stat().st_size // 1024} KB", flush=True)

    new_chat(tab)
    for q in QUESTIONS:
        ask(q)
    shot("chat-history")
    new_chat(tab)  # the comparison in a chat of its own: no earlier turns steer either pane
    tab.compare_btn.setChecked(True)
    tab.compare.panes[0].select("base")
    tab.compare.panes[1].select("task")
    ask(COMPARE)
    for p in tab.compare.panes:
        print(f"pane {p.number}: {p.status.text()}\n{p.text}\n", flush=True)
    shot("chat-compare")
    win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
