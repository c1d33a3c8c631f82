"""Glue between the app's panels and the modules other parts of LoRA Desk provide (training,
benchmark report, adapter export, GGUF import). Qt-free: each function runs inside a worker.

Each lookup is lazy, so a build without one of those modules still starts, and the panel that
needs it says what is missing instead of failing at import.
"""
from __future__ import annotations

import importlib
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path


def _first(candidates: list[tuple[str, str]]):
    """The first `module:function` that exists, else None."""
    for module, name in candidates:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                continue
            raise
        fn = getattr(mod, name, None)
        if fn is not None:
            return fn
    return None


def as_dict(obj) -> dict:
    """A progress report (dataclass, object or dict) as a plain dict."""
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return dict(obj)
    if is_dataclass(obj):
        return asdict(obj)
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


# -- training -------------------------------------------------------------------------------------
TRAIN_FUNCTIONS = [("training.trainer", "train"), ("training.train", "train"), ("training", "train")]


def training_available() -> bool:
    return _first(TRAIN_FUNCTIONS) is not None


def train(config, report, cancel):
    """Run training with `report(dict)` called for each progress report. Returns the result
    (the trained adapter's folder, or an object/dict holding it)."""
    fn = _first(TRAIN_FUNCTIONS)
    if fn is None:
        raise RuntimeError("training is not part of this build (the training module is missing)")
    return fn(config, callback=_TrainCallback(report), cancel=cancel)


class _TrainCallback:
    """Adapts the trainer's callback (mlx-lm style methods, or a plain call) to `report(dict)`."""

    def __init__(self, report):
        self._report = report

    def __call__(self, info=None, **kw):
        self._report({**as_dict(info), **kw})

    def on_train_loss_report(self, info):
        self._report({"kind": "train", **as_dict(info)})

    def on_val_loss_report(self, info):
        self._report({"kind": "valid", **as_dict(info)})

    def __getattr__(self, name):  # any other on_* hook: forwarded as a report of that kind
        if name.startswith("on_"):
            return lambda info=None, **kw: self._report({"kind": name[3:], **as_dict(info), **kw})
        raise AttributeError(name)


def result_folder(result) -> str | None:
    """The adapter folder in a training result (a path, or an object/dict with one)."""
    if result is None:
        return None
    if isinstance(result, (str, Path)):
        return str(result)
    d = as_dict(result)
    for key in ("adapter_path", "folder", "path", "output", "out_dir", "adapter_dir"):
        if d.get(key):
            return str(d[key])
    return None


# -- benchmark ------------------------------------------------------------------------------------
def write_report(results: dict, out_dir: Path) -> list[Path]:
    """The benchmark report's files (Markdown, HTML, charts), or [] when no report writer exists."""
    fn = _first([("app.bench.report", "write_report")])
    if fn is None:
        return []
    written = fn(results, Path(out_dir))
    if isinstance(written, dict):
        written = list(written.values())
    files = [Path(p) for p in (written or [])] if isinstance(written, (list, tuple)) else []
    return files or sorted(p for p in Path(out_dir).iterdir() if p.suffix in (".html", ".md", ".png", ".csv"))


# -- adapters and models ---------------------------------------------------------------------------
def export_adapter(task: str, out: str, fmt: str = "peft") -> str:
    """Write the task's adapter to `out` in `fmt` (peft or mlx). Returns what happened, as a sentence."""
    from app.engine.adapter_format import detect_format
    from app.engine.store import adapter_folder

    folder = adapter_folder(task)
    if folder is None:
        raise RuntimeError(f"task {task!r} has no adapter to export")
    out_path = Path(out)
    if out_path.exists():
        raise RuntimeError(f"{out_path} already exists; choose a new folder name")
    fn = _first([("app.cli_convert", "export_adapter"), ("app.engine.convert", "export_adapter")])
    if fn is not None:
        fn(task, out_path, fmt)
        return f"Exported the {task} adapter as {fmt.upper()} to {out_path}."
    have = detect_format(folder)
    if have != fmt:
        raise RuntimeError(f"conversion to {fmt} is not part of this build; the adapter is in {have} format "
                           f"at {folder}")
    tmp = out_path.with_name(out_path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    tmp.rename(out_path)
    return f"Exported the {task} adapter ({have.upper()}) to {out_path}."


def import_gguf(file: str, engine: str) -> str:
    """Convert a GGUF file into a registered model; returns the name to load it by."""
    fn = _first([("app.gguf", "import_gguf"), ("app.cli_convert", "import_gguf"), ("app.models", "import_gguf")])
    if fn is None:
        raise RuntimeError(f"GGUF import is not part of this build; convert {file} on the command line "
                           "(loradesk models import FILE.gguf) or choose a model folder")
    result = fn(file)
    return str(result)
