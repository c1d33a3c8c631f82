"""Glue between the app's panels and the modules other parts of LoRA Desk provide (training,
benchmark report, GGUF import; adapter export is app.store.export). Qt-free: each function runs inside a worker.

Each lookup is lazy, so a build without one of those modules still starts, and the panel that
needs it says what is missing instead of failing at import.
"""
from __future__ import annotations

import importlib
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
TRAIN_FUNCTIONS = [("training.api", "train")]


def training_available() -> bool:
    return _first(TRAIN_FUNCTIONS) is not None


def train(config, report, cancel):
    """Run training (training.api.train) with `report(dict)` called for each progress report
    (step, total, phase, loss, val_loss, tokens_per_s, eta_s, message). Returns the adapter folder;
    a cancel raises the trainer's TrainingCancelled after its checkpoint."""
    fn = _first(TRAIN_FUNCTIONS)
    if fn is None:
        raise RuntimeError("training is not part of this build (the training module is missing)")
    return fn(config, lambda r: report(as_dict(r)), cancel)


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
def bench_job(cfg, report, cancel):
    """Run the quality benchmark and write its report: (results dict, report files)."""
    from app.bench.quality import run_quality

    results = run_quality(cfg, report, cancel)
    return results, write_report(results, cfg.out_dir)


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
def import_gguf(file: str, engine: str, say=None) -> str:
    """Convert a GGUF file into a registered model; returns the name to load it by."""
    fn = _first([("app.gguf_import", "import_gguf")])
    if fn is None:
        raise RuntimeError(f"GGUF import is not part of this build; choose a model folder instead of {file}")
    placed = fn(file, mlx=engine == "mlx", say=say or (lambda s: None), engine=engine)
    return next(iter(placed))  # the base name: --model NAME picks the right copy per engine
