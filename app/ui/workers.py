"""Generator workers (napari/superqt style): long jobs run in a thread pool and talk to widgets
only through signals.

A job is a plain function. If it is a generator, each value it yields is emitted as `yielded` (a
progress report, a streamed piece of text) and the abort flag is checked between yields; its
return value is emitted as `returned`. Any exception is emitted as `errored` (and logged), never
raised into Qt. `finished` always comes last. Signals are queued to the GUI thread, so slots may
touch widgets.
"""
from __future__ import annotations

import inspect
import logging
import threading
from typing import Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

log = logging.getLogger(__name__)


class WorkerSignals(QObject):
    started = Signal()
    yielded = Signal(object)
    returned = Signal(object)
    errored = Signal(object)  # the exception
    finished = Signal()


class Aborted(Exception):
    """Raised inside a job that checks `worker.abort_event` itself and wants to stop early."""


class Worker(QRunnable):
    """Runs `func(*args, **kwargs)` on a pool thread. Pass `abort_event` to share the flag that
    `quit()` sets with the job (e.g. as an engine's `cancel` event)."""

    # Python references to running workers: a QRunnable started without one may be collected.
    _alive: set["Worker"] = set()

    def __init__(self, func: Callable, *args, abort_event: threading.Event | None = None, **kwargs):
        super().__init__()
        self.setAutoDelete(False)
        self._func, self._args, self._kwargs = func, args, kwargs
        self.abort_event = abort_event or threading.Event()
        self.signals = WorkerSignals()
        self.started, self.yielded = self.signals.started, self.signals.yielded
        self.returned, self.errored = self.signals.returned, self.signals.errored
        self.finished = self.signals.finished
        self.done = threading.Event()  # set when the job has ended, any way
        self.name = getattr(func, "__name__", "job")
        self.errored.connect(self._log_error)
        self.finished.connect(self._release)

    def quit(self) -> None:
        """Ask the job to stop: checked between yields (and by the job, through abort_event)."""
        self.abort_event.set()

    @property
    def abort_requested(self) -> bool:
        return self.abort_event.is_set()

    @property
    def is_running(self) -> bool:
        return self in Worker._alive and not self.done.is_set()

    def start(self, pool: QThreadPool | None = None) -> "Worker":
        Worker._alive.add(self)
        (pool or QThreadPool.globalInstance()).start(self)
        return self

    def run(self) -> None:  # pool thread
        self.signals.started.emit()
        try:
            result = self._func(*self._args, **self._kwargs)
            if inspect.isgenerator(result):
                result = self._drive(result)
            if not self.abort_requested or result is not None:
                self.signals.returned.emit(result)
        except Aborted:
            pass
        except Exception as e:  # noqa: BLE001 - handed to the GUI as a message
            self.signals.errored.emit(e)
        finally:
            # Drop the job and its arguments: a finished worker kept by a widget must not keep an
            # engine (and its model's memory) alive.
            self._func = self._args = self._kwargs = None
            self.done.set()
            self.signals.finished.emit()

    def _drive(self, gen):
        while True:
            if self.abort_requested:
                gen.close()
                return None
            try:
                value = next(gen)
            except StopIteration as stop:
                return stop.value
            self.signals.yielded.emit(value)

    def _log_error(self, e: Exception) -> None:
        from app.errors import EngineError

        if isinstance(e, (EngineError, ValueError, OSError)):  # the user's problem, told in the window
            log.warning("%s: %s", self.name, e)
        else:  # a bug: keep the traceback in the log file
            log.error("%s failed: %s", self.name, e, exc_info=(type(e), e, e.__traceback__))

    def _release(self) -> None:
        Worker._alive.discard(self)


def create_worker(func: Callable, *args, _start: bool = True, _pool: QThreadPool | None = None,
                  _connect: dict | None = None, **kwargs) -> Worker:
    """Make a worker for `func`, connect `_connect` ({"yielded": slot, ...}) and start it."""
    worker = Worker(func, *args, **kwargs)
    for signal, slot in (_connect or {}).items():
        getattr(worker, signal).connect(slot)
    if _start:
        worker.start(_pool)
    return worker


def serial_pool() -> QThreadPool:
    """A pool with one thread: jobs run one after another in the order submitted."""
    pool = QThreadPool()
    pool.setMaxThreadCount(1)
    pool.setExpiryTimeout(-1)  # keep the thread: engine jobs come often
    return pool
