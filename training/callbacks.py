"""Training progress: the report dataclass both trainers emit, and the CLI's progress bar.

A trainer calls `Progress.train(...)` after each reported step and `Progress.val(...)` after each
validation; `Progress` adds throughput and ETA and hands a `TrainReport` to the user's callback
(the CLI's tqdm bar, or the GUI's loss curve). Callbacks run on the training thread.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

WARMUP_STEPS = 10  # steps left out of the steady tokens/s (first-step compilation, allocator warm-up)


@dataclass(frozen=True)
class TrainReport:
    step: int  # optimizer steps done (counting steps before a resume)
    total: int  # steps the run ends at
    phase: str  # "train" | "val" | "checkpoint" | "done" | "cancelled"
    loss: float | None = None  # mean train loss since the previous report
    val_loss: float | None = None
    tokens_per_s: float | None = None  # trained tokens per second over the last reports
    eta_s: float | None = None
    elapsed_s: float = 0.0  # training time in this session (validation included)
    learning_rate: float | None = None
    trained_tokens: int = 0
    peak_memory_gb: float | None = None
    message: str = ""

    def to_json(self) -> dict:
        return asdict(self)


Callback = Callable[[TrainReport], None]


@dataclass
class Progress:
    """Turns raw step facts into reports, and keeps the run's history (for loradesk.json)."""

    total: int
    start_step: int = 0
    callback: Callback | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    # per report: (step, tokens, step seconds without validation, wall seconds since this session began)
    throughput: list[tuple[int, int, float, float]] = field(default_factory=list)
    trained_tokens: int = 0
    train_seconds: float = 0.0
    steady_tokens: int = 0
    steady_seconds: float = 0.0
    peak_memory_gb: float | None = None

    def __post_init__(self):
        self._t0 = time.perf_counter()
        self._recent: list[tuple[int, float, int]] = []  # (steps, seconds, tokens) of recent reports

    def _emit(self, report: TrainReport) -> None:
        if self.callback is not None:
            self.callback(report)

    def eta(self, step: int) -> float | None:
        steps = sum(s for s, _, _ in self._recent)
        secs = sum(t for _, t, _ in self._recent)
        return (self.total - step) * secs / steps if steps else None

    def train(self, step: int, loss: float, steps: int, tokens: int, seconds: float,
              learning_rate: float | None = None, peak_memory_gb: float | None = None) -> None:
        """`steps` optimizer steps up to `step` took `seconds` (validation excluded), `tokens` trained."""
        self.losses.append((step, float(loss)))
        self.throughput.append((step, int(tokens), round(seconds, 6), round(time.perf_counter() - self._t0, 4)))
        self.trained_tokens += int(tokens)
        self.train_seconds += seconds
        if step - steps >= self.start_step + WARMUP_STEPS:
            self.steady_tokens += int(tokens)
            self.steady_seconds += seconds
        if step - steps > self.start_step:  # the session's first step compiles: not a rate sample
            self._recent = (self._recent + [(steps, seconds, int(tokens))])[-20:]
        if peak_memory_gb is not None:
            self.peak_memory_gb = max(self.peak_memory_gb or 0.0, peak_memory_gb)
        secs = sum(t for _, t, _ in self._recent)
        tps = sum(n for _, _, n in self._recent) / secs if secs > 0 else None
        self._emit(TrainReport(step, self.total, "train", loss=float(loss), tokens_per_s=tps,
                               eta_s=self.eta(step), elapsed_s=time.perf_counter() - self._t0,
                               learning_rate=learning_rate, trained_tokens=self.trained_tokens,
                               peak_memory_gb=self.peak_memory_gb))

    def val(self, step: int, val_loss: float) -> None:
        self.val_losses.append((step, float(val_loss)))
        self._emit(TrainReport(step, self.total, "val", val_loss=float(val_loss), eta_s=self.eta(step),
                               elapsed_s=time.perf_counter() - self._t0, trained_tokens=self.trained_tokens))

    def event(self, step: int, phase: str, message: str = "") -> None:
        self._emit(TrainReport(step, self.total, phase, elapsed_s=time.perf_counter() - self._t0,
                               trained_tokens=self.trained_tokens, message=message))

    def restore(self, summary: dict) -> None:
        """Continue the history saved in a checkpoint (a resumed run reports the whole curve)."""
        self.losses = [tuple(x) for x in summary.get("loss_curve", [])]
        self.val_losses = [tuple(x) for x in summary.get("val_loss_curve", [])]
        self.throughput = [tuple(x) for x in summary.get("throughput_curve", [])]
        self.trained_tokens = summary.get("trained_tokens", 0)
        self.train_seconds = summary.get("train_seconds", 0.0)
        self.steady_tokens = summary.get("steady_tokens", 0)
        self.steady_seconds = summary.get("steady_seconds", 0.0)
        self.peak_memory_gb = summary.get("peak_memory_gb")

    @property
    def tokens_per_s(self) -> float | None:
        """Steady training throughput: tokens/s after the first WARMUP_STEPS steps (all steps if
        the run is shorter)."""
        if self.steady_seconds > 0:
            return self.steady_tokens / self.steady_seconds
        return self.trained_tokens / self.train_seconds if self.train_seconds > 0 else None

    def summary(self) -> dict:
        return {
            "final_train_loss": self.losses[-1][1] if self.losses else None,
            "final_valid_loss": self.val_losses[-1][1] if self.val_losses else None,
            "tokens_per_s": self.tokens_per_s,
            "trained_tokens": self.trained_tokens,
            "train_seconds": round(self.train_seconds, 3),
            "steady_tokens": self.steady_tokens,
            "steady_seconds": round(self.steady_seconds, 3),
            "peak_memory_gb": self.peak_memory_gb,
            "loss_curve": [[s, round(v, 5)] for s, v in self.losses],
            "val_loss_curve": [[s, round(v, 5)] for s, v in self.val_losses],
            "throughput_curve": [list(t) for t in self.throughput],
        }


class TqdmCallback:
    """The CLI's progress bar: steps, loss, validation loss, tokens/s and ETA."""

    def __init__(self, file=None):
        self.file = file or sys.stderr
        self.bar = None
        self.val_loss = None

    def __call__(self, r: TrainReport) -> None:
        from tqdm import tqdm

        if r.phase in ("load", "note"):
            self._write(r.message)
            return
        if self.bar is None and r.phase in ("train", "val"):
            self.bar = tqdm(total=r.total, initial=r.step, unit="step", file=self.file, dynamic_ncols=True,
                            desc="train")
        if r.phase == "val":
            self.val_loss = r.val_loss
        elif r.phase == "train":
            self.bar.update(r.step - self.bar.n)
            post = {"loss": f"{r.loss:.3f}"}
            if self.val_loss is not None:
                post["val"] = f"{self.val_loss:.3f}"
            if r.tokens_per_s:
                post["tok/s"] = f"{r.tokens_per_s:.0f}"
            self.bar.set_postfix(post, refresh=False)
        elif r.phase in ("done", "cancelled"):
            self.close()
            self._write(r.message)

    def _write(self, message: str) -> None:
        if not message:
            return
        if self.bar is not None:
            self.bar.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
