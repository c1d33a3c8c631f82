"""One step of the llama.cpp engine's batch: every running request under one adapter set advances in a
single `llama_decode` call, then each samples its own next token with its own sampler.

A request reading its prompt puts a chunk of it in the batch (sized as `prefill_spans` sizes its
calls, so a step stays a fraction of a second and a Stop is seen in time); an answering request
puts in its last sampled token. Positions are per sequence, so each request's tokens go to its own
slot's sequence and attend only to it.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field

import llama_cpp

from app.engine.base import EngineError
from app.engine.rates import decode_rate, next_prefill_size
from app.engine.llamacpp_slots import Slot


class Batch:
    """A llama_batch of up to `size` tokens, one sequence id each, filled token by token."""

    def __init__(self, size: int):
        self.size = size
        self.raw = llama_cpp.llama_batch_init(size, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Add a token; returns its index in the batch (where its logits will be, if asked for)."""
        b, i = self.raw, self.n
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
        b.seq_id[i][0] = seq
        self.n += 1
        self.raw.n_tokens = self.n
        return i

    def free(self) -> None:
        if self.raw is not None:
            llama_cpp.llama_batch_free(self.raw)
            self.raw = None


@dataclass(eq=False)
class Answer:
    """One request's state in the batch."""

    slot: Slot
    read: int  # prompt tokens in the slot's cache (the reused prefix, then what was read)
    sampler: object  # llama_sampler_p: the request's own chain (temperature, top_p, seed)
    detok: object  # llamacpp_engine._Detokenizer
    start: float = field(default_factory=time.perf_counter)
    chunk: int | None = None  # prompt tokens to read in its next step (None: the first)
    idx: int = -1  # the batch index of its logits in this step; -1: none yet
    pending: int | None = None  # its last sampled token, to feed in its next step
    generated: int = 0
    prompt_tokens: int = 0
    prompt_tps: float = 0.0
    t_first: float | None = None
    peak: float = 0.0  # GB
    broken: bool = False  # a failed decode left its sequence in an unknown state

    def stats(self) -> dict:
        now = time.perf_counter()
        return {"prompt_tokens": self.prompt_tokens, "prompt_tps": self.prompt_tps,
                "generation_tokens": self.generated,
                "generation_tps": decode_rate(self.generated, self.t_first or now, now), "peak_memory": self.peak}


def fill(batch: Batch, group, most_prompt: int) -> list:
    """Put each request's tokens for this step in `batch`; returns the requests reading their prompt
    this step, with how many tokens each reads. Answering requests go first (one token each), so a
    long prompt never delays their next token by more than its chunk."""
    batch.clear()
    reading = []
    for r in group:
        a = r.state
        a.idx = -1
        if a.pending is not None:
            a.idx = batch.add(a.pending, len(a.slot.tokens), a.slot.seq, True)
            a.slot.tokens.append(a.pending)
            a.pending = None
    for r in group:
        a = r.state
        left = len(r.tokens) - a.read
        if a.generated or left <= 0:
            continue
        a.chunk = next_prefill_size(None, 0, 0.0, most_prompt) if a.chunk is None else a.chunk
        n = min(left, a.chunk, batch.size - batch.n)
        if n <= 0:
            continue  # the batch is full: next step
        for j in range(n):
            pos = a.read + j
            i = batch.add(r.tokens[pos], pos, a.slot.seq, pos == len(r.tokens) - 1)
        a.slot.tokens += r.tokens[a.read:a.read + n]
        a.read += n
        if a.read == len(r.tokens):
            a.idx = i
        reading.append((r, n))
    return reading


def step(engine, group, batch: Batch) -> None:
    """One forward call for `group` (requests under one adapter set), then each request's token."""
    import psutil

    engine._set(group[0].key)
    most = min(batch.size, engine.prefill_step_size)
    reading = fill(batch, group, most)
    if batch.n == 0:
        return
    t = time.perf_counter()
    try:
        engine._decode_batch(batch)
    except EngineError:
        for r in group:
            r.state.broken = True
        raise
    took = time.perf_counter() - t
    for r, n in reading:
        r.state.chunk = next_prefill_size(r.state.chunk, n, took, most)
    ctx, vocab = engine.ctx, engine.vocab
    for r in group:
        a = r.state
        if a.idx < 0:
            continue
        token = llama_cpp.llama_sampler_sample(a.sampler, ctx, a.idx)
        now = time.perf_counter()
        if a.t_first is None:
            a.t_first, a.prompt_tokens = now, len(r.tokens)
            a.prompt_tps = len(r.tokens) / max(now - a.start, 1e-9)
            a.peak = psutil.Process().memory_info().rss / 1e9
        a.generated += 1
        if a.generated % 32 == 0:
            a.peak = max(a.peak, psutil.Process().memory_info().rss / 1e9)
        stats = a.stats()
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            r.emit(a.detok.flush(), {**stats, "finish_reason": "stop"})
        elif a.generated >= r.settings.max_tokens:
            r.emit(a.detok.add(token) + a.detok.flush(), {**stats, "finish_reason": "length"})
        else:
            r.emit(a.detok.add(token), stats)
            a.pending = token


def piece_reader(vocab):
    """A token -> bytes function with its own buffer (the step loop's thread has one of its own)."""
    buf = [ctypes.create_string_buffer(256)]

    def piece(token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(vocab, token, buf[0], len(buf[0]), 0, True)
        if n < 0:
            buf[0] = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(vocab, token, buf[0], len(buf[0]), 0, True)
        return buf[0].raw[:n]

    return piece
