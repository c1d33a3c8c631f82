"""Start the desktop app: QApplication, icon, style sheet, log file, main window."""
from __future__ import annotations

import logging
import logging.handlers
import sys
import time

from PySide6.QtCore import QObject, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from app import paths
from app.engine import preload

log = logging.getLogger("app.ui")
LOG_FILE = "loradesk.log"
STALL_MS = 100  # the event loop should never be blocked longer than this


def setup_logging() -> logging.Handler:
    """Log to <log dir>/loradesk.log (rotated at 2 MB); Help > Open log file shows it."""
    handler = logging.handlers.RotatingFileHandler(paths.log_dir() / LOG_FILE, maxBytes=2_000_000,
                                                   backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in root.handlers:  # the CLI's stderr handler stays at warnings
        if isinstance(h, logging.StreamHandler) and h.level == logging.NOTSET:
            h.setLevel(logging.WARNING)
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def style_sheet() -> str:
    f = paths.resources_dir() / "style.qss"
    return f.read_text(encoding="utf-8") if f.exists() else ""


def app_icon() -> QIcon:
    icon = QIcon()
    for name in ("icon.png", "icon-256.png", "icon-64.png"):
        f = paths.resources_dir() / name
        if f.exists():
            icon.addFile(str(f))
    return icon


class StallWatch(QObject):
    """Logs when the event loop was blocked: a 20 ms timer that fires late means a stall.
    `worst_ms` is the longest gap seen (the screenshot script reports it)."""

    def __init__(self, parent=None, interval_ms: int = 20):
        super().__init__(parent)
        self.interval = interval_ms
        self.worst_ms = 0.0
        self.stalls = 0
        self._last = time.perf_counter()
        self._timer = QTimer(self, interval=interval_ms, timeout=self._tick)
        self._timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = (now - self._last) * 1000 - self.interval
        self._last = now
        if gap > self.worst_ms:
            self.worst_ms = gap
        if gap > STALL_MS:
            self.stalls += 1
            log.warning("event loop blocked for %.0f ms", gap)

    def skip(self) -> None:
        """Do not count the time since the last tick (e.g. a screenshot the caller just took)."""
        self._last = time.perf_counter()

    def reset(self) -> None:
        self.worst_ms, self.stalls, self._last = 0.0, 0, time.perf_counter()


def _excepthook(window):
    """Errors that escape a slot go to the log and the window's message bar, never a crash."""
    def hook(etype, value, tb):
        log.error("unhandled error", exc_info=(etype, value, tb))
        try:
            window.show_error(f"Unexpected error: {value} (details in {paths.log_dir() / LOG_FILE})")
        except Exception:  # noqa: BLE001 - the window may be gone already
            pass
    return hook


def create_app(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv[:1])
    app.setApplicationName("LoRA Desk")
    app.setOrganizationName("LoRADesk")
    app.setWindowIcon(app_icon())
    app.setStyleSheet(style_sheet())
    return app


def signal_emit_leak(n: int = 200) -> int:
    """References to True lost per `n` Python-side Signal.emit() calls (0 on a sound PySide6).

    PySide6 6.12.0 loses one per emit; on Python < 3.12 that frees True after a few thousand
    streamed tokens and the process aborts ("deallocating True or False").
    """
    from PySide6.QtCore import Signal

    class _Probe(QObject):
        ping = Signal()

    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(n):
        probe.ping.emit()
    lost = before - sys.getrefcount(True)
    if lost > 0 and sys.version_info < (3, 12):  # give back what the probe took
        import ctypes

        for _ in range(lost):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))
    return lost


def preload_engine(kind: str) -> None:
    """Import the engine's libraries on this (GUI) thread before the window shows.

    Imported later from a worker thread, torch / mlx / transformers initialise their C extensions
    while holding the GIL and froze the window for up to 0.8 s at a time (measured with the tiny
    model: 840 ms worst stall; 83 ms with this preload).
    """
    try:
        preload(kind)
    except ImportError as e:  # the window says so when the model load fails
        log.warning("could not preload the %s engine: %s", kind, e)


