"""One path for a request. The planner turns a prompt into what answers it: the task or mix, the
chat messages, the generation settings and the adapter selection. `answer` is the one job that
runs a plan on the engine: activate the selection, stream, then give the engine back as it was.
`ask`, the server, the tabs and Auto all use them, so a rule that decides an answer (Auto's
choice, a mix's prompt) is written once, here.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from app.engine.mix import parse
from app.router import NONE, Route, default_router
from app.tasks import GenerationSettings, get_task, task_names

AUTO = "auto"  # the task name that lets the router pick
KEEP = "keep"  # an answer's adapter: whatever the engine has active


@dataclass
class Plan:
    """What a request runs: the chat messages, settings, the adapters to load and which to activate."""

    messages: list[dict]
    settings: GenerationSettings
    tasks: list[str]  # adapters to load (named after their tasks)
    mix: dict[str, float] = field(default_factory=dict)  # {} unless a mix was asked for
    note: str = ""  # said to the user (Auto's choice)
    task: str = ""  # the task whose prompt it is (NONE for Auto's general chat)

    def selection(self, engine):
        """The argument for engine.activate: the mix, the task's adapter, or None (base model)."""
        if self.mix:
            return self.mix
        return self.tasks[0] if self.tasks and self.tasks[0] in engine.adapters else None


def parse_mix_arg(text: str) -> dict[str, float]:
    """TASK=W,...: a clear error for bad syntax or a name that is no task."""
    weights = parse(text)
    unknown = [n for n in weights if n not in task_names()]
    if unknown:
        raise ValueError(f"--mix {text!r}: {', '.join(map(repr, unknown))} is not a task; the adapters are "
                         f"named after their tasks: {', '.join(task_names())}")
    return weights


def mix_task(weights: Mapping[str, float]) -> str | None:
    """The task whose prompt and settings a mix answers with: its heaviest adapter's (`TASK:NAME`
    counts as TASK); None when that adapter is named after no task."""
    heaviest = max(weights, key=lambda n: weights[n]).partition(":")[0]
    return heaviest if heaviest in task_names() else None


def for_route(r: Route, text: str, engine=None, options: dict | None = None):
    """What Auto runs for a routed prompt: (adapter or None, chat messages, settings). A task gets
    its adapter (when the engine holds one) and its own prompt and settings, as its tab sends them;
    NONE is the base model with the prompt as typed."""
    if r.task == NONE:
        return None, [{"role": "user", "content": text}], GenerationSettings(max_tokens=512)
    task = get_task(r.task)
    adapter = r.task if engine is not None and r.task in engine.adapters else None
    return adapter, task.messages(text, **(options or {})), task.generation


def plan(text: str, task: str | None = None, mix: dict[str, float] | None = None, no_adapter: bool = False,
         options: dict | None = None) -> Plan:
    """The plan for one prompt: a task (AUTO: the router picks) or a mix (answered with its
    heaviest task's prompt), checked before any model loads."""
    mix = mix or {}
    if mix and no_adapter:
        raise ValueError("--mix and --no-adapter contradict each other; give one")
    note = ""
    if task == AUTO:
        r = default_router().route(text)
        note = f"auto: {r.task} ({r.confidence:.0%})"
        if r.task == NONE:
            if mix:
                raise ValueError("Auto chose general chat (no task) for this prompt; give --task with --mix")
            _, messages, settings = for_route(r, text)
            return Plan(messages, settings, [], note=note, task=NONE)
        task = r.task
    if task is None:
        if not mix:
            raise ValueError("say what to run: --task TASK, --task auto, or --mix TASK=W,...")
        task = mix_task(mix)
    record = get_task(task)
    messages = record.messages(text, **(options or {}))
    tasks = [] if no_adapter else (list(mix) if mix else [record.name])
    return Plan(messages, record.generation, tasks, mix, note, record.name)


def answer(engine, adapter, messages, settings: GenerationSettings, cancel: threading.Event | None = None,
           folder=None, restore: bool = True) -> Iterator:
    """Answer with `adapter` (a name, a {name: weight} mix, None for the base model, or KEEP),
    adding it from `folder` first when it is not resident (it stays resident); stream the answer's
    Chunks. With `restore` the engine answers under that adapter set without changing its active
    one (a batching engine runs it beside other answers), so the next request and the app's tabs
    find the engine as they left it; without, the adapter set stays active."""
    if adapter == KEEP:
        yield from engine.stream_generate(messages, settings, cancel)
        return
    if folder is not None and isinstance(adapter, str) and adapter not in engine.adapters:
        engine.add_adapter(adapter, folder)
    if restore:
        yield from engine.stream_generate(messages, settings, cancel, adapter=adapter)
        return
    engine.activate(adapter)
    yield from engine.stream_generate(messages, settings, cancel)
