"""A conversation as chat messages: follow-ups, the context limit, and Markdown export.

One planner for the CLI (`ask --chat`) and the tabs: the task's system prompt, then every earlier
turn (question as sent, answer), then the new question. When that does not fit the model's context
the oldest turns are dropped whole, keeping the system prompt and the new question; a question too
long on its own is then cut by the engine's one rule (Engine.fit_prompt, base.truncate).
No Qt here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from app.chats import Chat, Message


@dataclass
class TurnsDropped:
    """Yielded by an answer job before the answer: how many old turns were left out to fit."""

    turns: int


def history(messages: list[Message]) -> list[dict]:
    """Earlier turns as chat messages. Of a comparison the first pane's answer is the one carried on."""
    out: list[dict] = []
    answered: set[int] = set()
    for m in messages:
        if m.role == "user":
            out.append({"role": "user", "content": m.prompt or m.content})
        elif m.role == "assistant" and m.turn not in answered and m.pane <= 1:
            answered.add(m.turn)
            out.append({"role": "assistant", "content": m.content})
    # A question whose answer was never written (a crash mid-answer) is not sent again.
    return [m for i, m in enumerate(out) if m["role"] == "assistant" or
            (i + 1 < len(out) and out[i + 1]["role"] == "assistant")]


def with_history(messages: list[dict], earlier: list[dict]) -> list[dict]:
    """`messages` (system prompt + the new question) with the earlier turns between them."""
    head = 1 if messages and messages[0]["role"] == "system" else 0
    return messages[:head] + earlier + messages[head:]


def _head(messages: list[dict]) -> int:
    return 1 if messages and messages[0]["role"] == "system" else 0


def drop_old_turns(engine, messages: list[dict], max_tokens: int) -> tuple[list[dict], int]:
    """The messages with as few of the oldest turns (question + answer) dropped as makes the prompt
    leave `max_tokens` of the context free, and how many were dropped. The system prompt and the
    last question always stay. Binary search: a 10,000-message chat needs ~14 tokenizations, not 5,000."""
    room = engine.context_length - max_tokens
    head = _head(messages)
    pairs = (len(messages) - head - 1) // 2  # earlier turns

    def fits(k: int) -> bool:
        kept = messages[:head] + messages[head + 2 * k:]
        return len(engine.encode(engine.chat_prompt(kept))) <= room

    if pairs == 0 or fits(0):
        return messages, 0
    lo, hi = 1, pairs  # the least k that fits, or all of them
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return messages[:head] + messages[head + 2 * lo:], lo


def settings_record(settings) -> dict:
    """GenerationSettings as stored with an answer (JSON)."""
    from dataclasses import asdict

    out = asdict(settings)
    out["stop"] = list(out.get("stop", ()))
    return out


def dropped_note(turns: int) -> str:
    return f"{turns} earlier turn{'s' if turns != 1 else ''} left out to fit the context" if turns else ""


def chat_name(text: str) -> str:
    """A new conversation's name: the start of its first question."""
    words = " ".join(text.split())
    return words[:48].rstrip() + ("…" if len(words) > 48 else "")


def _who(m: Message) -> str:
    adapter = m.adapter or "base model"
    speed = f", {m.tps:.1f} tok/s" if m.tps else ""
    side = f"Pane {m.pane} · " if m.pane else ""
    return f"{side}{adapter}{speed}"


def to_markdown(chat: Chat, messages: list[Message]) -> str:
    """The conversation as a Markdown document (the CLI's and the app's export)."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(chat.created))
    lines = [f"# {chat.name}", "", f"*Task: {chat.task} · started {when}*", ""]
    for m in messages:
        if m.role == "user":
            lines += ["## You", "", m.content.strip(), ""]
        else:
            lines += [f"## Answer ({_who(m)})", "", m.content.strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def to_json(chat: Chat, messages: list[Message]) -> dict:
    from dataclasses import asdict

    return {"name": chat.name, "task": chat.task, "created": chat.created, "updated": chat.updated,
            "turns": chat.turns, "messages": [asdict(m) for m in messages]}
