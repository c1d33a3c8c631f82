"""The adapter store: which adapter folder serves each task.

Adapters live under `<home>/adapters/<task>/<name>/`, each a self-describing folder (MLX or PEFT
format). `registry.json` records, per task, the registered adapters and which one is in use.
A task record's `[adapter] source` (a folder or hub repo id) is the fallback when none is registered.
Writes go to a temp file or folder first and are renamed into place, so a failure never leaves a
half-written adapter registered; the registry is an app.jsonfile.JsonFile (locked, rebuilt from the
folders when damaged). Every name passes app.names.check_name before it becomes a path.
"""
from __future__ import annotations

import errno
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from app import hub, paths
from app.engine.adapter_format import detect_format, read_adapter
from app.engine.adapter_write import atomic_folder, write_mlx, write_peft
from app.engine.base import Engine
from app.engine.base_model import check_base_model
from app.engine.lora import METADATA_FILE
from app.errors import AdapterError, EngineError
from app.format import human_bytes
from app.jsonfile import JsonFile
from app.names import check_name
from app.tasks import get_task, task_names


@dataclass
class StoredAdapter:
    task: str
    name: str
    path: Path
    format: str
    source: str  # where it came from: a folder, "trained", a repo id
    added: float
    forced: bool = False  # added with --force although made for another base model

    def to_json(self) -> dict:
        out = {"name": self.name, "path": str(self.path), "format": self.format,
               "source": self.source, "added": self.added}
        return {**out, "forced": True} if self.forced else out


def _rebuild_registry() -> dict:
    """The registry recreated from the adapter folders on disk (each describes itself); the newest
    adapter of each task becomes its current one."""
    reg = {}
    for task in task_names():
        task_dir = paths.adapters_dir() / task
        found = []
        for folder in sorted(task_dir.iterdir()) if task_dir.is_dir() else []:
            if folder.name.startswith(".") or folder.name.endswith(".old") or not folder.is_dir():
                continue  # temp folders of an unfinished write
            try:
                fmt = detect_format(folder)
            except AdapterError:
                continue
            source = "trained" if "training" in _metadata(folder) else "found on disk"
            found.append(StoredAdapter(task, folder.name, folder, fmt, source, folder.stat().st_mtime).to_json())
        if found:
            found.sort(key=lambda a: a["added"])
            reg[task] = {"adapters": found, "current": found[-1]["name"]}
    return reg


def _metadata(folder: Path) -> dict:
    """An adapter folder's loradesk.json, or {} when it has none (or an unreadable one)."""
    try:
        meta = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _registry() -> JsonFile:
    return JsonFile(paths.adapters_dir() / "registry.json", "the adapter registry", rebuild=_rebuild_registry)


def _read_registry() -> dict:
    return _registry().read()


def list_adapters(task: str | None = None) -> list[StoredAdapter]:
    reg = _read_registry()
    out = []
    for t in ([task] if task else task_names()):
        slot = reg.get(t)
        for entry in slot.get("adapters", []) if isinstance(slot, dict) else []:
            if not isinstance(entry, dict) or "name" not in entry or "path" not in entry:
                continue  # an entry this version cannot read: ignored, not fatal
            out.append(StoredAdapter(task=t, name=entry["name"], path=Path(entry["path"]),
                                     format=entry.get("format", ""), source=entry.get("source", ""),
                                     added=entry.get("added", 0.0), forced=bool(entry.get("forced"))))
    return out


def _find(task: str, name: str) -> StoredAdapter:
    """The registered adapter `name` of `task`, or a clear error naming the ones there are."""
    get_task(task)
    check_name(name)
    stored = list_adapters(task)
    for a in stored:
        if a.name == name:
            return a
    known = ", ".join(a.name for a in stored) or "none"
    raise EngineError(f"task {task!r} has no adapter named {name!r} (its adapters: {known}; see loradesk adapters list)")


def current(task: str) -> StoredAdapter | None:
    """The adapter in use for `task`: the selected registered one, else the newest."""
    slot = _read_registry().get(task)
    adapters = list_adapters(task)
    chosen = slot.get("current") if isinstance(slot, dict) else None
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

        folder = paths.adapters_dir() / task / source.replace("/", "--")
        if not (folder / "adapter_config.json").exists():
            hub.snapshot(source, folder, allow_patterns=["*.json", "*.safetensors"])
        return folder
    return None


def shipped_for(task: str, engine: Engine) -> Path | None:
    """The adapter shipped with the app for `task` and the engine's loaded model, if any. Only a
    positive identification counts (same weights or same base model name): a model of the same
    architecture but other weights (Qwen2.5-0.5B-Instruct beside the Coder) gets none."""
    for shipped, folder in get_task(task).shipped_folders():
        try:
            if engine.base_matches(read_adapter(folder)):
                return folder
        except AdapterError:
            continue  # a damaged shipped folder: the task runs on the base model, as without one
    return None


def shipped_rows(task: str) -> list[tuple[str, Path]]:
    """(base model, folder) of each adapter shipped for `task`."""
    return [(s.base, folder) for s, folder in get_task(task).shipped_folders()]


def default_name(folder: Path) -> str | None:
    """An adapter's name when none is given: its folder's real name (`.` is the current folder's),
    else the task run name recorded in its metadata."""
    return Path(folder).resolve().name or _metadata(Path(folder)).get("name")


