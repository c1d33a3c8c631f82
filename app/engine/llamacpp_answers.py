"""The llama.cpp engine's answers through its KV slots and batch scheduler (a mixin of
LlamaCppEngine): each answer is a request under its own adapter set; the scheduler (batching.py)
admits it to a slot (llamacpp_slots.py) and steps it with the others (llamacpp_batch.py). Reads
outside the batch (log-likelihoods, parity checks) take a slot of their own under the lock.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import llama_cpp
import numpy as np

from app.engine.base import ACTIVE, EngineError
from app.engine.batching import Request
from app.engine.llamacpp_batch import Answer, Batch
from app.engine.llamacpp_setup import BATCH
from app.tasks import GenerationSettings


class SlotAnswers:
    @property
    def max_batch(self) -> int:
        return self.batch.max_batch

    def _key(self, adapter) -> tuple:
        """The adapter set an answer runs under, as (name, scale) pairs (the slots' and groups' key)."""
        from app.engine.mix import check_names, check_weights

        if adapter is ACTIVE:
            return tuple(self.mix.items())
        if adapter is None:
            return ()
        if isinstance(adapter, Mapping):
            weights = check_weights(adapter)
            check_names(weights, self.adapters)
            return tuple(weights.items())
        self.check_adapter_name(adapter)
        return ((adapter, 1.0),)

    @contextlib.contextmanager
    def _answering(self, adapter):
        """Answers are not serialized here: each is a request to the scheduler, under its own
        adapter set, and the engine's lock is taken only for a step at a time."""
        key = self._key(adapter)
        yield lambda tokens, settings, cancel: self._stream_tokens(tokens, settings, cancel, key)

    def _stream_tokens(self, tokens: list[int], settings: GenerationSettings, cancel=None,
                       key: tuple | None = None) -> Iterator[tuple[str, dict]]:
        key = tuple(self.mix.items()) if key is None else key
        scheduler = self._scheduler
        if scheduler is None:
            raise EngineError("no model is loaded; load one first (loradesk --model REF)")
        yield from scheduler.submit(Request(key, list(tokens), settings, cancel)).results()

    def _admit(self, r: Request) -> bool:
        """A slot for the request (its cached prefix kept), or False to wait for one."""
        missing = [n for n, _ in r.key if n not in self._lora]
        if missing:
            raise EngineError(f"adapter {missing[0]!r} was removed before the answer started; ask again")
        got = self._slots.acquire(r.key, r.tokens, len(r.tokens) + r.settings.max_tokens)
        if got is None:
            if self._scheduler.running() == 0:
                raise EngineError(f"the prompt and answer ({len(r.tokens)} + {r.settings.max_tokens} tokens) do not "
                                  f"fit the context ({self.context_length} tokens); shorten them or set LORADESK_CTX")
            return False
        slot, kept = got
        r.state = Answer(slot, kept, self._sampler(r.settings), self._new_detok())
        return True

    def _release(self, r: Request, ok: bool) -> None:
        a = r.state
        if a is None:
            return
        llama_cpp.llama_sampler_free(a.sampler)
        self._slots.release(a.slot, keep_cache=ok and not a.broken)
        r.state = None

    def _decode_batch(self, batch: Batch) -> None:
        rc = llama_cpp.llama_decode(self.ctx, batch.raw)
        if rc != 0:
            raise EngineError(f"llama.cpp could not decode ({rc}): the context ({self.context_length} tokens) "
                              "may be full")

    def cached_prefix(self, tokens: list[int], adapter=ACTIVE) -> int:
        """How many of these prompt tokens an answer under `adapter` would find in a slot's cache."""
        from app.engine.llamacpp_slots import common_prefix

        key = self._key(adapter)
        with self._lock:
            return max((common_prefix(s.tokens, tokens, len(tokens) - 1) for s in self._slots.slots if s.key == key),
                       default=0)

    def slots_report(self) -> dict:
        with self._lock:
            return {**self._slots.report(), "max_batch": self.batch.max_batch,
                    "running": self._scheduler.running(), "waiting": self._scheduler.waiting()}

    def scheduling(self) -> str:
        if self._slots is None:
            return super().scheduling()
        r = self.slots_report()
        mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
        return (f"batched: up to {r['max_batch']} answers per step, adapter sets take turns; KV slots: "
                f"{r['slots']} sequences over one {self.context_length}-token cache ({mb(r['capacity_bytes'])}), "
                f"{r['in_use']} in use holding {r['tokens']} tokens ({mb(r['bytes'])})")

    def batch_status(self) -> str:
        if self._slots is None:
            return ""
        r = self.slots_report()
        waiting = f", {r['waiting']} waiting" if r["waiting"] else ""
        return (f"{r['running']} answering{waiting} · KV slots {r['in_use']}/{r['slots']}, "
                f"{r['tokens']} tokens ({r['bytes'] / 1e6:.1f} MB)")

    def _read(self, tokens: list[int], every: bool = False, reuse: int | None = None) -> tuple[int, list[np.ndarray]]:
        """Read `tokens` under the active set in a slot of its own (the caller holds the lock, so
        no step runs meanwhile), reusing a cached prefix of at most `reuse` tokens. Returns that
        prefix's length and the logits at every token after it (`every`), or at the last. For
        log-likelihoods and parity checks, outside the batch."""
        key = tuple(self.mix.items())
        got = self._slots.acquire(key, tokens, len(tokens), reuse)
        if got is None:
            raise EngineError("the context is full with running answers; try again when they finish")
        slot, kept = got
        ok = False
        try:
            self._set(key)
            out = []
            for lo in range(kept, len(tokens), BATCH):
                chunk = tokens[lo:lo + BATCH]
                self._batch.clear()
                for j, tok in enumerate(chunk):
                    self._batch.add(tok, lo + j, slot.seq, every or lo + j == len(tokens) - 1)
                self._decode_batch(self._batch)
                slot.tokens += chunk
                if every:
                    out += [self._logits(j).copy() for j in range(len(chunk))]
            if not every:
                out.append(self._logits().copy())
            ok = True
            return kept, out
        finally:
            self._slots.release(slot, keep_cache=ok)
