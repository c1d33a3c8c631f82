"""Engines behind one interface (base.Engine): MLX on Apple Silicon, llama.cpp on other machines
without a CUDA GPU, transformers + PEFT on CUDA (and for training).

Nothing outside this package imports mlx, llama_cpp or torch.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Callable

from app.engine.base import AdapterInfo, Chunk, Engine, ModelInfo
from app.errors import AdapterError, EngineError

ENGINES = ("mlx", "llamacpp", "torch")
_MODULES = {"mlx": ("mlx", "mlx_lm"), "llamacpp": ("llama_cpp",), "torch": ("torch", "transformers", "peft")}
_NEEDS = {"mlx": "mlx and mlx-lm", "llamacpp": "llama-cpp-python", "torch": "torch, transformers and peft"}
# Each engine's module and class: imported when that engine is first used (torch takes seconds).
_CLASSES = {"mlx": ("app.engine.mlx_engine", "MLXEngine"), "llamacpp": ("app.engine.llamacpp_engine", "LlamaCppEngine"),
            "torch": ("app.engine.torch_engine", "TorchEngine")}
_LATE_LIBRARIES = {"mlx": ("mlx_lm",)}  # imported inside the engine module's functions, needed by `load`


def has_cuda() -> bool:
    """An NVIDIA driver is present (checked without importing torch, which takes seconds)."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def default_engine() -> tuple[str, str]:
    """(engine kind, why): MLX on Apple Silicon, torch with CUDA, llama.cpp elsewhere;
    LORADESK_ENGINE overrides."""
    env = os.environ.get("LORADESK_ENGINE")
    if env in ENGINES:
        return env, "set by LORADESK_ENGINE"
    installed = installed_engines()
    where = f"{sys.platform}/{platform.machine()}"
    if sys.platform == "darwin" and platform.machine() == "arm64" and ("mlx" in installed or not installed):
        return "mlx", "Apple Silicon: MLX uses the GPU and unified memory"
    if has_cuda() and "torch" in installed:
        return "torch", f"{where} with an NVIDIA GPU: transformers + PEFT on CUDA"
    if "llamacpp" in installed:
        return "llamacpp", (f"{where}, no Apple Silicon or CUDA GPU: llama.cpp runs 4-bit GGUF models "
                            "fastest on the CPU")
    if "torch" in installed or not installed:
        return "torch", f"{where}: llama-cpp-python is not installed, so transformers + PEFT"
    return "mlx", f"{where}: neither llama-cpp-python nor torch is installed, MLX's CPU build"


def installed_engines() -> list[str]:
    """Engines whose libraries are present (found, not imported: importing torch takes seconds)."""
    return [k for k in ENGINES if all(importlib.util.find_spec(m) for m in _MODULES[k])]


def create_engine(kind: str | None = None, resolve: Callable[..., Path] | None = None) -> Engine:
    """A new, empty engine of `kind`. `resolve(model_ref, engine=kind)` turns what `load` is given
    into a local path: the app passes app.models.resolve_model (names, the store, downloads);
    without it only local files and folders load."""
    kind = kind or default_engine()[0]
    if kind not in _CLASSES:
        raise EngineError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
    module, name = _CLASSES[kind]
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as e:
        if (e.name or "").split(".")[0] not in _MODULES[kind]:
            # Not a missing library: our own module failed (a broken install, or files replaced
            # under a running process); saying "install X" would send the user the wrong way.
            raise EngineError(f"the {kind} engine's code failed to import: {e}") from None
        others = [k for k in installed_engines() if k != kind]
        hint = f"; use --engine {others[0]}" if others else ""
        raise EngineError(f"the {kind} engine needs {_NEEDS[kind]} ({e}){hint}") from None
    engine = cls()
    if resolve is not None:
        engine.resolve_model = resolve
    return engine


def preload(kind: str) -> None:
    """Import an engine's module and libraries now, on the caller's thread (ImportError when they
    are missing). The app does it on the GUI thread before its window shows: see ui/app.py."""
    if kind in _CLASSES:
        importlib.import_module(_CLASSES[kind][0])
    for library in _LATE_LIBRARIES.get(kind, ()):
        importlib.import_module(library)


__all__ = ["AdapterError", "AdapterInfo", "Chunk", "Engine", "EngineError", "ModelInfo",
           "ENGINES", "create_engine", "default_engine", "installed_engines",
           "preload"]
