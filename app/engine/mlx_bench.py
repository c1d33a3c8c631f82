"""Reference measurements for `loradesk bench speed` on MLX: raw mlx-lm on the same model,
prompt and adapter, interleaved with the engine's own runs so both see the same machine state."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

from app.engine import mlx_thread
from app.engine.rates import decode_tps


def _raw_decode_tps(model, tokenizer, tokens: list[int], max_tokens: int) -> float:
    """Raw mlx_lm.stream_generate: decode steps after the first token over their own time."""
    import mlx.core as mx
    import mlx_lm

    stamps = []
    for _ in mlx_lm.stream_generate(model, tokenizer, mx.array(tokens), max_tokens=max_tokens):
        stamps.append(time.perf_counter())
    return decode_tps(stamps)


def reference(model_path: Path, adapter_folders: dict[str, Path], tokens: list[int], max_tokens: int,
              engine_decode: Callable[[], float], rounds: int = 3) -> dict:
    """Decode tokens/s of raw `mlx_lm.stream_generate` with mlx-lm's own LoRA layers (the first
    adapter), alternating with `engine_decode()` (our engine, same adapter active)."""
    import mlx_lm

    name, folder = next(iter(adapter_folders.items()))
    model, tokenizer = mlx_thread.call(mlx_lm.load, str(model_path), adapter_path=str(folder))
    raw, ours = [], []
    for _ in range(rounds):
        ours.append(engine_decode())
        raw.append(mlx_thread.call(_raw_decode_tps, model, tokenizer, tokens, max_tokens))
    del model
    r, o = statistics.median(raw), statistics.median(ours)
    return {
        "reference": "mlx_lm.stream_generate + mlx-lm LoRA layers",
        "reference_adapter": name,
        "raw_decode_tps": round(r, 3),
        "reference_decode_tps": round(r, 3),
        "engine_adapter_decode_tps": round(o, 3),
        "engine_vs_mlx_lm_ratio": round(o / r, 4),
        "engine_vs_reference_ratio": round(o / r, 4),
    }
