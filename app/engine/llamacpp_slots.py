"""Per-adapter KV slots: the sequences of one llama.cpp context, each filled under one adapter set.

The context keeps one KV cache per sequence id (`n_seq_max` of them) in one unified buffer of
n_ctx cells, so a single sequence may still use the whole context. A slot is a sequence id and
what it holds: the adapter set whose forward passes filled it (its key, ((name, scale), ...), () for
the base model) and those tokens. Keys and values computed under adapter A are wrong under B, so a
slot's cache only ever serves requests under its own key (llama.cpp server #26207 reuses it).

A request takes the slot of its key with the longest common prefix with its prompt; when that
slot is busy with another request, the prefix is copied into a free slot (`llama_memory_seq_cp`
shares the cells, nothing is recomputed). Free slots are empty ones first, then the least recently
used idle one, whose cache is dropped. The cells of busy slots are reserved up to their prompt plus
`max_tokens`, so a running answer never finds the context full; idle caches are evicted (least
recently used first) to make room.

Idle caches are *parked*: when a request takes a slot, every other idle slot's keys and values are
copied out to host memory (`llama_state_seq_get_data`) and its cells freed, and they are copied back
when a request of that set takes it again. In a unified cache each decode step attends over every
cell in use, whichever sequence owns it: 1,100-1,400 cells held by three idle adapter sets made
base decoding 0.80x as fast (0.5B Q4_K_M, 2 cores). A copy out and back costs a memcpy of a few MB
per thousand tokens; reading the prompt again costs seconds. Parked tokens are capped at n_ctx
(least recently used dropped first), so host memory holds at most one more KV buffer.
"""
from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass, field

import llama_cpp

_clock = itertools.count(1)  # use order, for least-recently-used


@dataclass
class Slot:
    seq: int  # the llama.cpp sequence id
    key: tuple | None = None  # the adapter set that filled it; None: empty
    tokens: list[int] = field(default_factory=list)  # the tokens whose keys/values it holds, from position 0
    busy: bool = False  # a request is reading or answering in it
    reserved: int = 0  # cells it may grow to while busy: prompt + max_tokens
    used: int = 0  # when it was last taken (a _clock tick)
    parked: ctypes.Array | None = None  # its cells' state in host memory, out of the context


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    for x, y in zip(a[:limit], b[:limit]):
        if x != y:
            break
        n += 1
    return n


