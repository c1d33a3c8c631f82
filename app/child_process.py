"""Run a long job (benchmark, training) in a child process, from a worker thread.

Why not just a thread: loading a model and a training loop spend long stretches in Python and in
C calls that hold the GIL, which starved the GUI thread for up to a second (measured: 1.0 s while
the benchmark loaded its model in a thread). A spawned child has its own interpreter, so the window
stays live; its memory (a second model) is returned to the OS when it ends.

The job is `module:function(*args, report, cancel)`: `report(obj)` sends a picklable progress
object back, `cancel` is a multiprocessing Event the job polls. Qt-free.
"""
from __future__ import annotations

import importlib
import multiprocessing
import pickle
import queue
import threading
from typing import Callable


def _child(target: str, args: tuple, out, cancel) -> None:
    import logging

    from app import paths

    handler = logging.FileHandler(paths.log_dir() / "loradesk.log", encoding="utf-8")  # the app's log
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {target} %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    module, name = target.split(":")
    try:
        fn = getattr(importlib.import_module(module), name)
        result = fn(*args, lambda obj: out.put(("report", obj)), cancel)
        out.put(("result", result))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        try:
            pickle.loads(pickle.dumps(e))
            out.put(("error", e))
        except Exception:  # noqa: BLE001 - an exception that does not pickle: keep its text
            out.put(("error", RuntimeError(f"{type(e).__name__}: {e}")))


def run_in_child(target: str, args: tuple, report: Callable[[object], None], cancel: threading.Event,
                 what: str = "job"):
    """Run `target` in a spawned process; forward its reports to `report` (called on this thread),
    pass `cancel` on, and return its result or raise its exception here."""
    ctx = multiprocessing.get_context("spawn")  # fork would copy this process's threads and Qt state
    out = ctx.Queue()
    child_cancel = ctx.Event()
    proc = ctx.Process(target=_child, args=(target, args, out, child_cancel), daemon=True,
                       name=f"loradesk-{what}")
    proc.start()
    try:
        while True:
            if cancel.is_set():
                child_cancel.set()
            try:
                kind, payload = out.get(timeout=0.1)
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"the {what} process ended unexpectedly (exit code {proc.exitcode}); "
                                       "see the log file (Help > Open log file)") from None
                continue
            if kind == "report":
                report(payload)
            elif kind == "result":
                return payload
            else:
                raise payload
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
