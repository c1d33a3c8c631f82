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

from app.engine.base import AdapterError, AdapterInfo, Chunk, Engine, EngineError, ModelInfo

ENGINES = ("mlx", "llamacpp", "torch")
_MODULES = {"mlx": ("mlx", "mlx_lm"), "llamacpp": ("llama_cpp",), "torch": ("torch", "transformers", "peft")}
_NEEDS = {"mlx": "mlx and mlx-lm", "llamacpp": "llama-cpp-python", "torch": "torch, transformers and peft"}


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


def create_engine(kind: str | None = None) -> Engine:
    kind = kind or default_engine()[0]
    classes = {"mlx": ("app.engine.mlx_engine", "MLXEngine"), "llamacpp": ("app.engine.llamacpp_engine", "LlamaCppEngine"),
               "torch": ("app.engine.torch_engine", "TorchEngine")}
    if kind not in classes:
        raise EngineError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
    module, name = classes[kind]
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as e:
        others = [k for k in installed_engines() if k != kind]
        hint = f"; use --engine {others[0]}" if others else ""
        raise EngineError(f"the {kind} engine needs {_NEEDS[kind]} ({e}){hint}") from None
    return cls()


__all__ = ["AdapterError", "AdapterInfo", "Chunk", "Engine", "EngineError", "ModelInfo",
           "ENGINES", "create_engine", "default_engine", "installed_engines"]
