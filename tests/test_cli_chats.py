"""`ask --chat` and `loradesk chats`, in-process on the tiny model: follow-ups carry the whole
conversation, old turns are dropped to fit, and list/show/export/delete read the app's store."""
from __future__ import annotations

import json
import shutil

import pytest

from app.chats import ChatStore, Message
from app.cli import main
from app.conversation import drop_old_turns, history, with_history
from app.tasks import get_task


@pytest.fixture(scope="module")
def engine(tiny_qwen):
    from app.engine import create_engine

    e = create_engine("mlx")
    e.load(str(tiny_qwen))
    return e


def ask(model, *args):
    return main(["ask", "--engine", "mlx", "--model", str(model), "--max-tokens", "10", *args])


def test_a_follow_up_is_answered_with_the_whole_conversation(tiny_qwen, tiny_adapters, engine, capsys):
    main(["adapters", "add", "math", str(tiny_adapters["qwen2"]["math"])])
    capsys.readouterr()
    assert ask(tiny_qwen, "--chat", "sums", "--task", "math", "What is 2+2?") == 0
    first = capsys.readouterr().out.strip()
    assert ask(tiny_qwen, "--chat", "sums", "And times 3?") == 0  # --task is remembered
    second = capsys.readouterr().out.strip()

    task = get_task("math")
    settings = task.generation.replace(max_tokens=10)
    engine.add_adapter("math", tiny_adapters["qwen2"]["math"])
    engine.activate("math")
    context = with_history(task.messages("And times 3?"), task.messages("What is 2+2?")[1:] +
                           [{"role": "assistant", "content": first}])
    assert engine.generate(context, settings).strip() == second
    assert engine.generate(task.messages("And times 3?"), settings).strip() != second  # the context mattered

    store = ChatStore()
    chat = store.get("sums")
    assert chat.task == "math" and chat.turns == 2
    msgs = store.messages(chat.id)
    assert [m.content.strip() for m in msgs] == ["What is 2+2?", first, "And times 3?", second]
    answer = msgs[1]
    assert answer.adapter == "math" and answer.adapter_hash and answer.model == str(tiny_qwen)
    assert answer.settings["max_tokens"] == 10 and answer.finish in ("stop", "length")
    assert msgs[0].prompt == task.user_message("What is 2+2?")

    assert ask(tiny_qwen, "--chat", "sums", "--task", "code", "x") == 2
    assert "is a math conversation" in capsys.readouterr().err


def test_old_turns_are_dropped_to_fit_and_said(tiny_qwen, engine, tmp_path, capsys):
    small = tmp_path / "qwen2-256"
    shutil.copytree(tiny_qwen, small)
    cfg = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 256}))
    store = ChatStore()
    chat = store.create("summarize", "long")
    for i in range(12):
        store.add_turn(chat.id, Message("user", f"Question {i} about the harbour and its boats."),
                       [Message("assistant", f"Answer {i}: boats, nets, gulls and tides. " * 3)])
    assert ask(small, "--chat", "long", "--stats", "The last question?") == 0
    err = capsys.readouterr().err
    assert "earlier turns left out to fit the context" in err
    dropped = int(err.split(" earlier turns left out")[0].split()[-1])
    assert 0 < dropped < 12
    prompt = int(err.split("prompt ")[1].split(" tok")[0])
    assert prompt + 10 <= 256 and "its end was cut" not in err  # whole turns went, the question stayed whole


def test_drop_old_turns_keeps_system_and_question_and_drops_the_fewest(engine):
    task = get_task("summarize")
    earlier = []
    for i in range(20):
        earlier += [{"role": "user", "content": f"Question {i}: " + "word " * 20},
                    {"role": "assistant", "content": f"Answer {i}: " + "reply " * 20}]
    messages = with_history(task.messages("Newest question?"), earlier)
    room = lambda ms: len(engine.encode(engine.chat_prompt(ms)))  # noqa: E731
    limit = engine.context_length - 64
    kept, dropped = drop_old_turns(engine, messages, 64)
    assert dropped > 0 and kept[0] == messages[0] and kept[-1] == messages[-1]
    assert kept[1]["content"].startswith(f"Question {dropped}:")  # whole turns, oldest first
    assert room(kept) <= limit
    one_fewer = messages[:1] + messages[1 + 2 * (dropped - 1):]
    assert room(one_fewer) > limit
    assert drop_old_turns(engine, task.messages("short"), 64) == (task.messages("short"), 0)


def test_history_skips_an_unanswered_question_and_uses_the_first_pane():
    msgs = [Message("user", "q1", prompt="P1", turn=1), Message("assistant", "left", pane=1, turn=1),
            Message("assistant", "right", pane=2, turn=1), Message("user", "q2 (crashed)", turn=2)]
    assert history(msgs) == [{"role": "user", "content": "P1"}, {"role": "assistant", "content": "left"}]


def test_chats_list_show_export_delete(capsys):
    store = ChatStore()
    chat = store.create("code", "Sorting")
    store.add_turn(chat.id, Message("user", "Sort [3, 1]"),
                   [Message("assistant", "```python\nsorted([3, 1])\n```", adapter="code", tps=21.5)])
    other = store.create("math", "Sums")
    store.add_turn(other.id, Message("user", "2+2"), [Message("assistant", "4")])

    assert main(["chats", "list"]) == 0
    out = capsys.readouterr().out
    assert out.index("Sums") < out.index("Sorting") and "code" in out
    assert main(["chats", "list", "--json", "--task", "code"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["task"], r["turns"]) for r in rows] == [("Sorting", "code", 1)]
    assert main(["chats", "list", "--json", "--search", "sorted"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["Sorting"]

    assert main(["chats", "show", "Sorting"]) == 0
    assert "> Sort [3, 1]" in capsys.readouterr().out
    assert main(["chats", "export", "Sorting"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Sorting\n") and "## You\n\nSort [3, 1]" in md
    assert "## Answer (code, 21.5 tok/s)\n\n```python\nsorted([3, 1])\n```" in md
    assert main(["chats", "export", "Sorting", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"] and data["task"] == "code"

    assert main(["chats", "delete", "Sorting"]) == 0
    capsys.readouterr()
    assert main(["chats", "show", "Sorting"]) == 2
    assert "no conversation named 'Sorting'" in capsys.readouterr().err
    assert [c.name for c in ChatStore().chats()] == ["Sums"]


def test_chats_bench_prints_its_figures(capsys):
    assert main(["chats", "bench", "--messages", "200"]) == 0
    out = capsys.readouterr().out
    assert "conversation of 200 messages" in out and "open (" in out and "search (" in out


def test_adapters_list_shows_every_stored_adapter_and_marks_the_active(tiny_adapters, capsys):
    folders = tiny_adapters["qwen2"]
    assert main(["adapters", "add", "code", str(folders["code"]), "--name", "c1"]) == 0
    assert main(["adapters", "add", "code", str(folders["math"]), "--name", "c2"]) == 0
    capsys.readouterr()
    assert main(["adapters", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    code = [line.split() for line in lines if " code " in f" {line} "]
    assert [(row[0], row[2]) if row[0] == "*" else ("", row[1]) for row in code] == [("*", "c2"), ("", "c1")]
    assert any(line.split()[:2] == ["summarize", "-"] for line in lines)  # a task with none: one row, no mark
