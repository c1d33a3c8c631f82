"""Model ids the server answers to, and what each one means for the engine.

`base` is the plain model; each task id (`math`, `code`, ...) is the task as its tab runs it: its
adapter when one is loaded, otherwise the base model with the task's prompt; `TASK:NAME` is any
other adapter stored for a task, loaded into the engine on first use and then kept resident.
`auto` lets the router pick the task from the prompt (the answer's `model` says which);
`mix:math=0.7,code=0.3` is a weighted mix of resident adapters (app/engine/mix.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from app import store
from app.engine.mix import label, parse
from app.plan import AUTO, mix_task
from app.router import NONE, route
from app.tasks import Task, get_task, task_names

BASE = "base"
_CREATED = int(time.time())  # OpenAI model objects carry a creation time; ours is the server's start


@dataclass(frozen=True)
class Target:
    id: str
    adapter: str | dict | None  # the engine's adapter name, a {name: weight} mix, or None: the plain base model
    task: Task | None  # whose system prompt and user template apply; None for `base`
    folder: Path | None = None  # a stored adapter to add to the engine before its first answer


def _stored_others(task: str) -> list:
    """The task's stored adapters other than the one in use (which the task id itself serves)."""
    try:
        in_use = store.current(task)
        return [a for a in store.list_adapters(task) if in_use is None or a.name != in_use.name]
    except Exception:  # noqa: BLE001 - a damaged registry must not take /v1/models down
        return []


def resolve(model_id: str, engine, prompt: str | None = None) -> Target:
    """The target for a request's `model` field (`prompt`: the text `auto` routes on); KeyError
    when no such model is served, ValueError for a malformed mix."""
    if model_id == BASE:
        return Target(BASE, None, None)
    if model_id == AUTO:  # no prompt: the listing's own lookup
        return _routed(prompt, engine) if prompt is not None else Target(AUTO, None, None)
    if model_id.startswith("mix:"):
        return _mixed(model_id, engine)
    task_name, _, name = model_id.partition(":")
    if task_name not in task_names():
        raise KeyError(model_id)
    task = get_task(task_name)
    if not name:
        return Target(model_id, task_name if task_name in engine.adapters else None, task)
    if model_id in engine.adapters:
        return Target(model_id, model_id, task)
    for a in _stored_others(task_name):
        if a.name == name:
            return Target(model_id, model_id, task, folder=a.path)

    in_use = store.current(task_name)
    if in_use is not None and in_use.name == name:  # TASK:CURRENT is the task id itself
        return Target(model_id, task_name if task_name in engine.adapters else None, task)
    raise KeyError(model_id)


def _routed(prompt: str, engine) -> Target:
    if not prompt.strip():
        raise ValueError("model 'auto' picks the task from the prompt, and the prompt is empty")
    r = route(prompt)
    if r.task == NONE:
        return Target(BASE, None, None)
    return Target(r.task, r.task if r.task in engine.adapters else None, get_task(r.task))


def _mixed(model_id: str, engine) -> Target:
    weights = parse(model_id, what="model")
    if not weights:
        raise ValueError(f"model {model_id!r}: every weight is zero (that is model 'base')")
    if any(n not in engine.adapters for n in weights):
        raise KeyError(model_id)
    task = mix_task(weights)  # whose prompt applies
    return Target(label(weights), weights, get_task(task) if task else None)


def models(engine) -> list[dict]:
    """OpenAI model objects, with what serves each (`adapter` null: the base model alone)."""
    base_ref = str(engine.model_info.ref) if engine.model_info else None

    def obj(mid, adapter, task, served_by):
        return {"id": mid, "object": "model", "created": _CREATED, "owned_by": "loradesk",
                "root": base_ref, "parent": None if mid == BASE else BASE, "task": task,
                "adapter": adapter, "served_by": served_by}

    out = [obj(BASE, None, None, "base model"),
           obj(AUTO, None, None, "the router picks a task per request (or the base model for general chat); "
                                 "mix:TASK=W,... mixes loaded adapters")]
    for t in task_names():
        if t in engine.adapters:
            out.append(obj(t, t, t, f"adapter {engine.adapters[t].path.name}"))
        else:
            out.append(obj(t, None, t, "base model with the task's prompt (no adapter loaded)"))
    for t in task_names():
        for a in _stored_others(t):
            out.append(obj(f"{t}:{a.name}", f"{t}:{a.name}", t, f"stored adapter {a.name}"))
    return out
