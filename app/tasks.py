"""Task records: the single source of truth for each task's prompt, generation settings, datasets,
metric and adapter source. The records are the TOML files in the `adapters` package; training, the
engine, the benchmark and the UI all read them through this module.
"""
from __future__ import annotations

import string
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, as a backport (pyproject: tomli; python_version < '3.11')
    import tomli as tomllib


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; the task record's `[generation]` table fills the defaults."""

    max_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def replace(self, **changes) -> "GenerationSettings":
        from dataclasses import replace

        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class ShippedAdapter:
    """An adapter that comes with the app for one base model (`[[adapter.shipped]]`): registered for
    its task whenever that model is loaded and the user has no adapter of their own for the task."""

    base: str  # the hub repo id of the base model it was trained on
    path: str  # folder, relative to the record


@dataclass(frozen=True)
class DatasetSpec:
    """One source dataset of a task: hub id (or local path), config, splits and field mapping."""

    id: str
    fields: dict[str, str]
    config: str | None = None
    train_split: str = "train"
    eval_split: str | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class TrainingDefaults:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    num_layers: int = -1  # -1: every layer
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 2e-4
    iters: int = 600
    batch_size: int = 4
    max_seq_length: int = 1024


@dataclass(frozen=True)
class Task:
    name: str
    label: str
    order: int
    metric: str
    system_prompt: str
    user_template: str
    example_input: str
    example_output: str
    generation: GenerationSettings
    datasets: tuple[DatasetSpec, ...]
    adapter_source: str
    training: TrainingDefaults
    options: dict[str, dict[str, str]] = field(default_factory=dict)
    record_path: Path | None = None
    hub_keywords: tuple[str, ...] = ()  # words that mark a Hub adapter as made for this task ([hub] keywords)
    shipped: tuple[ShippedAdapter, ...] = ()

    def shipped_folders(self) -> list[tuple[ShippedAdapter, Path]]:
        """The shipped adapters that are present (a source checkout or an installed package)."""
        root = self.record_path.parent if self.record_path is not None else Path(".")
        return [(s, root / s.path) for s in self.shipped if (root / s.path).is_dir()]

    def option_choices(self, option: str) -> list[str]:
        return list(self.options.get(option, {}))

    def user_message(self, text: str, **options: str) -> str:
        """Fill the user template. Options not given take their first (default) choice."""
        values = {}
        for key, choices in self.options.items():
            choice = options.get(key) or next(iter(choices))
            if choice not in choices:
                raise ValueError(f"task {self.name!r}: {key} must be one of {list(choices)}, got {choice!r}")
            values[key] = choices[choice]
        return self.user_template.format(input=text, **values)

    def messages(self, text: str, response: str | None = None, **options: str) -> list[dict]:
        """The chat messages for one input; with `response`, a complete training example."""
        msgs = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self.user_message(text, **options)},
        ]
        if response is not None:
            msgs.append({"role": "assistant", "content": response})
        return msgs


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def parse_record(data: dict, path: Path | None = None) -> Task:
    where = path or data.get("name", "?")
    try:
        gen = dict(data.get("generation", {}))
        gen["stop"] = tuple(gen.get("stop", ()))
        train = dict(data.get("training", {}))
        if "target_modules" in train:
            train["target_modules"] = tuple(train["target_modules"])
        task = Task(
            name=data["name"],
            label=data["label"],
            order=int(data.get("order", 99)),
            metric=data["metric"],
            system_prompt=data["system_prompt"],
            user_template=data["user_template"],
            example_input=data["example_input"],
            example_output=data.get("example_output", ""),
            generation=GenerationSettings(**gen),
            datasets=tuple(DatasetSpec(**d) for d in data.get("datasets", [])),
            adapter_source=data.get("adapter", {}).get("source", ""),
            training=TrainingDefaults(**train),
            options={k: dict(v) for k, v in data.get("options", {}).items()},
            record_path=path,
            hub_keywords=tuple(str(k).lower() for k in data.get("hub", {}).get("keywords", ())),
            shipped=tuple(ShippedAdapter(**d) for d in data.get("adapter", {}).get("shipped", [])),
        )
    except KeyError as e:
        raise ValueError(f"task record {where}: missing field {e.args[0]!r}") from None
    except TypeError as e:
        raise ValueError(f"task record {where}: {e}") from None
    unknown = _placeholders(task.user_template) - {"input", *task.options}
    if unknown:
        raise ValueError(f"task record {where}: user_template uses unknown placeholders {sorted(unknown)}")
    return task


@lru_cache(maxsize=1)
def load_tasks() -> dict[str, Task]:
    """All task records, in display order."""
    found = []
    for entry in resources.files("adapters").iterdir():
        if entry.name.endswith(".toml"):
            path = Path(str(entry))
            found.append(parse_record(tomllib.loads(entry.read_text(encoding="utf-8")), path))
    found.sort(key=lambda t: (t.order, t.name))
    return {t.name: t for t in found}


def task_names() -> list[str]:
    return list(load_tasks())


def get_task(name: str) -> Task:
    tasks = load_tasks()
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; the tasks are: {', '.join(tasks)}")
    return tasks[name]
