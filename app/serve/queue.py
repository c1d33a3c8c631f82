"""The single-engine request queue: every API request is one job.

On an engine that answers one at a time, jobs run on the engine's one thread strictly in arrival
order, each to its end before the next starts (the app's own answers included, when the app's
engine thread is the executor). On an engine that batches (llama.cpp: `Engine.max_batch` > 1), jobs
run side by side, each on its own thread, and the engine's scheduler admits them in arrival order
and interleaves their steps; every answer still runs under its own adapter set. Either way the
queue is bounded: a request that would make more than `max_pending` queued or running is refused
at once (the API answers 503 + Retry-After).
A client that goes away sets its job's cancel event: a queued job is skipped, a running one stops
at the next token.

No engine, torch or mlx import here: a job is any generator function `job(cancel)`; what it yields
is handed to the asyncio side as it comes.
"""
from __future__ import annotations

import asyncio
import itertools
import queue as _queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator

Executor = Callable[[Callable[[], None]], None]  # runs a no-argument callable on the engine thread


class QueueFull(Exception):
    """The queue already holds `max_pending` requests."""

    def __init__(self, pending: int, retry_after: int):
        super().__init__(f"the server is busy: {pending} requests are queued; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Ticket:
    """One request's passage through the queue (kept in `history` for the status bar and tests)."""

    id: int
    label: str
    cancel: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    ended_at: float | None = None
    outcome: str = "queued"  # queued, running, done, cancelled (client left), skipped (left while queued), error
    items: int = 0
    last: Any = None  # the last item the job yielded (for the API: the final Chunk)


class SerialExecutor:
    """One daemon thread running callables in submission order (`loradesk serve`, tests, bench).
    In the app, the engine host's own serial pool is the executor instead."""

    def __init__(self, name: str = "loradesk-engine"):
        self._jobs: _queue.Queue = _queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __call__(self, fn: Callable[[], None]) -> None:
        self._jobs.put(fn)

    def _run(self) -> None:
        while True:
            fn = self._jobs.get()
            if fn is None:
                return
            fn()  # the queue's wrapper catches everything: one bad job never kills the thread

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)


_DONE = object()


class EngineQueue:
    def __init__(self, executor: Executor, max_pending: int = 16, history: int = 200):
        self.executor = executor
        self.max_pending = max_pending
        self.pending = 0  # queued + running
        self.peak_pending = 0  # the most ever waiting at once
        self.served = 0  # requests finished (any outcome): the app's status bar count
        self.history: deque[Ticket] = deque(maxlen=history)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._seconds = deque(maxlen=20)  # recent job durations, for Retry-After

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about one queue's worth of recent job times."""
        avg = sum(self._seconds) / len(self._seconds) if self._seconds else 1.0
        return max(1, min(60, round(avg * max(1, self.pending))))

    def submit(self, job: Callable[[threading.Event], Iterator[Any]], label: str = "",
               side_by_side: bool = False) -> tuple[Ticket, AsyncIterator[Any]]:
        """Queue `job` (called on the engine thread with the ticket's cancel event, or on a thread
        of its own when `side_by_side`); returns the ticket and an async iterator over what it
        yields. Raises QueueFull when the queue is full. Leaving the iterator early (client
        disconnect, task cancelled) cancels the job."""
        with self._lock:
            if self.pending >= self.max_pending:
                raise QueueFull(self.pending, self.retry_after())
            self.pending += 1
            self.peak_pending = max(self.peak_pending, self.pending)
        ticket = Ticket(next(self._ids), label)
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()

        def push(item) -> None:
            try:
                loop.call_soon_threadsafe(out.put_nowait, item)
            except RuntimeError:  # the server's loop has closed: nobody is listening any more
                ticket.cancel.set()

        def run() -> None:  # engine thread
            try:
                if ticket.cancel.is_set():
                    ticket.outcome = "skipped"
                    return
                ticket.started_at, ticket.outcome = time.perf_counter(), "running"
                for item in job(ticket.cancel):
                    ticket.items += 1
                    ticket.last = item
                    push(item)
                ticket.outcome = "cancelled" if ticket.cancel.is_set() else "done"
            except BaseException as e:  # noqa: BLE001 - handed to the request, which answers with it
                ticket.outcome = "error"
                push(e)
            finally:
                ticket.ended_at = time.perf_counter()
                if ticket.started_at is not None:
                    self._seconds.append(ticket.ended_at - ticket.started_at)
                with self._lock:
                    self.pending -= 1
                    self.served += 1
                self.history.append(ticket)
                push(_DONE)

        if side_by_side:
            threading.Thread(target=run, name=f"loradesk-request-{ticket.id}", daemon=True).start()
        else:
            self.executor(run)
        return ticket, self._drain(out, ticket)

    @staticmethod
    async def _drain(out: asyncio.Queue, ticket: Ticket) -> AsyncIterator[Any]:
        finished = False
        try:
            while True:
                item = await out.get()
                if item is _DONE:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            if not finished:  # the consumer left (or was cancelled) before the end
                ticket.cancel.set()
