"""The adapter store: which adapter folder serves each task.

Adapters live under `<home>/adapters/<task>/<name>/`, each a self-describing folder (MLX or PEFT
format). `registry.json` records, per task, the registered adapters and which one is in use.
A task record's `[adapter] source` (a folder or hub repo id) is the fallback when none is registered.
Writes go to a temp file or folder first and are renamed into place, so a failure never leaves a
half-written adapter registered.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from app import paths
from app.engine.adapter_format import _atomic_folder, detect_format, read_adapter, write_mlx, write_peft
from app.engine.base import AdapterError, Engine, EngineError
from app.tasks import get_task, task_names


@dataclass
class StoredAdapter:
    task: str
    name: str
    path: Path
    format: str
    source: str  # where it came from: a folder, "trained", a repo id
    added: float

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path), "format": self.format,
                "source": self.source, "added": self.added}


def _registry_path() -> Path:
    return paths.adapters_dir() / "registry.json"


def _read_registry() -> dict:
    p = _registry_path()
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        # Keep the damaged file for the user; start a fresh registry (adapter folders are intact).
        os.replace(p, p.with_suffix(f".corrupt-{int(time.time())}"))
        return {}


def _write_registry(reg: dict) -> None:
    p = _registry_path()
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(reg, indent=2))
    os.replace(tmp, p)


def list_adapters(task: str | None = None) -> list[StoredAdapter]:
    reg = _read_registry()
    out = []
    for t in ([task] if task else task_names()):
        for entry in reg.get(t, {}).get("adapters", []):
            out.append(StoredAdapter(task=t, name=entry["name"], path=Path(entry["path"]),
                                     format=entry["format"], source=entry.get("source", ""),
                                     added=entry.get("added", 0.0)))
    return out


def current(task: str) -> StoredAdapter | None:
    """The adapter in use for `task`: the selected registered one, else the newest."""
    reg = _read_registry().get(task, {})
    adapters = list_adapters(task)
    chosen = reg.get("current")
    for a in adapters:
        if a.name == chosen:
            return a
    return adapters[-1] if adapters else None


def adapter_folder(task: str) -> Path | None:
    """The folder of the adapter that serves `task` (store first, then the record's source)."""
    stored = current(task)
    if stored is not None and stored.path.exists():
        return stored.path
    source = get_task(task).adapter_source
    if not source:
        return None
    record = get_task(task).record_path
    local = Path(source).expanduser()
    if not local.is_absolute() and record is not None:
        local = record.parent / local
    if local.exists():
        return local
    if "/" in source:  # a hub repo id: fetched once into the store
        from app import hub

        folder = paths.adapters_dir() / task / source.replace("/", "--")
        if not (folder / "adapter_config.json").exists():
            hub.snapshot(source, folder, allow_patterns=["*.json", "*.safetensors"])
        return folder
    return None


def add(task: str, folder: str | Path, name: str | None = None, source: str | None = None,
        move: bool = False) -> StoredAdapter:
    """Copy (or move) an adapter folder into the store and make it the task's current adapter."""
    get_task(task)  # unknown task -> clear error
    folder = Path(folder)
    fmt = detect_format(folder)
    read_adapter(folder)  # refuse corrupt folders before anything is copied
    name = name or folder.name
    dest = paths.adapters_dir() / task / name
    if dest.resolve() != folder.resolve():
        tmp, commit = _atomic_folder(dest)
        shutil.rmtree(tmp)
        (shutil.move if move else shutil.copytree)(str(folder), str(tmp))
        commit()
    entry = StoredAdapter(task, name, dest, fmt, source or str(folder), time.time())
    reg = _read_registry()
    slot = reg.setdefault(task, {"adapters": []})
    slot["adapters"] = [a for a in slot["adapters"] if a["name"] != name] + [entry.to_json()]
    slot["current"] = name
    _write_registry(reg)
    return entry


EXPORT_FORMATS = ("peft", "mlx")


def export(task: str, out: str | Path, fmt: str, base_model: str | None = None) -> str:
    """Write the task's adapter in use to `out` as a PEFT or MLX folder; returns what was done, as
    one sentence. The one implementation behind `loradesk adapters export` and the app's Export.

    PEFT folders load unchanged with PeftModel.from_pretrained (vLLM, LoRAX), MLX ones with mlx-lm.
    `out` must be new or an empty folder: an export never overwrites anything.
    `base_model` replaces the base_model_name_or_path recorded (default: the adapter's own).
    """
    if fmt not in EXPORT_FORMATS:
        raise AdapterError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    folder = adapter_folder(task)
    if folder is None:
        raise AdapterError(f"task {task!r} has no adapter to export; add one (loradesk adapters add {task} FOLDER) "
                           "or train one first")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdapterError(f"{out} already exists and is not an empty folder; choose a new one")
    weights = read_adapter(folder)
    if fmt == "peft":
        write_peft(weights, out, base_model_name=base_model)
    else:
        if base_model:
            weights.base_model = base_model
        write_mlx(weights, out)
    hint = " Loads with PeftModel.from_pretrained (vLLM, LoRAX)." if fmt == "peft" else " Loads with mlx-lm."
    return (f"Exported the {task} adapter {folder.name!r} ({weights.format.upper()}) as a {fmt.upper()} folder: "
            f"{out} (rank {weights.rank}, {len(weights.modules)} layers, base {weights.base_model or '?'}).{hint}")


def remove(task: str, name: str) -> None:
    reg = _read_registry()
    slot = reg.get(task, {"adapters": []})
    if not any(a["name"] == name for a in slot["adapters"]):
        raise EngineError(f"task {task!r} has no adapter named {name!r}")
    slot["adapters"] = [a for a in slot["adapters"] if a["name"] != name]
    if slot.get("current") == name:
        slot["current"] = slot["adapters"][-1]["name"] if slot["adapters"] else None
    _write_registry(reg)
    shutil.rmtree(paths.adapters_dir() / task / name, ignore_errors=True)


def select(task: str, name: str) -> None:
    reg = _read_registry()
    slot = reg.get(task, {"adapters": []})
    if not any(a["name"] == name for a in slot["adapters"]):
        raise EngineError(f"task {task!r} has no adapter named {name!r}")
    slot["current"] = name
    _write_registry(reg)


def load_task_adapters(engine: Engine, tasks: list[str] | None = None) -> dict[str, str]:
    """Add each task's adapter to the engine (named after the task). Returns task -> problem for
    the tasks whose adapter is missing or does not fit; those tasks run on the base model."""
    problems = {}
    for task in tasks or task_names():
        try:
            folder = adapter_folder(task)
        except EngineError as e:
            problems[task] = str(e)
            continue
        if folder is None:
            problems[task] = f"no adapter for {task!r} yet (train one: loradesk train --task {task})"
            continue
        try:
            engine.add_adapter(task, folder)
        except AdapterError as e:
            problems[task] = str(e)
    return problems