class SlotTable:
    def __init__(self, ctx, n_seq: int, n_ctx: int, bytes_per_token: int):
        self.ctx = ctx
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.slots = [Slot(i) for i in range(n_seq)]
        self.n_ctx = n_ctx
        self.bytes_per_token = bytes_per_token  # K and V of one token over all layers
        self.evictions = 0

    # -- taking and giving back ---------------------------------------------------------------
    def acquire(self, key: tuple, tokens: list[int], reserve: int, reuse: int | None = None) -> tuple[Slot, int] | None:
        """A slot for `tokens` under adapter set `key`, and how many of them it already holds (at
        most all but the last, whose logits are needed, and at most `reuse`). `reserve` cells are
        kept for it (prompt + answer). None when every slot is busy or the busy ones leave no room:
        try again later."""
        limit = len(tokens) - 1 if reuse is None else min(reuse, len(tokens) - 1)
        best, keep = None, 0
        for s in self.slots:
            if s.key == key:
                n = common_prefix(s.tokens, tokens, limit)
                if n > keep or (n == keep and best is not None and best.busy and not s.busy):
                    best, keep = s, n
        slot = best if best is not None and not best.busy else self._free_slot()
        if slot is None:
            return None
        self._park_idle(but=slot)  # before making room: parked caches need none
        if not self._make_room(reserve, slot):
            return None
        if slot is best and not self._unpark(slot):
            best, keep = None, 0  # could not be copied back: read the prompt again
        if slot is best:
            self._trim(slot, keep)
        else:
            self._clear(slot)
            if best is not None and keep:  # a busy slot of the same set holds the prefix: share it
                llama_cpp.llama_memory_seq_cp(self.mem, best.seq, slot.seq, 0, keep)
                slot.tokens = tokens[:keep]
            slot.key = key
        slot.busy, slot.reserved, slot.used = True, reserve, next(_clock)
        return slot, len(slot.tokens)

    def release(self, slot: Slot, keep_cache: bool = True) -> None:
        """The request is done; its cache stays for the next request under the same set (unless
        it may be wrong: an error or a replaced adapter)."""
        slot.busy, slot.reserved = False, 0
        if not keep_cache:
            self._clear(slot)

    def forget(self, name: str) -> None:
        """Drop the idle caches made under any set containing adapter `name` (replaced or removed)."""
        for s in self.slots:
            if s.key and any(n == name for n, _ in s.key) and not s.busy:
                self._clear(s)

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.mem, True)
        for s in self.slots:
            s.key, s.tokens, s.busy, s.reserved, s.parked = None, [], False, 0, None

    # -- parking ----------------------------------------------------------------------------------
    def _park_idle(self, but: Slot) -> None:
        for s in self.slots:
            if s is not but and not s.busy and s.tokens and s.parked is None:
                size = llama_cpp.llama_state_seq_get_size(self.ctx, s.seq)
                buf = (ctypes.c_uint8 * size)()
                if llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, s.seq) != size:
                    self._clear(s)  # could not be saved: dropped, as an eviction would
                    continue
                llama_cpp.llama_memory_seq_rm(self.mem, s.seq, -1, -1)
                s.parked = buf
        parked = sorted((s for s in self.slots if s.parked is not None), key=lambda s: s.used)
        while parked and sum(len(s.tokens) for s in parked) > self.n_ctx:
            self._clear(parked.pop(0))
            self.evictions += 1

    def _unpark(self, slot: Slot) -> bool:
        """Copy a parked slot's cells back into the context (False: no room for them; dropped)."""
        if slot.parked is None:
            return True
        buf, slot.parked = slot.parked, None
        if llama_cpp.llama_state_seq_set_data(self.ctx, buf, len(buf), slot.seq) != len(buf):
            self._clear(slot)
            return False
        return True

    # -- room -----------------------------------------------------------------------------------
    def cells(self) -> int:
        """Cells in use or reserved (a prefix shared by seq_cp is counted once per slot: an upper
        bound); a parked slot's tokens are not in the context, but count once it is taken back."""
        return sum(max(s.reserved, len(s.tokens)) if s.busy else 0 if s.parked is not None else len(s.tokens)
                   for s in self.slots)

    def _free_slot(self) -> Slot | None:
        idle = [s for s in self.slots if not s.busy]
        empty = [s for s in idle if s.key is None]
        if empty:
            return empty[0]
        return min(idle, key=lambda s: s.used) if idle else None

    def _make_room(self, reserve: int, taking: Slot) -> bool:
        """Evict idle caches, least recently used first, until `reserve` more cells fit."""
        held = 0 if taking.parked is not None else len(taking.tokens)  # counted in `reserve`
        need = lambda: self.cells() - held + reserve - self.n_ctx  # noqa: E731
        if need() <= 0:
            return True
        for s in sorted((s for s in self.slots if not s.busy and s.tokens and s is not taking and s.parked is None),
                        key=lambda s: s.used):
            self._clear(s)
            self.evictions += 1
            if need() <= 0:
                return True
        return need() <= 0

    def _trim(self, slot: Slot, keep: int) -> None:
        if keep < len(slot.tokens):
            if not llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, keep, -1):
                self._clear(slot)
                return
            slot.tokens = slot.tokens[:keep]

    def _clear(self, slot: Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)  # a whole sequence: never fails
        slot.key, slot.tokens, slot.parked = None, [], None

    # -- report -----------------------------------------------------------------------------------
    def report(self) -> dict:
        """What the slots hold, for `info` and the status bar: the KV buffer is allocated once for
        the whole context; each slot's share is its tokens times bytes_per_token."""
        held = [s for s in self.slots if s.tokens or s.busy]
        by_set: dict[str, int] = {}
        for s in held:
            if s.key is not None:
                by_set[_label(s.key)] = by_set.get(_label(s.key), 0) + len(s.tokens)
        parked = [s for s in held if s.parked is not None]
        in_ctx = sum(len(s.tokens) for s in held if s.parked is None)
        return {
            "slots": len(self.slots),
            "in_use": len(held),
            "busy": sum(s.busy for s in self.slots),
            "tokens": sum(len(s.tokens) for s in held),
            "bytes": in_ctx * self.bytes_per_token,  # in the context's KV buffer
            "parked": len(parked),
            "parked_tokens": sum(len(s.tokens) for s in parked),
            "parked_bytes": sum(len(s.parked) for s in parked),  # in host memory
            "capacity_bytes": self.n_ctx * self.bytes_per_token,
            "evictions": self.evictions,
            "by_adapter_set": by_set,
        }


def _label(key: tuple) -> str:
    if not key:
        return "base"
    if len(key) == 1 and key[0][1] == 1.0:
        return key[0][0]
    return "+".join(f"{n}={w:g}" for n, w in key)
