"""What a training run will cost on this machine, measured before it starts.

    est = estimate(TrainConfig.for_task("math", data=["gsm8k/"], iters=600))
    est.total_s, est.peak_memory_gb

The real trainer (training.api.make_trainer) loads the model and prepares the task's data exactly
as `train` would, then runs `steps` optimizer steps on a seeded sample of the training set in a
temporary run folder (never registered, deleted afterwards). The first step is timed apart (it
compiles and warms the allocator); the others give the steady seconds per step. Validation is
timed on a couple of batches and scaled to the run's `val_batches`. Peak memory is the process's
peak RSS (and the engine's own peak when larger, e.g. Metal or CUDA memory), so `estimate_in_child`
measures each engine in a fresh process: one engine's model must not count against the next.
"""
from __future__ import annotations

import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from app.child_process import run_in_child
from app.format import human_duration
from training import api
from training.callbacks import Progress
from training.checkpoints import RunDir
from training.config import TrainConfig
from training.data import TokenCounter, check_paths, prepare

MEASURED_STEPS = 3  # one warm-up step and two timed ones: ~1 min on the 0.5B model, 2 CPU cores
VAL_BATCHES_MEASURED = 2  # validation batches timed per pass; the run's val_batches are scaled from these


@dataclass(frozen=True)
class Estimate:
    engine: str
    model: str
    task: str
    total_steps: int  # the full run's optimizer steps
    batch_size: int
    max_seq_length: int
    measured_steps: int
    load_s: float  # model load + data preparation, measured
    first_step_s: float
    step_s: float  # steady seconds per optimizer step (median of the timed steps)
    tokens_per_step: float  # mean trained tokens per step in the sample
    validation_s: float  # one validation pass of the run's size
    validations: int  # validation passes the full run makes
    peak_memory_gb: float  # peak RSS of the measuring process (or the engine's peak, if larger)

    @property
    def total_s(self) -> float:
        """The full run: load, validations, the first step, then steady steps."""
        steady = max(0, self.total_steps - 1) * self.step_s
        return self.load_s + self.validations * self.validation_s + self.first_step_s + steady

    def to_json(self) -> dict:
        return {**asdict(self), "total_s": round(self.total_s, 1)}

    def summary(self) -> str:
        """One line for the CLI and the Train panel."""
        val = (f", {self.validations} validations of {human_duration(self.validation_s)}"
               if self.validations else "")
        return (f"{self.engine}: {self.step_s:.2f} s/step ({self.tokens_per_step:.0f} tokens/step; first step "
                f"{self.first_step_s:.1f} s, load and data {human_duration(self.load_s)}{val}) -> "
                f"{self.total_steps} steps take about {human_duration(self.total_s)}; "
                f"peak memory {self.peak_memory_gb:.2f} GB")


def peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return kb / (1e9 if sys.platform == "darwin" else 1e6)


def _validations(total: int, eval_every: int) -> int:
    """Validation passes of a run of `total` steps; both trainers validate at the start (torch) or
    first step (mlx-lm), every `eval_every` steps and at the end."""
    return len({0, total - 1} | {s for s in range(total) if (s + 1) % eval_every == 0})


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2) if xs else 0.0


def estimate(config: TrainConfig, steps: int = MEASURED_STEPS, report=None, cancel=None) -> Estimate:
    """Measure `steps` steps of `config`'s training (see the module note)."""
    if steps < 2:
        raise ValueError("an estimate needs at least 2 steps (the first one only warms up)")
    say = report or (lambda _r: None)
    check_paths(config.data)
    t0 = time.perf_counter()
    engine, ref, model_path = api._resolve(config)  # noqa: SLF001 - the same resolution as train()
    # No checkpoints, one validation per measured pass at most: only timing is wanted.
    probe = config.replace(engine=engine, iters=steps, epochs=None, save_every=steps + 1, eval_every=steps + 1,
                           val_batches=VAL_BATCHES_MEASURED, register=False, resume=False)
    trainer = api.make_trainer(engine, probe, model_path)
    say({"message": f"estimate: loading {ref} ({engine}) and preparing the {config.task} data"})
    tokenizer = trainer.load()
    prepared = prepare(probe, TokenCounter(tokenizer))
    batch = min(config.batch_size, len(prepared.train))
    total = api._total_steps(config, len(prepared.train), batch)  # noqa: SLF001 - --epochs counts examples
    msgs = api.prepared_messages(config.task, prepared)
    rng = random.Random(config.seed)
    train = rng.sample(msgs["train"], min(len(msgs["train"]), steps * batch))
    valid = msgs["valid"][:VAL_BATCHES_MEASURED * batch] if len(msgs["valid"]) >= batch else []
    probe = probe.replace(batch_size=batch)
    trainer.config = probe
    load_s = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix="loradesk-estimate-"))
    progress = Progress(total=steps, callback=lambda r: say(r.to_json()))
    try:
        say({"message": f"estimate: timing {steps} steps on this machine"})
        wall = time.perf_counter()
        trainer.fit(train, valid, steps, None, RunDir(tmp), progress, cancel)
        wall = time.perf_counter() - wall
        engine_peak = trainer.peak_memory_gb()
    finally:
        trainer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    per_report = [(s, n, sec) for s, n, sec, _ in progress.throughput]
    if not per_report:
        raise RuntimeError("the trainer reported no steps; nothing to estimate from")
    first_s = per_report[0][2]
    timed = [sec for _, _, sec in per_report[1:]] or [first_s]
    n_val = len(progress.val_losses)
    # What is not stepping is validating (plus a little setup, so this errs long).
    val_pass = max(0.0, wall - sum(sec for _, _, sec in per_report)) / n_val if n_val else 0.0
    run_batches = len(msgs["valid"]) // batch
    run_batches = run_batches if config.val_batches == -1 else min(run_batches, config.val_batches)
    measured_batches = max(1, len(valid) // batch)
    validations = _validations(total, config.eval_every) if run_batches else 0
    return Estimate(
        engine=engine, model=str(ref), task=config.task, total_steps=total, batch_size=batch,
        max_seq_length=config.max_seq_length, measured_steps=len(per_report), load_s=round(load_s, 2),
        first_step_s=round(first_s, 3), step_s=round(_median(timed), 3),
        tokens_per_step=sum(n for _, n, _ in per_report) / len(per_report),
        validation_s=round(val_pass * run_batches / measured_batches, 3), validations=validations,
        peak_memory_gb=round(max(peak_rss_gb(), engine_peak or 0.0), 3),
    )


def estimate_job(config: TrainConfig, steps: int, report, cancel) -> Estimate:
    """app.child_process entry point: `estimate` in a spawned process."""
    return estimate(config, steps, report=report, cancel=cancel)


def estimate_in_child(config: TrainConfig, steps: int = MEASURED_STEPS, report=None, cancel=None) -> Estimate:
    """`estimate` in a fresh process, so its peak RSS is this engine's alone."""
    import threading


    return run_in_child("training.estimate:estimate_job", (config, steps), report or (lambda _r: None),
                        cancel or threading.Event(), "estimate")
