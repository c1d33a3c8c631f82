"""Train one task's adapter: the entry point the CLI and the GUI call (from a worker thread).

    folder = train(TrainConfig.for_task("math", data=["gsm8k/"], iters=200), callback, cancel)

`callback` receives `TrainReport`s (step, total, loss, val_loss, tokens/s, ETA); setting `cancel`
stops after the current step with a checkpoint, raising `TrainingCancelled`; `resume(task)`
continues the newest interrupted run. The finished adapter is written to a temp folder, described
by `loradesk.json`, and registered atomically in the adapter store, so `loradesk ask --task T` uses
it at once. Neither mlx nor torch is imported here: the trainer modules are loaded on demand.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

from app import store
from app.engine.adapter_format import read_adapter
from app.engine.base_model import weights_digest
from app.engine.lora import METADATA_FILE, fingerprint_of
from app.errors import EngineError
from app.models import resolve_model
from app.session import choose_model, choose_training_engine
from app.tasks import get_task
from training.callbacks import Callback, Progress
from training.checkpoints import RunDir, TrainingCancelled, new_run, resumable_runs
from training.config import TrainConfig
from training.data import Prepared, TokenCounter, check_paths, prepare, rows_seen

__all__ = ["train", "resume", "TrainingCancelled", "TrainConfig", "make_trainer"]


def make_trainer(engine: str, config: TrainConfig, model_path: Path):
    if engine == "mlx":
        import importlib

        try:
            from app.engine import mlx_thread

            # imported on the MLX thread: mlx-lm's modules may create arrays as they load
            module = mlx_thread.call(importlib.import_module, "training.mlx_trainer")
        except ImportError as e:
            raise EngineError(f"MLX training needs mlx and mlx-lm ({e}); use --engine torch") from None
        return module.MLXTrainer(config, model_path)
    try:
        from training.torch_trainer import TorchTrainer
    except ImportError as e:
        raise EngineError(f"torch training needs torch, transformers and peft ({e}); use --engine mlx") from None
    return TorchTrainer(config, model_path)


def _resolve(config: TrainConfig) -> tuple[str, str, Path]:
    engine = choose_training_engine(config.engine)
    ref = choose_model(config.model, engine)
    return engine, ref, resolve_model(ref, engine)


def _total_steps(config: TrainConfig, n_train: int, batch_size: int) -> int:
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * n_train / batch_size))
    return config.iters


def _notes(prepared: Prepared, config: TrainConfig) -> list[str]:
    notes = list(prepared.warnings)
    if len(prepared.valid) < config.batch_size:
        notes.append(f"only {len(prepared.valid)} validation examples (< batch size {config.batch_size}): "
                     "no validation loss this run")
    return notes


def train(config: TrainConfig, callback: Callback | None = None, cancel=None) -> Path:
    """Run a training to its end and register the adapter; returns the adapter's folder."""
    if config.resume:
        run_path = None if config.resume is True else Path(str(config.resume))
        return resume(config.task, run_path, callback=callback, cancel=cancel)
    check_paths(config.data)
    engine, ref, model_path = _resolve(config)
    trainer = make_trainer(engine, config, model_path)
    progress = Progress(total=config.iters or 0, callback=callback)
    progress.event(0, "load", f"loading {ref} ({engine}) and preparing the {config.task} data")
    tokenizer = trainer.load()
    prepared = prepare(config, TokenCounter(tokenizer))
    batch_size = min(config.batch_size, len(prepared.train))
    if batch_size != config.batch_size:
        config = config.replace(batch_size=batch_size)
        trainer.config = config
    total = _total_steps(config, len(prepared.train), batch_size)
    run = new_run(config.task, config.name, {
        "config": config.to_json(), "engine": engine, "model": ref, "model_path": str(model_path),
        "data_fingerprint": prepared.fingerprint(), "total": total, "report": prepared.report,
    })
    return _fit(config, engine, ref, model_path, trainer, prepared, run, total, None, callback, cancel)