def splash_screen():
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QPixmap
    from PySide6.QtWidgets import QSplashScreen

    pix = QPixmap(str(paths.resources_dir() / "icon.png"))
    splash = QSplashScreen(pix if not pix.isNull() else QPixmap(256, 256))
    splash.showMessage("Starting LoRA Desk…", Qt.AlignmentFlag.AlignBottom | Qt.AlignmentFlag.AlignHCenter)
    splash.show()
    QApplication.processEvents()
    return splash


def _since_process_start() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()


def run(model: str | None = None, engine: str | None = None, argv: list[str] | None = None,
        quit_after: float | None = None, screenshot: str | None = None) -> int:
    """Start the app. `quit_after` is for smoke tests: the app prints when the window showed and
    whether the model loaded, then quits once the model has loaded or failed (or there is none on
    this machine to load), `quit_after` seconds after the window showed at the latest; exit 1 if
    the model failed or did not load in that time."""
    from app.session import choose_engine

    setup_logging()
    app = create_app(argv)
    log.info("starting LoRA Desk (model=%s, engine=%s)", model, engine)
    splash = splash_screen()
    kind = choose_engine(engine)  # once: the window loads the model on the engine preloaded here
    preload_engine(kind)
    from app.ui.main_window import MainWindow

    window = MainWindow(model=model, engine=kind)
    sys.excepthook = _excepthook(window)
    window.stall_watch = StallWatch(window)
    # The faulty release loses exactly one per emit; other threads touching True only add noise.
    if sys.version_info < (3, 12) and signal_emit_leak(200) >= 200:
        import PySide6

        window.show_error(f"This PySide6 ({PySide6.__version__}) loses a reference on every signal and the app will "
                          "crash after a while on this Python; install another version: "
                          "pip install 'PySide6-Essentials!=6.12.0'")
    window.show()
    splash.finish(window)
    QTimer.singleShot(0, window.start)  # show the window first, then start loading the model
    if quit_after is None:
        return app.exec()
    return _smoke(app, window, quit_after, screenshot)


def _smoke(app: QApplication, window, timeout: float, screenshot: str | None = None) -> int:
    """Run until the window has settled (model loaded or failed, or none to load), then take the
    screenshot and quit; `timeout` seconds after the window showed at the latest. It waits for the
    event, not for a time: a slow machine only takes longer."""
    print(f"gui: window shown {_since_process_start():.2f} s after the process started", flush=True)
    state = {"failed": None, "settled": False, "closed": False, "timed_out": False}

    def loaded(info) -> None:
        print(f"gui: model {info.ref} loaded {_since_process_start():.2f} s after the process started", flush=True)
        settle()

    def failed(message: str) -> None:
        state["failed"] = message
        print(f"gui: model failed to load: {message}", flush=True)
        settle()

    def first_look() -> None:  # runs after window.start: did it start a load?
        if not window.host.loading and window.host.engine is None:
            print("gui: no model on this machine to load (the window offers a download)", flush=True)
            settle()

    def settle() -> None:
        if not state["settled"]:
            state["settled"] = True
            QTimer.singleShot(0, finish)  # after the updates the load queued, so the screenshot shows them

    def too_late() -> None:
        if not state["settled"]:
            state["timed_out"] = True
            print(f"gui: the model did not load within {timeout:g} s of the window showing", flush=True)
            finish()

    def finish() -> None:
        if state["closed"]:
            return
        state["closed"] = True
        if screenshot:
            ok = window.grab().save(screenshot)
            print(f"gui: screenshot {'saved to ' + screenshot if ok else 'could not be saved to ' + screenshot}", flush=True)
        window.close()
        app.quit()

    window.host.model_loaded.connect(loaded)
    window.host.model_failed.connect(failed)
    QTimer.singleShot(0, first_look)  # queued after window.start's zero timer
    QTimer.singleShot(int(timeout * 1000), too_late)
    rc = app.exec()
    print(f"gui: closed {_since_process_start():.2f} s after the process started (exit {rc})", flush=True)
    return 1 if rc or state["failed"] or state["timed_out"] else 0
