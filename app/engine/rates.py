"""Rates and the prefill's pace: the one rule each for decode tokens/s, percentiles and the size
of a prefill forward call, shared by every engine and benchmark."""
from __future__ import annotations

import time
from typing import Iterator

# Target duration of one prefill forward call: a Stop waits for at most about this long. Longer
# calls waste less on the per-call cost (on a busy 2-core CPU, 32-token calls of a small model read
# a 2k-token prompt several times slower than one call; 200-token calls about 2x).
PREFILL_SECONDS = 0.4
PREFILL_FIRST = 32  # tokens in the first call, before the model's speed is known


def prefill_spans(n: int, most: int, seconds: float = PREFILL_SECONDS) -> Iterator[tuple[int, int]]:
    """(start, end) of each prefill forward call over `n` prompt tokens, at most `most` tokens each.

    The caller runs one call per span before asking for the next; the time between two steps of
    this generator is that call's duration, and the next span is sized to take about `seconds` at
    that speed (growing at most 4x a step). A tiny model reads its prompt in a few large calls; a
    1.5B model on a laptop CPU (100-300 tokens/s) in calls of a few dozen tokens. Never fewer than
    PREFILL_FIRST tokens a call (unless `most` is smaller): a call has a fixed cost, so on a busy
    machine ever smaller calls would only measure slower and slower (1-token calls made a 2k-token
    prefill 50x slower).
    """
    lo, size = 0, next_prefill_size(None, 0, 0.0, most, seconds)
    while lo < n:
        hi = min(n, lo + size)
        t = time.perf_counter()
        yield lo, hi
        size = next_prefill_size(size, hi - lo, time.perf_counter() - t, most, seconds)
        lo = hi


def next_prefill_size(size: int | None, done: int, took: float, most: int, seconds: float = PREFILL_SECONDS) -> int:
    """Tokens for the next prefill call after one of `size` tokens read `done` in `took` seconds
    (None: the first call). The rule of `prefill_spans`, also used by the batching step loop."""
    floor = max(1, min(PREFILL_FIRST, most))
    if size is None:
        return floor
    rate = done / max(took, 1e-6)
    return min(most, max(floor, min(4 * size, int(rate * seconds))))



def decode_rate(tokens: int, first: float, now: float) -> float:
    """Decode tokens/s after `tokens` generated tokens, the first at time `first`: the steps after
    the first token (the prefill produced it) over their own time. The one rule for every engine's
    stream and every raw reference (N tokens over N-1 steps would overstate 32 tokens by 3 %)."""
    return (tokens - 1) / max(now - first, 1e-9) if tokens > 1 else 0.0


def decode_tps(stamps: list[float]) -> float:
    """decode_rate from the times at which each generated token became available."""
    return decode_rate(len(stamps), stamps[0], stamps[-1]) if stamps else 0.0


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values` by the nearest rank: a value that was measured, never an
    interpolation (a p99 of 100 switches is the 99th slowest). The one rule of every benchmark."""
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]
