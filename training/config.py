"""The training configuration: one typed dataclass, its defaults taken from the task record.

`TrainConfig.for_task("math", iters=100)` starts from the record's `[training]` table (the single
source of truth for per-task defaults) and applies overrides; `__post_init__` validates everything
before any data or model is touched.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from app.tasks import get_task

ENGINES = ("mlx", "torch")
FINE_TUNE_TYPES = ("lora", "dora")
SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainConfig:
    task: str
    """Task name (a record in adapters/); the adapter is registered for it."""
    model: str | None = None
    """Base model: local folder, registered name or hub repo id (default: the app's current model)."""
    engine: str | None = None
    """'mlx' (mlx-lm tuner, LoRA on the quantized base = QLoRA) or 'torch' (PEFT); default: the app's."""
    data: tuple[str, ...] = ()
    """Local files/folders (jsonl, json, parquet, csv); 'DATASET_ID=PATH' pins a file to a source.
    Empty: every source of the task record, loaded from the hub with `datasets`."""
    mix: dict[str, float] = field(default_factory=dict)
    """Mixing weights per dataset id, overriding the record's `weight`s (renormalized)."""
    max_examples: int | None = None
    """Cap on the mixed training set (None: as many as the ratios allow)."""
    max_source_rows: int | None = 20_000
    """Rows read per source and file (the first N; None: all). CNN/DailyMail has 287k articles:
    preparing all of them takes longer than a 600-step run trains on."""
    valid_fraction: float = 0.05
    test_fraction: float = 0.05

    fine_tune_type: str = "lora"
    """'lora' or 'dora' (DoRA trains fine but cannot be hot-swapped; it is saved, not registered)."""
    rank: int = 16
    alpha: float = 32.0
    """LoRA scale is alpha / rank (PEFT's convention; mlx-lm's `scale`)."""
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    num_layers: int = -1
    """Adapt the last N transformer blocks; -1: all."""
    learning_rate: float = 2e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    iters: int | None = 600
    """Optimizer steps. Set `epochs` instead to derive it from the training set size."""
    epochs: float | None = None
    batch_size: int = 4
    max_seq_length: int = 1024
    """Tokens per example; longer articles are cut (start kept), other long examples dropped."""
    mask_prompt: bool = True
    """Train on the answer only (the system prompt and input carry no loss)."""
    grad_checkpoint: bool = False
    seed: int = 0
    threads: int | None = None
    """CPU threads for the torch trainer (None: torch's default, one per core). On a CPU other
    programs keep busy, 1 is far faster: 0.5B model, 2 shared cores: 60-97 s/step with 2, 3.5 s with 1."""

    save_every: int = 50
    """Checkpoint every N steps (adapter, optimizer state and step), for --resume."""
    eval_every: int = 100
    val_batches: int = 25
    report_every: int = 1
    """Steps between progress reports (loss, tokens/s, ETA) to the callback."""

    name: str | None = None
    """Adapter name in the store (default: '<task>-<date>-<time>')."""
    resume: bool | str = False
    """True: continue the task's last interrupted run; a path: continue that run folder."""
    register: bool = True
    """Register the trained adapter as the task's current one (store.add)."""

    def __post_init__(self):
        get_task(self.task)  # unknown task -> ValueError listing the tasks
        self.data = tuple(str(d) for d in self.data)
        self.target_modules = tuple(self.target_modules)
        checks = [
            (self.engine is None or self.engine in ENGINES,
             f"engine must be one of {ENGINES} (llama.cpp does not train; its adapters come from these)"),
            (self.fine_tune_type in FINE_TUNE_TYPES, f"fine_tune_type must be one of {FINE_TUNE_TYPES}"),
            (self.lr_schedule in SCHEDULES, f"lr_schedule must be one of {SCHEDULES}"),
            (self.rank >= 1, "rank must be >= 1"),
            (self.alpha > 0, "alpha must be > 0"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (bool(self.target_modules), "target_modules must not be empty"),
            (self.num_layers == -1 or self.num_layers >= 1, "num_layers must be -1 (all) or >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.iters is not None or self.epochs is not None, "set iters or epochs"),
            (self.iters is None or self.iters >= 1, "iters must be >= 1"),
            (self.epochs is None or self.epochs > 0, "epochs must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_seq_length >= 16, "max_seq_length must be >= 16"),
            (self.save_every >= 1 and self.eval_every >= 1 and self.report_every >= 1,
             "save_every, eval_every and report_every must be >= 1"),
            (0 <= self.valid_fraction < 0.5 and 0 <= self.test_fraction < 0.5,
             "valid_fraction and test_fraction must be in [0, 0.5)"),
            (self.max_examples is None or self.max_examples >= 1, "max_examples must be >= 1"),
            (self.max_source_rows is None or self.max_source_rows >= 1, "max_source_rows must be >= 1"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1"),
            (all(w >= 0 for w in self.mix.values()), "mix weights must be >= 0"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ValueError(f"training config for {self.task!r}: " + "; ".join(bad))
        if self.name is None:
            self.name = f"{self.task}-{time.strftime('%Y%m%d-%H%M%S')}"

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def for_task(cls, task: str, **overrides) -> "TrainConfig":
        """The record's [training] defaults for `task`, with `overrides` (None values ignored)."""
        d = get_task(task).training
        base = {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(task=task, **base)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
