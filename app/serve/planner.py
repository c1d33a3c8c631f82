"""What a request runs, decided in one call: the target its `model` names (catalog.py), the
messages or prompt the engine sees, and the decoding settings (the task's, overridden by the
request). The routes in api.py parse a body, ask `plan_chat` or `plan_completion`, and queue the
answer job; request errors come back as ApiErrors naming the parameter."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from app.serve import catalog
from app.serve.output import ApiError
from app.tasks import GenerationSettings


@dataclass
class Planned:
    target: catalog.Target
    prompt: list[dict] | str  # chat messages, or a completion's raw prompt
    settings: GenerationSettings


def plan_chat(body, engine: Callable[[], Any], limit: int) -> Planned:
    """A chat completion's plan; `auto` routes on the last user message. `engine()` gives the
    loaded engine (or raises the 503), asked only once the request itself has been checked."""
    users = [_text(m.content, i) for i, m in enumerate(body.messages) if m.role == "user"]
    target = target_for(body.model, engine(), users[-1] if users else None)
    return Planned(target, chat_messages(body, target),
                   settings_for(body, target, limit, body.max_completion_tokens or body.max_tokens))


def plan_completion(body, engine: Callable[[], Any], limit: int) -> Planned:
    """A text completion's plan: one prompt, as given (no chat template)."""
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(400, "send one prompt per request", param="prompt", code="invalid_value")
        prompt = prompt[0]
    if not prompt:
        raise ApiError(400, "the prompt is empty", param="prompt", code="invalid_value")
    target = target_for(body.model, engine(), prompt)
    for name, bad in (("echo", body.echo), ("logprobs", body.logprobs), ("suffix", body.suffix)):
        if bad:
            raise ApiError(400, f"{name} is not supported", param=name, code="unsupported_parameter")
    return Planned(target, prompt, settings_for(body, target, limit, body.max_tokens))


def target_for(model_id: str, engine, prompt: str | None = None) -> catalog.Target:
    try:
        return catalog.resolve(model_id, engine, prompt)
    except ValueError as e:  # a malformed mix, or nothing to route
        raise ApiError(400, str(e), param="model", code="invalid_value") from None
    except KeyError:
        known = ", ".join(m["id"] for m in catalog.models(engine))
        raise ApiError(404, f"the model {model_id!r} does not exist; this server has: {known}",
                       param="model", code="model_not_found") from None


def _text(content, i: int) -> str:
    """A message's text: a string, or the text parts of a content list (editors send either)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"messages[{i}]: only text content is supported, got a {part.get('type')!r} part",
                           param=f"messages.{i}.content", code="invalid_value")
        parts.append(part["text"])
    return "".join(parts)


def chat_messages(body, target: catalog.Target) -> list[dict]:
    """The messages the engine sees. A task model runs as its tab does (system prompt, user
    template on each user turn) unless the request brings its own system message: then the
    messages go to the task's adapter unchanged."""
    msgs = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content, i)}
            for i, m in enumerate(body.messages)]
    task = target.task
    if task is None or any(m["role"] == "system" for m in msgs):
        return msgs
    options = body.options or {}
    try:
        turns = [{**m, "content": task.user_message(m["content"], **options)} if m["role"] == "user" else m
                 for m in msgs]
    except ValueError as e:
        raise ApiError(400, str(e), param="options", code="invalid_value") from None
    return [{"role": "system", "content": task.system_prompt}, *turns]


def settings_for(body, target: catalog.Target, limit: int, max_tokens: int | None) -> GenerationSettings:
    """The task's generation settings (the base model: the engine defaults), overridden by the request."""
    if body.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", param="n", code="invalid_value")
    if max_tokens is not None and max_tokens > limit:
        raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {limit}",
                       param="max_tokens", code="invalid_value")
    stop = body.stop
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and len(stop) > 4:
        raise ApiError(400, "stop takes at most 4 strings", param="stop", code="invalid_value")
    base = target.task.generation if target.task else GenerationSettings()
    try:
        s = base.replace(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                         stop=tuple(stop) if stop is not None else None)
        return s.replace(max_tokens=min(s.max_tokens, limit))
    except ValueError as e:
        raise ApiError(400, str(e), code="invalid_value") from None