def resume(task: str, run_path: Path | None = None, callback: Callback | None = None, cancel=None,
           iters: int | None = None) -> Path:
    """Continue an interrupted run (the newest of `task`, or `run_path`) from its last checkpoint.
    `iters` moves the end of the run (e.g. to train longer than first planned)."""
    if run_path is None:
        runs = resumable_runs(task)
        if not runs:
            raise EngineError(f"no interrupted training of task {task!r} to resume; "
                              f"start one with: loradesk train --task {task}")
        run = runs[0]
    else:
        run = RunDir(run_path)
    info = run.info()
    start = run.last_checkpoint()
    if not info or start is None:
        raise EngineError(f"{run.path} holds no checkpoint to resume from")
    config = TrainConfig.from_json({**info["config"], "resume": False})
    total = iters or info["total"]
    if total <= start.step:
        raise EngineError(f"the run is already at step {start.step}; pass --iters above {start.step} to train longer")
    engine, ref, model_path = info["engine"], info["model"], Path(info["model_path"])
    if not model_path.exists():
        model_path = resolve_model(ref, engine)
    trainer = make_trainer(engine, config, model_path)
    tokenizer = trainer.load()
    prepared = prepare(config, TokenCounter(tokenizer))
    if prepared.fingerprint() != info["data_fingerprint"]:
        raise EngineError(f"the training data changed since {run.path.name} started (its checkpoint would be "
                          f"continued on other examples); start a new run without --resume")
    config = config.replace(batch_size=min(config.batch_size, len(prepared.train)))
    trainer.config = config
    run.update(total=total)
    return _fit(config, engine, ref, model_path, trainer, prepared, run, total, start, callback, cancel)


def _fit(config, engine, ref, model_path, trainer, prepared, run, total, start, callback, cancel) -> Path:
    progress = Progress(total=total, start_step=start.step if start else 0, callback=callback)
    if start is not None:
        progress.restore(start.state.get("progress", {}))
    for note in _notes(prepared, config):
        progress.event(progress.start_step, "note", note)
    task_msgs = prepared_messages(config.task, prepared)
    wall = time.perf_counter()
    try:
        trainer.fit(task_msgs["train"], task_msgs["valid"], total, start, run, progress, cancel)
    except TrainingCancelled as e:
        trainer.close()
        run.update(status="cancelled", step=e.step)
        progress.event(e.step, "cancelled", f"stopped at step {e.step}/{total}; continue with: "
                                            f"loradesk train --task {config.task} --resume")
        raise
    except BaseException as e:
        trainer.close()
        run.update(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    wall = time.perf_counter() - wall
    try:
        folder = _export(config, engine, ref, model_path, trainer, prepared, run, total, progress, wall)
    finally:
        trainer.close()
    run.update(status="done", step=total, adapter=str(folder))
    run.clear_checkpoints()
    summary = progress.summary()
    progress.event(total, "done", f"trained the {config.task} adapter {run.path.name}: train loss "
                                  f"{_fmt(summary['final_train_loss'])}, valid loss {_fmt(summary['final_valid_loss'])}, "
                                  f"{_fmt(summary['tokens_per_s'], '.0f')} tokens/s -> {folder}")
    return folder


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def prepared_messages(task_name: str, prepared: Prepared) -> dict[str, list[list[dict]]]:
    task = get_task(task_name)
    return {"train": [e.messages(task) for e in prepared.train], "valid": [e.messages(task) for e in prepared.valid]}


def _export(config, engine, ref, model_path, trainer, prepared, run, total, progress, wall) -> Path:
    """Write the adapter into a temp folder, describe it, check it reads back, then register it."""
    tmp = run.path / "adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    trainer.export(tmp)
    base_cfg = (Path(model_path) / "config.json").read_bytes()
    summary = progress.summary()
    meta = {
        "task": config.task, "base_model": ref, "base_model_path": str(model_path),
        "fingerprint": fingerprint_of(json.loads(base_cfg)),
        "base_config_sha256": hashlib.sha256(base_cfg).hexdigest(),
        "base_weights_sample_sha256": weights_digest(model_path),
        "engine": engine, "format": trainer.format, "fine_tune_type": config.fine_tune_type,
        "training": {k: v for k, v in config.to_json().items() if k not in ("resume", "register")},
        "datasets": prepared.report["sources"], "examples": {"train": len(prepared.train),
                                                             "valid": len(prepared.valid), "test": len(prepared.test)},
        "eval_items": prepared.report.get("eval_items"), "data_fingerprint": prepared.fingerprint(),
        "rows_seen": rows_seen(prepared, getattr(trainer, "trained", None)),
        "steps": total, **summary, "peak_memory_gb": summary["peak_memory_gb"] or trainer.peak_memory_gb(),
        "wall_seconds": round(wall, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    if config.fine_tune_type == "dora" or not config.register:
        final = run.path / "adapter"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if config.fine_tune_type == "dora":
            progress.event(total, "note", f"DoRA adapters cannot be hot-swapped, so it is not registered; "
                                          f"it is in {final} (fuse it into the model with mlx_lm.fuse)")
        return final
    read_adapter(tmp)  # refuse to register anything that does not read back
    return store.add(config.task, tmp, name=run.path.name, source="trained", move=True).path
