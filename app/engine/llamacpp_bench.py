"""Reference measurements for `loradesk bench speed --engine llamacpp`: llama-cpp-python's own
`Llama` on the same GGUF, prompt tokens, adapter (the engine's converted GGUF LoRA file), context
and thread settings, alternating with the engine's runs so both see the same machine state."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from app.engine.rates import decode_tps
from app.engine.llamacpp_setup import BATCH, extra_buffers


def _raw_decode_tps(llm, tokens: list[int], max_tokens: int) -> float:
    """Greedy `Llama.generate`: decode steps after the first token over their own time."""
    stamps = []
    eos = llm.token_eos()
    for tok in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
        stamps.append(time.perf_counter())
        if tok == eos or len(stamps) >= max_tokens:
            break
    return decode_tps(stamps)


@contextmanager
def _same_model_params():
    """`Llama` takes no `use_extra_bufts`: give it the engine's choice (see extra_buffers) through
    the defaults it starts from, so both sides run the same kernels and neither meets the AMX crash."""
    import llama_cpp.llama as high

    default = high.llama_cpp.llama_model_default_params
    on = extra_buffers()[0]

    def params():
        p = default()
        p.use_extra_bufts = on
        return p

    high.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        high.llama_cpp.llama_model_default_params = default


def reference(model_path: Path, adapter_folders: dict[str, Path], tokens: list[int], max_tokens: int,
              engine_decode: Callable[[], float], rounds: int = 3, engine=None) -> dict:
    from llama_cpp import Llama

    name = next(iter(adapter_folders))
    lora = engine.adapters[name].metadata["gguf_lora"]
    with _same_model_params():
        llm = Llama(model_path=str(model_path), lora_path=lora, n_ctx=engine.context_length, n_batch=BATCH,
                    n_ubatch=BATCH, n_threads=engine.threads, n_threads_batch=engine.threads, verbose=False)
    raw, ours = [], []
    try:
        for _ in range(rounds):
            ours.append(engine_decode())
            raw.append(_raw_decode_tps(llm, tokens, max_tokens))
    finally:
        llm.close()
    r, o = statistics.median(raw), statistics.median(ours)
    return {
        "reference": f"llama-cpp-python Llama.generate, lora_path = the same GGUF LoRA ({engine.threads} threads, "
                     f"weight repacking {extra_buffers()[1]})",
        "reference_adapter": name,
        "reference_decode_tps": round(r, 3),
        "engine_adapter_decode_tps": round(o, 3),
        "engine_vs_reference_ratio": round(o / r, 4),
    }
