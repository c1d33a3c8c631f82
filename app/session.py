"""Open an engine with the user's model and every task adapter: shared by the CLI and the app."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from app import paths
from app.engine import Engine, create_engine, default_engine
from app.jsonfile import JsonFile
from app.models import default_model, resolve_model


def _settings() -> JsonFile:
    # Nothing to rebuild from: damaged settings are kept aside and the defaults apply.
    return JsonFile(paths.settings_file(), "the settings file")


def load_settings() -> dict:
    return _settings().read()


def save_settings(settings: dict) -> None:
    _settings().write(settings)


def new_engine(kind: str) -> Engine:
    """An empty engine that loads what the app names a model: a folder or file, a registered name,
    or a hub repo id (downloaded once into the store)."""
    return create_engine(kind, resolve=resolve_model)


def choose_engine(kind: str | None) -> str:
    return kind or load_settings().get("engine") or default_engine()[0]


TRAINERS = ("mlx", "torch")  # llama.cpp serves adapters; it does not train them


def choose_training_engine(kind: str | None) -> str:
    """--engine, else the app's engine when it can train, else torch (MLX where torch is absent)."""
    from app.engine import installed_engines

    chosen = kind or choose_engine(None)
    if chosen in TRAINERS:
        return chosen
    if kind:  # asked for explicitly
        raise ValueError(f"the {kind} engine does not train; train with --engine torch or mlx (its adapter then "
                         f"serves on {kind} too)")
    return "torch" if "torch" in installed_engines() or "mlx" not in installed_engines() else "mlx"


def choose_model(ref: str | None, engine: str) -> str:
    """--model, else the app's last model for this engine, else the default for the engine."""
    if ref:
        return ref
    return load_settings().get(f"model.{engine}") or default_model(engine)


@dataclass
class Session:
    engine: Engine
    problems: dict[str, str] = field(default_factory=dict)  # task -> why it has no adapter


def open_session(model: str | None = None, engine: str | None = None, tasks=None,
                 with_adapters: bool = True, warn=True, force: bool = False) -> Session:
    from app.store import load_task_adapters

    kind = choose_engine(engine)
    eng = new_engine(kind)
    eng.load(choose_model(model, kind))
    problems = load_task_adapters(eng, tasks, force=force) if with_adapters else {}
    if warn:
        for task, why in problems.items():
            print(f"note: {task}: {why}; answering with the base model", file=sys.stderr)
        for adapter in eng.adapters.values():
            if adapter.warning:
                print(f"warning: {adapter.warning}", file=sys.stderr)
    return Session(eng, problems)
