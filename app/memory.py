"""Will a model fit in memory: one rule, used before the app loads a model and before the
benchmark does."""
from __future__ import annotations

# Memory a model needs beyond its weights on disk: the KV cache, activations and the loader's
# buffers. A bf16 1.5B model (3.1 GB of safetensors) peaked at about 1.2x that in the torch engine.
MEMORY_FACTOR = 1.3


def memory_check(ref: str, model_bytes: int, held_bytes: int, factor: float = MEMORY_FACTOR,
                 available: int | None = None) -> str | None:
    """Why the model (its weights on disk) will not fit in memory, or None when it will.
    `held_bytes` is the current model's memory, given back before the new one loads."""
    import psutil  # late: 20 ms of the GUI's start-up (python -X importtime), needed only at a load

    free = (psutil.virtual_memory().available if available is None else available) + held_bytes
    need = int(model_bytes * factor)
    if need <= free:
        return None
    gb = lambda n: f"{n / 1e9:.1f} GB"  # noqa: E731
    kept = " The current model stays loaded." if held_bytes else ""
    return (f"{ref} will not fit in memory: it needs about {gb(need)} ({gb(model_bytes)} of weights) and "
            f"{gb(free)} is available{' once the current model is dropped' if held_bytes else ''}.{kept} "
            "Close other programs or choose a smaller model.")


def give_back_freed_memory() -> None:
    """Return freed heap pages to the system (glibc's malloc_trim). Reading and converting an adapter
    frees tens of MB of temporary arrays that glibc would otherwise keep: 4 rank-16 adapters of a 0.5B
    model held 1.47x their size in RSS, 1.006x after this."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl or another libc: nothing to do
            pass
