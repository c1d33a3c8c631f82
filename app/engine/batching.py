"""Continuous batching with fair turns between adapter sets: the step loop of an engine that decodes
several answers at once (llama.cpp).

Requests under one adapter set (a key) form a group. A step runs one group: each of its running
requests advances in the same forward call (a chunk of its prompt while it reads the prompt, then
one token a step). Requests join and leave between steps. Groups take turns round-robin,
`steps_per_turn` steps each, so a long answer under one set never holds back another set's short
one: with G groups running, a request waits at most G-1 other groups' turns between its tokens.

No llama.cpp here: the engine gives `admit(request)` (a sequence and its cached prefix, or not
yet), `step(group)` (one forward call, emitting each request's pieces) and `release(request, ok)`;
this module owns the thread, the order, cancel and the consumers' side.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


@dataclass
class BatchConfig:
    max_batch: int = 8
    """Answers decoded at once, over all adapter sets; 1 is one at a time (batching off)."""
    steps_per_turn: int = 1
    """Steps an adapter set's group runs before the next group's turn."""
    idle_slots: int = 4
    """Sequences beyond max_batch that keep the prompt caches of adapter sets not running now."""

    def __post_init__(self):
        if self.max_batch < 1 or self.steps_per_turn < 1 or self.idle_slots < 0:
            raise ValueError(f"max_batch and steps_per_turn must be at least 1 and idle_slots at least 0 ({self})")

    @property
    def sequences(self) -> int:
        return self.max_batch + self.idle_slots


@dataclass(eq=False)
class Request:
    key: tuple  # the adapter set: ((name, scale), ...), () for the base model
    tokens: list[int]  # the prompt
    settings: Any  # app.tasks.GenerationSettings
    cancel: threading.Event | None = None  # Stop / client disconnect
    state: Any = None  # the engine's own: slot, sampler, detokenizer, counters
    done: bool = False
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # (piece, stats), or an exception
    left: threading.Event = field(default_factory=threading.Event)  # the consumer stopped reading

    @property
    def stopped(self) -> bool:
        return self.left.is_set() or (self.cancel is not None and self.cancel.is_set())

    def emit(self, piece: str, stats: dict) -> None:
        self.out.put((piece, stats))
        if stats.get("finish_reason"):
            self.done = True

    def fail(self, error: BaseException) -> None:
        self.out.put(error)
        self.done = True

    def results(self) -> Iterator[tuple[str, dict]]:
        """The consumer's side: (piece, stats) until the one with a finish_reason. Leaving early
        (a stop string, a closed stream) takes the request out of the batch at the next step."""
        try:
            while True:
                item = self.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item[1].get("finish_reason"):
                    return
        finally:
            self.left.set()


class StepLock:
    """The engine's lock (reentrant), which the step loop hands over between steps: a thread
    waiting for it (an adapter switch, a load, a log-likelihood) gets it after at most one step,
    instead of losing every race to the loop taking it again."""

    def __init__(self):
        self._lock = threading.RLock()
        self._count = threading.Lock()
        self._waiting = 0

    def acquire(self) -> None:
        with self._count:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count:
                self._waiting -= 1

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def hand_over(self, most: float = 0.05) -> None:
        """Called by the loop with the lock released: wait (briefly) while others want it."""
        end = time.monotonic() + most
        while self._waiting and time.monotonic() < end:
            time.sleep(0.0005)


class Scheduler:
    def __init__(self, lock: StepLock, admit: Callable[[Request], bool], step: Callable[[list[Request]], None],
                 release: Callable[[Request, bool], None], config: BatchConfig):
        self.lock, self.config = lock, config
        self._admit_one, self._step, self._release = admit, step, release
        self._cv = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: dict[tuple, list[Request]] = {}  # key -> its group, in arrival order
        self._turns: deque[tuple] = deque()  # group keys in round-robin order
        self._turn_steps = 0
        self._closed: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- the callers' side --------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        with self._cv:
            if self._closed is not None:
                raise self._closed
            self._waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="loradesk-batch", daemon=True)
                self._thread.start()
            self._cv.notify()
        return request

    def close(self, error: BaseException) -> None:
        """Stop the loop (the model goes away): every waiting and running request ends with `error`.
        The caller holds the engine lock, so no step is running."""
        with self._cv:
            self._closed = error
            for r in [*self._waiting, *(r for g in self._running.values() for r in g)]:
                r.fail(error)
            self._waiting.clear()
            self._running.clear()
            self._turns.clear()
            self._cv.notify()

    def fail_where(self, pred: Callable[[tuple], bool], error: BaseException, waiting: bool = True) -> None:
        """End the running requests whose key matches (an adapter replaced or removed mid-answer:
        the rest of it would come from other weights), and the waiting ones too unless `waiting` is
        False (replaced: they have not started, so they answer with the new weights). The caller
        holds the lock."""
        with self._cv:
            for r in [r for r in self._waiting if waiting and pred(r.key)]:
                self._waiting.remove(r)
                r.fail(error)
            for key in [k for k in self._running if pred(k)]:
                for r in self._running.pop(key):
                    r.fail(error)
                    self._release(r, False)
                self._drop_turn(key)

    def running(self) -> int:
        return sum(len(g) for g in self._running.values())

    def waiting(self) -> int:
        return len(self._waiting)

    # -- the loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while self._closed is None and not self._waiting and not self._running:
                    self._cv.wait()
            with self.lock:
                if self._closed is not None:
                    return
                self._retire(drop_stopped=True)
                self._admit()
                group = self._next_group()
                if group:
                    try:
                        self._step(group)
                    except Exception as e:  # noqa: BLE001 - the group's requests answer with it
                        for r in group:
                            if not r.done:
                                r.fail(e)
                    self.steps += 1
                    self._retire(drop_stopped=False)
            self.lock.hand_over()

    def _admit(self) -> None:
        with self._cv:
            while self._waiting and self.running() < self.config.max_batch:
                r = self._waiting[0]
                if r.stopped:  # left while queued: never read its prompt
                    self._waiting.popleft()
                    self._finish_unstarted(r)
                    continue
                try:
                    ok = self._admit_one(r)
                except Exception as e:  # noqa: BLE001 - e.g. a prompt that can never fit
                    self._waiting.popleft()
                    r.fail(e)
                    continue
                if not ok:
                    return  # first come, first served: the rest wait behind it
                self._waiting.popleft()
                if r.key not in self._running:
                    self._running[r.key] = []
                    self._turns.append(r.key)
                self._running[r.key].append(r)

    def _finish_unstarted(self, r: Request) -> None:
        if not r.left.is_set():
            r.emit("", {"prompt_tokens": len(r.tokens), "generation_tokens": 0, "finish_reason": "cancelled"})
        r.done = True

    def _next_group(self) -> list[Request]:
        """The group whose turn it is: the same one for `steps_per_turn` steps, then the next."""
        if not self._turns:
            return []
        if self._turn_steps >= self.config.steps_per_turn:
            self._turns.rotate(-1)
            self._turn_steps = 0
        self._turn_steps += 1
        return list(self._running[self._turns[0]])

    def _retire(self, drop_stopped: bool) -> None:
        """Take finished requests out (and, before a step, those cancelled or abandoned, which
        get their 'cancelled' end here: nothing more is computed for them)."""
        with self._cv:
            for key in list(self._running):
                group = self._running[key]
                for r in list(group):
                    if not r.done and drop_stopped and r.stopped:
                        self._cancelled(r)
                    if r.done:
                        group.remove(r)
                        self._release(r, True)
                if not group:
                    del self._running[key]
                    self._drop_turn(key)

    def _drop_turn(self, key: tuple) -> None:
        if self._turns and self._turns[0] == key:
            self._turn_steps = 0  # the next group's turn starts now
        self._turns.remove(key)

    @staticmethod
    def _cancelled(r: Request) -> None:
        if r.left.is_set():
            r.done = True
            return
        stats = dict(getattr(r.state, "stats", lambda: {})())
        r.emit("", {**stats, "finish_reason": "cancelled"})
