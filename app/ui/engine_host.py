"""The app's one engine, driven from a single serial worker thread.

Every engine call (load, add/remove adapter, activate, generate) is a job on one serial pool, so
jobs run in the order the GUI asked for them and the GUI thread never waits on the engine's lock.
A generation activates its adapter and streams inside one job: nothing can switch the adapter in
the middle of an answer. Switching tab cancels the running answer, then queues the activation.

An engine that batches (llama.cpp) answers each request under its own adapter set without
touching the active one, so there answers are not serial jobs: each tab's (and each comparison
pane's) runs at once on a pool of its own, and a tab switch or another tab's answer cancels nothing.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QThreadPool, Signal

from app.memory import MEMORY_FACTOR, memory_check
from app.plan import KEEP, answer  # KEEP: a Run answers with the job's adapter
from app.ui.workers import Worker, serial_pool

log = logging.getLogger(__name__)



@dataclass
class Run:
    """One answer to produce: its chat messages and decoding settings; for a comparison pane, its
    own adapter (a name, a {name: weight} mix or None) and the folder to load it from when it is
    not resident; for a conversation, whether old turns may be dropped to fit the context."""

    messages: list
    settings: object  # app.tasks.GenerationSettings
    adapter: object = KEEP
    folder: str | None = None
    fit_turns: bool = False


def generation_job(engine, adapter: str | None, runs: list[Run], cancel: threading.Event):
    """Activate `adapter`, then stream each run (after activating its own adapter, if it has one).
    Yields (run index, Chunk), and (run index, TurnsDropped) before a run whose old turns were left out."""
    engine.activate(adapter)
    for i, run in enumerate(runs):
        # a run with its own adapter gives the tab's own back when it ends (app.plan.answer)
        for item in _run_items(engine, run, run.adapter, cancel):
            yield i, item
        if cancel.is_set():
            return


def _run_items(engine, run: Run, adapter, cancel: threading.Event):
    """One run's answer under `adapter`: TurnsDropped first when old turns were left out to fit
    the context, then its Chunks."""
    from app.conversation import TurnsDropped, drop_old_turns

    messages = run.messages
    if run.fit_turns:
        messages, dropped = drop_old_turns(engine, messages, run.settings.max_tokens)
        if dropped:
            yield TurnsDropped(dropped)
    yield from answer(engine, adapter, messages, run.settings, cancel, folder=run.folder)


def side_by_side_job(engine, adapter: str | None, runs: list[Run], cancel: threading.Event):
    """`generation_job` for an engine that batches: every run answers at once, in a thread of its
    own, under its own adapter set (`adapter` for a run that keeps the tab's), and the engine's active
    adapter is left alone. Yields (run index, Chunk or TurnsDropped) as they come; the first error
    stops the other runs and is raised."""
    out: queue.SimpleQueue = queue.SimpleQueue()

    def one(i: int, run: Run) -> None:
        try:
            for item in _run_items(engine, run, adapter if run.adapter == KEEP else run.adapter, cancel):
                out.put((i, item))
            out.put((i, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            out.put((i, e))

    threads = [threading.Thread(target=one, args=(i, r), name=f"loradesk-answer-{i}", daemon=True)
               for i, r in enumerate(runs)]
    for t in threads:
        t.start()
    left, error = len(threads), None
    try:
        while left:
            i, item = out.get()
            if item is None or isinstance(item, BaseException):
                left -= 1
                if isinstance(item, BaseException) and error is None:
                    error = item
                    cancel.set()  # the other panes stop too: the job reports one error
                continue
            if error is None:
                yield i, item
    finally:
        if left:  # the consumer left early (Stop): end the runs still going
            cancel.set()
        for t in threads:
            t.join()
    if error is not None:
        raise error


def model_bytes_on_disk(ref: str, kind: str) -> int:
    from app.models import resolve_model

    path = Path(resolve_model(ref, engine=kind))
    if path.is_file():  # a GGUF file (llamacpp)
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def model_is_local(ref: str) -> bool:
    """Whether `ref` can be loaded without downloading (folder, registered name, finished download)."""
    from app.models import local_repo_folder, registered_models

    if Path(ref).expanduser().exists() or ref in registered_models():
        return True
    return (local_repo_folder(ref) / ".complete").exists()


class EngineHost(QObject):
    model_loading = Signal(str)  # model ref
    model_unloaded = Signal()  # the previous model was dropped (its memory given back) for a new one
    model_loaded = Signal(object)  # ModelInfo
    model_failed = Signal(str)  # message; `engine` is the previous model when it is still loaded
    adapters_changed = Signal()  # engine adapters or problems changed
    active_changed = Signal(object)  # adapter name or None
    error = Signal(str)  # a failed engine job, as a message for the window

    def __init__(self, parent=None):
        super().__init__(parent)
        self.engine = None
        self.kind: str | None = None
        self.problems: dict[str, str] = {}  # task -> why it has no adapter
        self.pool = serial_pool()
        self.answers_pool = QThreadPool(self)  # answers side by side (an engine that batches)
        self.answers_pool.setMaxThreadCount(16)
        self._generations: dict[object, Worker] = {}  # owner (a tab, a comparison) -> its answer
        self.loading = False
        self.memory_factor = MEMORY_FACTOR
        self.model_unloaded.connect(self._unloaded)  # emitted on the engine thread, run here

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, fn, *args, _connect: dict | None = None, **kwargs) -> Worker:
        """Queue an engine job; it runs after every job queued before it. `_connect` maps signal
        names to slots, connected before the job starts so no signal is missed."""
        w = Worker(fn, *args, **kwargs)
        for signal, slot in (_connect or {}).items():
            getattr(w, signal).connect(slot)
        return w.start(self.pool)

    def _job_error(self, e: Exception) -> None:
        self.error.emit(str(e))

    @property
    def side_by_side(self) -> bool:
        """Whether answers run at once, each under its own adapter set (app.plan.answer)."""
        return self.engine is not None and getattr(self.engine, "max_batch", 1) > 1

    @property
    def generating(self) -> bool:
        return any(not w.done.is_set() for w in self._generations.values())

    def cancel_generation(self, owner=None) -> None:
        """Cancel `owner`'s answer, or every answer when no owner is given."""
        for key, w in list(self._generations.items()):
            if owner is None or key is owner:
                w.quit()

    # -- model --------------------------------------------------------------------------------
    def load(self, ref: str, kind: str) -> Worker:
        """Load a (local) model and every task adapter, replacing the current engine.

        The current model is dropped first, so the two never share memory at the peak; when the
        new one will not fit in the memory available (with the current one's given back), the
        load is refused with a message and the current model stays."""
        self.cancel_generation()
        self.loading = True
        self.model_loading.emit(str(ref))
        old, factor = self.engine, self.memory_factor

        def job():
            from app.errors import EngineError
            from app.session import new_engine
            from app.store import load_task_adapters

            held = old.memory_bytes() if old is not None and old.model_info is not None else 0
            problem = memory_check(str(ref), model_bytes_on_disk(ref, kind), held, factor)
            if problem:
                raise EngineError(problem)
            if old is not None:
                old.unload()
                self.model_unloaded.emit()
            engine = new_engine(kind)
            engine.load(ref)
            problems = load_task_adapters(engine)
            return engine, problems

        return self.submit(job, _connect={"returned": lambda res: self._loaded(kind, *res),
                                          "errored": self._load_failed})

    def _unloaded(self) -> None:
        if self.engine is not None and self.engine.model_info is None:
            self.engine, self.problems = None, {}
            self.adapters_changed.emit()

    def _loaded(self, kind, engine, problems) -> None:
        self.engine, self.kind, self.problems = engine, kind, problems
        self.loading = False
        self.model_loaded.emit(engine.model_info)
        self.adapters_changed.emit()
        self.active_changed.emit(engine.active)

    def _load_failed(self, e: Exception) -> None:
        self.loading = False
        if self.engine is not None and self.engine.model_info is None:  # dropped before the failure
            self.engine, self.problems = None, {}
            self.adapters_changed.emit()
        self.model_failed.emit(str(e))

    def model_label(self) -> str:
        if self.engine is None or self.engine.model_info is None:
            return "no model"
        info = self.engine.model_info
        name = Path(str(info.ref)).name if Path(str(info.ref)).exists() else str(info.ref)
        if name in ("hf", "mlx", "mlx-4bit"):  # a layout folder: the parent names the model
            name = f"{Path(str(info.ref)).parent.name}/{name}"
        return f"{name} ({self.kind}{', ' + info.quantization if info.quantization else ''})"

    # -- adapters ---------------------------------------------------------------------------
    def adapter_for(self, task: str, use_adapter: bool = True) -> str | None:
        """The engine's adapter name for a task (adapters are named after their task)."""
        if not use_adapter or self.engine is None:
            return None
        return task if task in self.engine.adapters else None

    def activate(self, adapter: str | None) -> Worker | None:
        """Switch adapter (a queued job, never on this thread), cancelling the running answer first
        unless answers run side by side (each keeps its own adapter set then)."""
        if self.engine is None:
            return None
        if not self.side_by_side:
            self.cancel_generation()
        engine = self.engine
        return self.submit(lambda: (engine.activate(adapter), engine.active)[1],
                           _connect={"returned": self.active_changed.emit, "errored": self._job_error})

    def add_adapter(self, task: str, folder: str | Path) -> Worker:
        """(Re)load a task's adapter into the engine from `folder`."""
        engine = self.engine

        def job():
            if engine is None:
                return None
            return engine.add_adapter(task, folder)

        return self.submit(job, _connect={"returned": lambda _info: self._adapter_ok(task),
                                          "errored": lambda e: self._adapter_failed(task, e)})

    def _adapter_ok(self, task: str) -> None:
        self.problems.pop(task, None)
        self.adapters_changed.emit()

    def _adapter_failed(self, task: str, e: Exception) -> None:
        self.problems[task] = str(e)
        self.adapters_changed.emit()
        self.error.emit(str(e))

    def remove_adapter(self, task: str) -> Worker | None:
        engine = self.engine
        if engine is None or task not in engine.adapters:
            return None
        if not self.side_by_side:  # else the engine itself ends only the answers under that adapter
            self.cancel_generation()
        return self.submit(engine.remove_adapter, task,
                           _connect={"finished": self.adapters_changed.emit, "errored": self._job_error})

    # -- text --------------------------------------------------------------------------------
    def generate(self, adapter: str | None, runs: list[Run], connect: dict | None = None,
                 owner: object = None) -> Worker:
        """Stream answers with `adapter`. The worker yields (run index, Chunk); `connect` maps its
        signal names to slots (connected before it starts). `owner` (a tab) has one answer at a
        time: a new one cancels its previous one; other owners' answers go on when the engine
        batches (else every answer is cancelled: one runs at a time)."""
        if self.engine is None:
            raise RuntimeError("no model is loaded yet: choose one under Models & adapters")
        side = self.side_by_side
        if side:
            if owner in self._generations:
                self._generations[owner].quit()
        else:
            self.cancel_generation()
        cancel = threading.Event()
        job = side_by_side_job if side else generation_job
        w = Worker(job, self.engine, adapter, runs, cancel, abort_event=cancel)
        engine = self.engine
        for signal, slot in (connect or {}).items():
            getattr(w, signal).connect(slot)
        w.finished.connect(lambda: self.active_changed.emit(engine.active))
        w.finished.connect(lambda: self._generations.pop(owner, None) if self._generations.get(owner) is w else None)
        self._generations[owner] = w
        return w.start(self.answers_pool if side else self.pool)

    def wait_idle(self, timeout_ms: int = 30000) -> bool:
        """Block until every queued engine job and answer has run (tests and shutdown only)."""
        return self.pool.waitForDone(timeout_ms) and self.answers_pool.waitForDone(timeout_ms)
