"""Drive the real window and save screenshots of each tab after a generation (and of the
benchmark panel after a run): `python -m app.ui.screenshots --model FOLDER --engine torch --out DIR`.

Used to look at the app as a user sees it (under Xvfb or offscreen). `--tiny` builds a tiny random
model and adapters in a temporary home instead. Prints, per step, the longest event-loop stall.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from app.tasks import task_names


def _wait(app, pred, timeout: float) -> bool:
    from PySide6.QtCore import QEventLoop

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        if pred():
            return True
        time.sleep(0.01)
    return False


def _tiny_home() -> tuple[str, Path]:
    from app import store
    from app.tiny import build_tiny_model, write_random_adapter

    root = Path(tempfile.mkdtemp(prefix="loradesk-shots-"))
    os.environ["LORADESK_HOME"] = str(root / "home")
    model = build_tiny_model(root / "qwen2", "qwen2")
    for seed, task in enumerate(task_names(), 11):
        store.add(task, write_random_adapter(model, root / "ad" / task, seed=seed, rank=8), name=f"{task}-tiny")
    return str(model), root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model")
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--out", default="screens")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (layout checks)")
    ap.add_argument("--random-adapters", type=float, metavar="SCALE",
                    help="register random rank-8 adapters of this LoRA scale for the model (layout checks "
                         "when no trained adapters exist)")
    ap.add_argument("--tabs", default=",".join(task_names()))
    ap.add_argument("--max-tokens", type=int, help="cap each answer (default: the task's)")
    ap.add_argument("--variants", type=int, default=2, help="paraphrase variants")
    ap.add_argument("--bench", default="humaneval", help="benchmark tasks ('' to skip)")
    ap.add_argument("--bench-configs", default="base,adapter")
    ap.add_argument("--bench-limit", type=int, default=2)
    ap.add_argument("--bench-max-tokens", type=int, default=0)
    ap.add_argument("--size", default="1180x800")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)
    if args.tiny:
        args.model, _ = _tiny_home()
        args.engine = "mlx"

    if args.random_adapters:
        from app import store
        from app.tiny import write_random_adapter

        root = Path(tempfile.mkdtemp(prefix="loradesk-random-adapters-"))
        for seed, task in enumerate(task_names(), 21):
            folder = write_random_adapter(args.model, root / task, seed=seed, rank=8, scale=args.random_adapters)
            store.add(task, folder, name=f"{task}-random", source="random (screenshot script)")

    from app.ui.app import StallWatch, create_app, preload_engine, setup_logging
    from app.ui.main_window import MainWindow

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging()
    app = create_app()
    preload_engine(args.engine)
    win = MainWindow(model=args.model, engine=args.engine)
    w, h = (int(v) for v in args.size.split("x"))
    win.resize(w, h)
    win.show()
    watch = StallWatch(win)
    win.start()

    def shot(name: str) -> None:
        _wait(app, lambda: False, 0.3)  # let the last paint land
        path = out / f"{name}.png"
        win.grab().save(str(path))
        watch.skip()  # the grab itself runs on the GUI thread; it is not the app's stall
        print(f"{path}  (longest event-loop stall so far: {watch.worst_ms:.0f} ms, stalls >100 ms: {watch.stalls})",
              flush=True)

    t0 = time.monotonic()
    if not _wait(app, lambda: win.host.engine is not None or win.banner.isVisible(), args.timeout):
        print("model did not load in time", file=sys.stderr)
    print(f"model loaded in {time.monotonic() - t0:.1f} s: {win.host.model_label()}; "
          f"problems: {win.host.problems or 'none'}", flush=True)
    watch.reset()
    for name in [t for t in args.tabs.split(",") if t]:
        tab = win.task_tabs[name]
        win.tabs.setCurrentWidget(tab)
        tab.input.setPlainText(tab.task.example_input)
        if name == "paraphrase":
            tab.variants.setValue(args.variants)
        if args.max_tokens:
            orig = tab.runs
            tab.runs = lambda text, orig=orig: [type(r)(r.messages, r.settings.replace(max_tokens=args.max_tokens))
                                                for r in orig(text)]
        t1 = time.monotonic()
        tab.generate()
        _wait(app, lambda: not tab.busy, args.timeout)
        print(f"{name}: {time.monotonic() - t1:.1f} s, {tab.status.text()}", flush=True)
        if name == "code":
            tab.run_code()
            _wait(app, lambda: tab.run_btn.isEnabled(), 60)
        shot(name)
    win.tabs.setCurrentWidget(win.models_panel)
    shot("models")
    win.tabs.setCurrentWidget(win.train_panel)
    shot("train")
    win.tabs.setCurrentWidget(win.bench_panel)
    panel = win.bench_panel
    if args.bench:
        for n, cb in panel.task_checks.items():
            cb.setChecked(n in args.bench.split(","))
        for n, cb in panel.config_checks.items():
            cb.setChecked(n in args.bench_configs.split(","))
        panel.limit.setValue(args.bench_limit)
        panel.max_tokens.setValue(args.bench_max_tokens)
        t1 = time.monotonic()
        panel.start()
        _wait(app, lambda: panel.running, args.timeout)
        shot("bench-running")
        _wait(app, lambda: not panel.busy, args.timeout)
        print(f"benchmark: {time.monotonic() - t1:.1f} s; {panel.message.text()}", flush=True)
    shot("bench")
    win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
