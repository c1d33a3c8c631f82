"""How LoRA Desk sets llama.cpp up (llama-cpp-python's C API): its log, the backend, threads, and the
model and context parameters. The engine (llamacpp_engine.py) and the speed reference
(llamacpp_bench.py) both take their settings from here, so both run the same kernels."""
from __future__ import annotations

import ctypes
import functools
import logging
import os

import llama_cpp

_native_log = logging.getLogger("llama.cpp")
last_errors: list[str] = []  # llama.cpp's recent error lines, quoted when one of its calls fails


@llama_cpp.llama_log_callback
def _on_native_log(level: int, text: bytes, _user):
    """llama.cpp's messages go to the log file, not the terminal (they are many, and its errors
    come back as failed calls, which we explain); errors are kept to quote in that explanation."""
    line = text.decode("utf-8", "replace").rstrip()
    if level == 3 and line:  # GGML_LOG_LEVEL_ERROR
        last_errors[:] = (last_errors + [line])[-3:]
    _native_log.debug(line)


llama_cpp.llama_log_set(_on_native_log, ctypes.c_void_p(0))


def why() -> str:
    """The last error llama.cpp logged, as a clause for our messages ('' when it said nothing)."""
    said = "; ".join(last_errors)
    last_errors.clear()
    return f" (llama.cpp: {said})" if said else ""


DEFAULT_CTX = 8192  # tokens of KV cache (capped by the model's training context)
BATCH = 512  # tokens per llama_decode call while reading a prompt: cancel is checked between them
_backend_ready = False


def init_backend() -> None:
    """llama_backend_init, once per process."""
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


def default_threads() -> int:
    env = os.environ.get("LORADESK_THREADS")
    return int(env) if env else max(1, os.cpu_count() or 1)


def context_params(n_ctx: int, threads: int, n_seq: int = 1):
    """The context settings the engine uses; `llamacpp_bench` gives the raw reference the same.
    `n_seq` sequences (the engine's KV slots) share one unified cache of n_ctx cells, so one
    sequence may still fill the whole context."""
    p = llama_cpp.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_seq_max = n_seq
    p.kv_unified = True
    p.n_batch = p.n_ubatch = min(BATCH, n_ctx)
    p.n_threads = p.n_threads_batch = threads
    p.no_perf = True
    if not llama_cpp.llama_supports_gpu_offload():
        # On the CPU, flash attention is slower (0.5B Q4_K_M, 2 cores): a 2,800-token prompt read at
        # 46 tok/s with it and 148-158 without; 200-token decode 25.2 -> 25.4-26.2 tok/s. It is also
        # llama-cpp-python's `Llama` default, the speed reference.
        p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return p


@functools.cache
def amx_cpu() -> bool:
    """Whether this llama.cpp build would put the weights in its AMX buffer (Sapphire Rapids and
    later Xeons, and cloud VMs on them)."""
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def extra_buffers() -> tuple[bool, str]:
    """(use llama.cpp's extra weight buffers, why). Those hold weights repacked for AMX or for
    AVX2/AVX-512 kernels. ggml's AMX matmul segfaults on the first answer with Q4_K_M models on
    some of these CPUs (llama.cpp #20824, open; it crashed every run on this project's Xeon VM, and
    llama.cpp's own `Llama` with it), so on an AMX CPU they are off: the plain CPU kernels, which
    never crashed there. LORADESK_LLAMACPP_REPACK=1 turns them on again, =0 off everywhere."""
    env = os.environ.get("LORADESK_LLAMACPP_REPACK")
    if env in ("0", "1"):
        return env == "1", f"LORADESK_LLAMACPP_REPACK={env}"
    if amx_cpu():
        return False, "off: this CPU has AMX, whose llama.cpp kernels crash (llama.cpp #20824)"
    return True, "on"


def model_params():
    p = llama_cpp.llama_model_default_params()
    p.n_gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
    p.use_extra_bufts = extra_buffers()[0]
    # Weights read into memory rather than mmap'ed: with rank-16 adapters on the 0.5B Q4_K_M model,
    # 200-token decode ran 41.4 tok/s mmap'ed and 44.2-45.9 read in (llama-cpp-python's Llama, which
    # never mmaps with a LoRA, 46.0). The weights are resident either way while the model answers.
    p.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    return p


def meta(model, key: str) -> str | None:
    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", "replace") if n >= 0 else None
