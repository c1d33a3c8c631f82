"""When the llama.cpp engine uses a merged copy of an adapter set (llamacpp_merge.py builds it).

One rule, applied at every `_set` (an activation, or a batch step under a set): a copy is built in
a background thread once one adapter set has been the only one decoded for `merge_after` seconds;
it is swapped in while that set decodes (the context then has no LoRA) and swapped out, a few
field writes, when another set decodes. A step under another adapter set, low free memory, or the
adapter's weights changing or going drops it: at most one copy, for the newest use. The copy and
base + LoRA agree to within the copy's rounding, so a KV slot filled by one serves the other.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time

import llama_cpp

from app.engine import llamacpp_merge as merging
from app.engine.base import AdapterError, EngineError


class MergedCopies:
    """Mixin for LlamaCppEngine: its `_set` and the merged copy's life."""

    def _init_merging(self) -> None:
        # None = off; else seconds an adapter set must be decoded alone before its copy is built.
        self.merge_after = merge_after()
        self.merge_keep_type = merge_keep_type()
        self.merge_min_free = int(float(os.environ.get("LORADESK_MERGE_MIN_FREE_MB", 1024)) * 2**20)
        self.merge_note = "" if self.merge_after is not None else "off (LORADESK_MERGE=off)"
        self._applied: tuple = ()  # the (name, scale) pairs decoded under now
        self._ctx_loras: tuple | None = ()  # what llama_set_adapters_lora last gave the context
        self._since = time.monotonic()  # when _applied last changed
        self._merged: merging.MergedCopy | None = None
        self._merged_held = False  # use_merged(False): keep the copy, decode with the resident LoRA
        self._building: tuple | None = None  # (adapter set, cancel event, thread)
        self._built: merging.MergedCopy | None = None  # handed over by the build thread
        self._tensors: dict[str, int] | None = None

    def _set(self, pairs: tuple, force: bool = False) -> None:
        """Decode under these (adapter, scale) pairs from now on (the caller holds the lock): the
        merged copy in or out, and the context's LoRA set to match. Each KV slot is filled under
        one set, so the caches stay right (llamacpp_slots.py)."""
        if pairs != self._applied:
            self._since = time.monotonic()
            self._applied = pairs
        self._sync(force)

    def _ctx_set(self, pairs: tuple) -> None:
        n = len(pairs)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*(self._lora[a][0] for a, _ in pairs)) if n else None
        scales = (ctypes.c_float * n)(*(s for _, s in pairs)) if n else None
        self._ctx_loras = None  # unknown until the call succeeds
        if llama_cpp.llama_set_adapters_lora(self.ctx, handles, n, scales) != 0:
            raise AdapterError(f"llama.cpp refused the adapter set {[a for a, _ in pairs]}")
        self._ctx_loras = pairs

    def _sync(self, force: bool = False) -> None:
        built, self._built = self._built, None
        if built is not None:
            if built.key == self._applied and self._merged is None:
                self._merged = built
            else:
                built.free()
                self.merge_note = ""
        m = self._merged
        if m is not None:
            pressure = _available_memory() < self.merge_min_free
            if pressure:
                self.merge_note = f"dropped: less than {self.merge_min_free // 2**20} MB of memory free"
            if pressure or (self._applied and m.key != self._applied):
                if not pressure:
                    self.merge_note = f"dropped: {_label(self._applied)} answered (one copy at a time)"
                self._drop_merged()
            elif m.key == self._applied and not self._merged_held:
                m.apply()
            else:
                m.restore()
        want = () if self._merged is not None and self._merged.applied else self._applied
        if force or want != self._ctx_loras:
            self._ctx_set(want)
        self._maybe_build()

    def use_merged(self, on: bool) -> None:
        """Whether a built copy is swapped in (the benchmark compares both on one engine)."""
        with self._lock:
            self._merged_held = not on
            self._sync()

    def _maybe_build(self) -> None:
        if (self.merge_after is None or self._merged_held or not self._applied or self._tensors == {}
                or (self._merged is not None and self._merged.key == self._applied)
                or (self._building is not None and self._building[0] == self._applied)
                or time.monotonic() - self._since < self.merge_after):
            return
        if _available_memory() < 2 * self.merge_min_free:
            self.merge_note = f"not built: less than {2 * self.merge_min_free // 2**20} MB of memory free"
            return
        if self._tensors is None:
            try:
                self._tensors = merging.tensor_table(self.model)
            except merging.MergeUnavailable as e:
                self._tensors, self.merge_note = {}, f"off: {e}"
                return
        if self._building is not None:
            self._building[1].set()
        key, cancel = self._applied, threading.Event()
        loras = [(self._lora[name][1], scale) for name, scale in key]
        thread = threading.Thread(target=self._build, args=(key, loras, cancel), name="loradesk-merge", daemon=True)
        self._building = (key, cancel, thread)
        self.merge_note = f"building for {_label(key)}"
        thread.start()

    def _build(self, key: tuple, loras: list, cancel: threading.Event) -> None:
        """The build thread: numpy on the GGUF files, then hands the copy to _sync."""
        start = time.perf_counter()
        copy = None
        try:
            merged = merging.build(self.model_info.path, loras, cancel, self.merge_keep_type)
            if merged and not cancel.is_set():
                copy = merging.assemble(key, self._tensors, merged)
        except Exception as e:  # noqa: BLE001 - a failed build leaves the resident LoRA in use
            self.merge_note = f"failed for {_label(key)}: {e}"
        if copy is not None and cancel.is_set():
            copy.free()
        elif copy is not None:
            copy.seconds = time.perf_counter() - start
            self.merge_note = f"ready for {_label(key)} ({copy.nbytes / 2**20:.0f} MB, built in {copy.seconds:.1f} s)"
            self._built = copy  # before _building clears, so no second build starts in between
        building = self._building
        if building is not None and building[0] == key and building[1] is cancel:
            self._building = None

    def merge_now(self, timeout: float | None = None) -> merging.MergedCopy | None:
        """Build the active adapter set's merged copy now and swap it in (the benchmark, tests)."""
        with self._lock:
            after, held = self.merge_after, self._merged_held
            self.merge_after, self._merged_held = 0.0, False
            try:
                self._set(tuple(self.mix.items()))
            finally:
                self.merge_after, self._merged_held = after, held
            building = self._building
        if building is not None:
            building[2].join(timeout)
        with self._lock:
            self._sync()
            return self._merged

    def _drop_merged(self, wait: bool = False) -> None:
        if self._building is not None:
            self._building[1].set()
            if wait:
                self._building[2].join()
        if self._merged is not None:
            self._merged.free()  # swapped out first
            self._merged = None
        built, self._built = self._built, None
        if built is not None:
            built.free()

    def _drop_merged_with(self, name: str) -> None:
        """The adapter's weights are about to change or go: its copy goes (the context gets its
        LoRA set again at the next _set)."""
        if self._building is not None and any(n == name for n, _ in self._building[0]):
            self._building[1].set()
        if self._merged is not None and any(n == name for n, _ in self._merged.key):
            self._drop_merged()
            self.merge_note = f"dropped: {name} was replaced or removed"
            self._ctx_loras = None

    def merge_status(self) -> str:
        """For `info` and the status bar: the merged copy's state and memory."""
        m = self._merged
        if m is not None:
            return (f"merged copy of {_label(m.key)}: {m.nbytes / 2**20:.0f} MB, "
                    + ("in use" if m.applied else "kept, not in use"))
        return self.merge_note or (f"merged copy: after an adapter is active {self.merge_after:g} s"
                                   if self.merge_after is not None else "off")


def merge_after() -> float | None:
    """LORADESK_MERGE: seconds an adapter set stays active before its merged copy is built
    (default 5), or "off"."""
    value = os.environ.get("LORADESK_MERGE", "5").strip().lower()
    if value in ("off", "no", "false", "never"):
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        raise EngineError(f"LORADESK_MERGE takes seconds or 'off', not {value!r}") from None


def merge_keep_type() -> bool:
    """LORADESK_MERGE_TYPE: "q8_0" (default) or "base" (the base's own 32-wide type)."""
    value = os.environ.get("LORADESK_MERGE_TYPE", "q8_0").strip().lower()
    if value not in ("q8_0", "base"):
        raise EngineError(f"LORADESK_MERGE_TYPE takes 'q8_0' or 'base', not {value!r}")
    return value == "base"


def _available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


def _label(key: tuple) -> str:
    return "+".join(name if scale == 1.0 else f"{name}:{scale:g}" for name, scale in key)
