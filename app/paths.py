"""Where LoRA Desk keeps models, adapters, settings and logs.

Everything lives under one home folder: platformdirs' user data dir, or `LORADESK_HOME` when set
(tests and scripts set it to isolate themselves).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

APP_NAME = "LoRADesk"


def home() -> Path:
    env = os.environ.get("LORADESK_HOME")
    root = Path(env).expanduser() if env else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    return _sub("models")


def adapters_dir() -> Path:
    return _sub("adapters")


def runs_dir() -> Path:
    """Training runs (checkpoints) and benchmark results."""
    return _sub("runs")


def settings_file() -> Path:
    return home() / "settings.json"


def log_dir() -> Path:
    env = os.environ.get("LORADESK_HOME")
    path = Path(env) / "logs" if env else Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def resources_dir() -> Path:
    """The repo's resources/ folder, or its copy inside a PyInstaller bundle."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"
