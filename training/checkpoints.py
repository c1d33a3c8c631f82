"""Training runs on disk: a run folder per training, checkpoints inside it, for `--resume`.

    <home>/runs/train/<task>/<adapter name>/
        run.json                      config, model, data fingerprint, status, last step
        checkpoints/step-0000050/     adapter weights, optimizer.safetensors, state.json

A checkpoint is written into a temp folder and renamed into place, and state.json is its last file,
so a crash or Ctrl-C mid-write leaves the previous checkpoint intact. Optimizer state is stored as
safetensors (never pickle). The newest two checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from app import paths

KEEP = 2


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


@dataclass
class Checkpoint:
    step: int
    path: Path
    state: dict  # progress history and anything the trainer stored


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def info_file(self) -> Path:
        return self.path / "run.json"

    def info(self) -> dict:
        try:
            return json.loads(self.info_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def update(self, **fields) -> None:
        info = self.info()
        info.update(fields, updated=time.time())
        _write_json(self.info_file, info)

    def checkpoints(self) -> list[Checkpoint]:
        out = []
        root = self.path / "checkpoints"
        for d in sorted(root.glob("step-*")) if root.exists() else []:
            state_file = d / "state.json"
            if not state_file.exists():
                continue  # an unfinished write
            try:
                state = json.loads(state_file.read_text())
            except json.JSONDecodeError:
                continue
            out.append(Checkpoint(int(state["step"]), d, state))
        return sorted(out, key=lambda c: c.step)

    def last_checkpoint(self) -> Checkpoint | None:
        cps = self.checkpoints()
        return cps[-1] if cps else None

    def save_checkpoint(self, step: int, write: Callable[[Path], None], state: dict) -> Path:
        """`write(folder)` writes the weights and optimizer state; state.json is written last."""
        root = self.path / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{step:07d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:07d}.", dir=root))
        try:
            write(tmp)
            _write_json(tmp / "state.json", {**state, "step": step, "saved": time.time()})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.checkpoints()[:-KEEP]:
            shutil.rmtree(old.path, ignore_errors=True)
        self.update(status="running", step=step)
        return final

    def clear_checkpoints(self) -> None:
        """After a finished run: the adapter is in the store; the run keeps run.json only."""
        shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
        (self.path / "adapters.safetensors").unlink(missing_ok=True)  # mlx-lm's own final save


def runs_root(task: str) -> Path:
    root = paths.runs_dir() / "train" / task
    root.mkdir(parents=True, exist_ok=True)
    return root


def new_run(task: str, name: str, info: dict) -> RunDir:
    path = runs_root(task) / name
    n = 1
    while path.exists():
        n += 1
        path = runs_root(task) / f"{name}-{n}"
    path.mkdir(parents=True)
    run = RunDir(path)
    _write_json(run.info_file, {**info, "status": "running", "step": 0, "created": time.time()})
    return run


def resumable_runs(task: str) -> list[RunDir]:
    """Interrupted runs of `task` with at least one checkpoint, newest first."""
    runs = []
    for d in runs_root(task).iterdir():
        run = RunDir(d)
        info = run.info()
        if d.is_dir() and info and info.get("status") != "done" and run.last_checkpoint() is not None:
            runs.append((info.get("updated", info.get("created", 0)), run))
    return [r for _, r in sorted(runs, key=lambda x: -x[0])]


class TrainingCancelled(Exception):
    """Training stopped on request; the run folder holds a checkpoint to resume from."""

    def __init__(self, run: RunDir, step: int, total: int):
        self.run, self.step, self.total = run, step, total
        super().__init__(f"training stopped at step {step} of {total}; the checkpoint is in {run.path}")