def add(task: str, folder: str | Path, name: str | None = None, source: str | None = None,
        move: bool = False, model: str | None = None, force: bool = False) -> StoredAdapter:
    """Copy (or move) an adapter folder into the store and make it the task's current adapter.

    With `model` (a model reference), an adapter recorded as made for another base model is refused
    unless `force`; a forced adapter is later loaded with a warning instead of an error.
    """
    get_task(task)  # unknown task -> clear error
    folder = Path(folder)
    fmt = detect_format(folder)
    weights = read_adapter(folder)  # refuse corrupt folders before anything is copied
    name = check_name(default_name(folder) if name is None else name)
    if model is not None:
        check_base_model(weights, model, f"{name!r} ({folder})", force=force)
    dest = paths.adapters_dir() / task / name
    src, dst = folder.resolve(), dest.resolve()
    if src != dst:
        if src in dst.parents or dst in src.parents:
            raise AdapterError(f"{folder} and the store folder {dest} contain one another; add a copy from elsewhere")
        _place(folder, dest, move)
    entry = StoredAdapter(task, name, dest, fmt, source or str(src), time.time(), forced=force)
    with _registry().update() as reg:
        slot = reg.setdefault(task, {"adapters": []})
        slot["adapters"] = [a for a in slot.get("adapters", []) if a.get("name") != name] + [entry.to_json()]
        slot["current"] = name
    return entry


def _place(folder: Path, dest: Path, move: bool) -> None:
    """Copy (or move) `folder` to `dest` through a temp folder: a failed copy (disk full) leaves
    nothing behind and an existing `dest` untouched."""
    tmp, commit = atomic_folder(dest)
    shutil.rmtree(tmp)
    try:
        (shutil.move if move else shutil.copytree)(str(folder), str(tmp))
        commit()
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AdapterError(f"could not copy {folder} into the store ({dest.parent}): {_why(e)}; nothing was "
                           "changed. Free some space and try again.") from None


def _why(e: OSError) -> str:
    # copytree gathers each file's error into one shutil.Error: [(src, dst, "[Errno 28] ..."), ...]
    errors = e.args[0] if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) else []
    if e.errno == errno.ENOSPC or any(f"[Errno {errno.ENOSPC}]" in str(x[-1]) for x in errors):
        return "the disk is full"
    return str(errors[0][-1]) if errors else str(e)


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
    """Unregister an adapter and delete its folder from the store (only ever a folder inside it)."""
    entry = _find(task, name)
    with _registry().update() as reg:
        slot = reg.setdefault(task, {"adapters": []})
        slot["adapters"] = [a for a in slot.get("adapters", []) if a.get("name") != name]
        if slot.get("current") == name:
            slot["current"] = slot["adapters"][-1]["name"] if slot["adapters"] else None
    task_dir = (paths.adapters_dir() / task).resolve()
    if entry.path.resolve().parent == task_dir:
        shutil.rmtree(entry.path, ignore_errors=True)


def select(task: str, name: str) -> None:
    _find(task, name)
    with _registry().update() as reg:
        reg.setdefault(task, {"adapters": []})["current"] = name


def load_task_adapters(engine: Engine, tasks: list[str] | None = None, force: bool = False) -> dict[str, str]:
    """Add each task's adapter to the engine (named after the task). Returns task -> problem for
    the tasks whose adapter is missing or does not fit; those tasks run on the base model.
    `force` (or an adapter added with --force) accepts adapters made for another base model."""
    problems = {}
    for task in tasks or task_names():
        try:
            folder = adapter_folder(task)
        except EngineError as e:
            problems[task] = str(e)
            continue
        if folder is None:
            folder = shipped_for(task, engine)
        if folder is None:
            problems[task] = f"no adapter for {task!r} yet (train one: loradesk train --task {task})"
            continue
        stored = current(task)
        forced = force or (stored is not None and stored.path == folder and stored.forced)
        try:
            engine.add_adapter(task, folder, force=forced)
        except AdapterError as e:
            problems[task] = str(e)
    return problems


def adapter_rows(every: bool = False) -> list[dict]:
    """One row per task: its adapter's facts, or why it has none. Used by the CLI and the app.
    With `every`, also a row for each other stored adapter of the task; `active` marks the one in use."""
    def facts(row: dict, folder, source: str) -> dict:
        try:
            w = read_adapter(folder)
            row.update(name=folder.name, base_model=w.base_model or "?", rank=w.rank, format=w.format,
                       size=human_bytes(sum(p.stat().st_size for p in folder.iterdir() if p.is_file())),
                       source=source, metadata=w.metadata)
        except EngineError as e:
            row.update(name=folder.name, source=f"unusable: {e}")
        return row

    rows = []
    for task in task_names():
        row = {"task": task, "name": None, "base_model": "", "rank": "", "size": "", "source": "", "format": "",
               "active": False}
        try:
            folder = adapter_folder(task)
        except EngineError as e:
            folder, row["source"] = None, str(e)
        if folder is None:
            shipped = [facts({**row}, f, f"shipped with LoRA Desk (used when {base} is loaded)")
                       for base, f in shipped_rows(task)]
            if shipped:
                rows += shipped
                continue
            row["source"] = row["source"] or f"none (loradesk train --task {task})"
        else:
            stored = current(task)
            row["active"] = True
            facts(row, folder, stored.source if stored and stored.path == folder else str(folder))
        rows.append(row)
        if every:
            for a in list_adapters(task):
                if a.path != folder and a.path.exists():
                    rows.append(facts({"task": task, "active": False}, a.path, a.source))
    return rows
