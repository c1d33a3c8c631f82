"""Shared fixtures: an isolated LORADESK_HOME and tiny random models/adapters built locally.

No test downloads anything: HF_HUB_OFFLINE is set, and the hub is mocked only at app.hub.
Download tests lift it for a local fake hub on 127.0.0.1 (tests/fake_hub.py), never the real one.
"""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The llama.cpp engine's background merged copy (swapped in after an adapter stays active 5 s)
# rounds differently from base + LoRA; tests that compare answers across engines or runs would
# see it appear mid-test. tests/test_llamacpp_merge.py turns it on where it is tested.
os.environ["LORADESK_MERGE"] = "off"

from pathlib import Path

import pytest

from app.tiny import build_tiny_model, write_random_adapter

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def loradesk_home(tmp_path, monkeypatch):
    """Every test gets its own empty LoRA Desk home (models, adapters, settings, logs)."""
    home = tmp_path / "home"
    monkeypatch.setenv("LORADESK_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random float32 models of each architecture: {'qwen2': path, 'llama': ..., 'gemma2': ...}."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(root / arch, arch) for arch in ("qwen2", "llama", "gemma2")}


@pytest.fixture(scope="session")
def tiny_qwen(tiny_models) -> Path:
    return tiny_models["qwen2"]


@pytest.fixture(scope="session")
def tiny_qwen_4bit(tiny_qwen, tmp_path_factory) -> Path:
    """The tiny Qwen2 model quantized to 4 bits with mlx-lm (group size 64)."""
    from mlx_lm import convert

    from app.engine import mlx_thread

    out = tmp_path_factory.mktemp("tiny-q4") / "qwen2-4bit"
    mlx_thread.call(convert, str(tiny_qwen), mlx_path=str(out), quantize=True, q_bits=4, q_group_size=64)
    return out


@pytest.fixture(scope="session")
def tiny_adapters(tiny_models, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Per architecture, four random MLX-format adapters named after the tasks (different seeds,
    ranks and targets, so each visibly changes the output)."""
    root = tmp_path_factory.mktemp("tiny-adapters")
    specs = {
        "math": dict(seed=11, rank=8),
        "code": dict(seed=12, rank=4, targets=("q_proj", "v_proj")),
        "summarize": dict(seed=13, rank=16, targets=("gate_proj", "up_proj", "down_proj"), layers=[1]),
        "paraphrase": dict(seed=14, rank=8, scale=4.0),
    }
    return {arch: {task: write_random_adapter(model, root / arch / task, **kw) for task, kw in specs.items()}
            for arch, model in tiny_models.items()}


@pytest.fixture(scope="session")
def tiny_ggufs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """The tiny qwen2 and llama models as F32 GGUF files (llama.cpp's layout), for the llamacpp engine."""
    from app.tiny_gguf import write_tiny_gguf

    root = tmp_path_factory.mktemp("tiny-gguf")
    return {arch: write_tiny_gguf(tiny_models[arch], root / f"{arch}.gguf") for arch in ("qwen2", "llama")}
