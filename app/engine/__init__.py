"""Engines behind one interface (base.Engine): MLX on Apple Silicon, transformers + PEFT elsewhere.

Nothing outside this package imports mlx or torch.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys

from app.engine.base import AdapterError, AdapterInfo, Chunk, Engine, EngineError, ModelInfo

ENGINES = ("mlx", "torch")


def default_engine() -> tuple[str, str]:
    """(engine kind, why): MLX on Apple Silicon, torch elsewhere; LORADESK_ENGINE overrides."""
    env = os.environ.get("LORADESK_ENGINE")
    if env in ENGINES:
        return env, "set by LORADESK_ENGINE"
    installed = installed_engines()
    if sys.platform == "darwin" and platform.machine() == "arm64":
        if "mlx" in installed or not installed:
            return "mlx", "Apple Silicon: MLX uses the GPU and unified memory"
        return "torch", "Apple Silicon, but mlx is not installed: transformers + PEFT"
    if "torch" in installed or not installed:
        return "torch", f"{sys.platform}/{platform.machine()}: transformers + PEFT (MLX's fast path needs Apple Silicon)"
    return "mlx", f"{sys.platform}/{platform.machine()}: torch is not installed (e.g. an MLX-only bundle), MLX's CPU build"


def installed_engines() -> list[str]:
    """Engines whose libraries are present (found, not imported: importing torch takes seconds)."""
    found = lambda *mods: all(importlib.util.find_spec(m) for m in mods)  # noqa: E731
    return [k for k, mods in (("mlx", ("mlx", "mlx_lm")), ("torch", ("torch", "transformers", "peft"))) if found(*mods)]


def create_engine(kind: str | None = None) -> Engine:
    kind = kind or default_engine()[0]
    if kind == "mlx":
        try:
            from app.engine.mlx_engine import MLXEngine
        except ImportError as e:
            raise EngineError(f"the MLX engine needs mlx and mlx-lm ({e}); use --engine torch") from None
        return MLXEngine()
    if kind == "torch":
        try:
            from app.engine.torch_engine import TorchEngine
        except ImportError as e:
            raise EngineError(f"the torch engine needs torch, transformers and peft ({e}); use --engine mlx") from None
        return TorchEngine()
    raise EngineError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")


__all__ = ["AdapterError", "AdapterInfo", "Chunk", "Engine", "EngineError", "ModelInfo",
           "ENGINES", "create_engine", "default_engine"]
