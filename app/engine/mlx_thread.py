"""One thread that owns every MLX computation in the process.

MLX streams are thread-affine (mlx >= 0.31): arrays evaluated on one thread's stream and then on
another's, or thread-local streams torn down at interpreter exit, abort the process ("terminate
called without an active exception", ml-explore/mlx#3126, #3355). So the MLX engine (and anything
else that runs MLX in this process) submits its work here, and at exit this thread clears its
streams (mx.clear_streams, mlx#3395) before it is joined.
"""
from __future__ import annotations

import atexit
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterator

_STOP = object()
_END = object()


class _MLXThread:
    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="mlx", daemon=True)
        self._thread.start()

    def _loop(self):
        while True:
            job = self._jobs.get()
            if job is _STOP:
                break
            fn, args, kwargs, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)
        try:
            import mlx.core as mx

            mx.synchronize()
            mx.clear_streams()
        except Exception:
            pass

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        fut: Future = Future()
        if threading.current_thread() is self._thread:  # re-entrant: run inline
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001
                fut.set_exception(e)
            return fut
        self._jobs.put((fn, args, kwargs, fut))
        return fut

    def stop(self):
        if self._thread.is_alive():
            self._jobs.put(_STOP)
            self._thread.join(timeout=30)


_instance: _MLXThread | None = None
_lock = threading.Lock()


def _get() -> _MLXThread:
    global _instance
    with _lock:
        if _instance is None:
            _instance = _MLXThread()
            atexit.register(_instance.stop)
        return _instance


def call(fn: Callable, *args, **kwargs) -> Any:
    """Run fn on the MLX thread and return its result (or raise its exception)."""
    return _get().submit(fn, *args, **kwargs).result()


def iterate(make_iter: Callable[[], Iterator], cancel: threading.Event | None = None) -> Iterator:
    """Drive an iterator on the MLX thread, yielding its items here as they come.

    Closing the returned generator (or setting `cancel`) stops the producer before its next item.
    """
    items: queue.Queue = queue.Queue(maxsize=64)
    stop = threading.Event()

    def produce():
        it = None
        try:
            it = make_iter()  # may raise (e.g. a broken engine): the consumer must still get _END
            for item in it:
                items.put(item)
                if stop.is_set() or (cancel is not None and cancel.is_set()):
                    break
        except BaseException as e:  # noqa: BLE001
            items.put(_Raised(e))
        finally:
            close = getattr(it, "close", None)
            if close:
                close()
            items.put(_END)

    fut = _get().submit(produce) if threading.current_thread() is not _get()._thread else None
    if fut is None:  # already on the MLX thread: iterate inline
        yield from make_iter()
        return
    try:
        while True:
            item = items.get()
            if item is _END:
                break
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        while not fut.done():  # drain so the producer is never blocked on a full queue
            try:
                items.get(timeout=0.05)
            except queue.Empty:
                pass
        fut.result()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error
