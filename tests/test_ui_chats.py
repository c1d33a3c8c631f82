"""Conversations in the app (tiny model, MLX engine, offscreen): follow-ups carry the conversation,
answers are stored and reopened after a restart, the sidebar searches, renames, deletes with undo
and starts new chats, Compare answers in two panes with their own adapters, Markdown rendering."""
from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from app import store  # noqa: E402
from app.chats import ChatStore, Message  # noqa: E402
from app.conversation import with_history  # noqa: E402
from tests.test_ui_app import GEN_MS, LOAD_MS, WAIT_MS, generate, open_window, reference  # noqa: E402


@pytest.fixture
def adapters(tiny_adapters):
    folders = tiny_adapters["qwen2"]
    for task in ("math", "code"):
        store.add(task, folders[task], name=f"{task}-tiny")
    return folders


@pytest.fixture
def window(qtbot, tiny_qwen, adapters):
    win = open_window(qtbot, tiny_qwen)
    qtbot.waitUntil(lambda: win.host.engine is not None, timeout=LOAD_MS)
    yield win
    win.close()


def ask(qtbot, win, tab, text):
    win.tabs.setCurrentWidget(tab)
    tab.input.setPlainText(text)
    return generate(qtbot, tab)


def test_follow_up_uses_the_conversation_and_is_stored(qtbot, window):
    tab = window.task_tabs["math"]
    engine = window.host.engine
    ask(qtbot, window, tab, "What is 2+2?")
    first = tab.texts[0]
    assert not tab.session.transcript.isVisible()  # one turn: it is in the tab's own widgets
    ask(qtbot, window, tab, "And times 3?")
    second = tab.texts[0]
    task = tab.task
    context = with_history(task.messages("And times 3?"),
                           [task.messages("What is 2+2?")[1], {"role": "assistant", "content": first}])
    assert second == reference(engine, "math", context, task.generation)
    assert second != reference(engine, "math", task.messages("And times 3?"), task.generation)
    assert tab.session.transcript.isVisible() and "What is 2+2?" in tab.session.transcript.toPlainText()

    chat = ChatStore().get_id(tab.session.chat_id)
    assert chat.task == "math" and chat.turns == 2 and chat.name == "What is 2+2?"
    msgs = ChatStore().messages(chat.id)
    assert [m.content for m in msgs] == ["What is 2+2?", first, "And times 3?", second]
    assert msgs[1].adapter == "math" and msgs[1].adapter_hash and msgs[1].tps > 0 and msgs[1].model
    assert msgs[1].settings["max_tokens"] == task.generation.max_tokens

    # Regenerate replaces the last turn; Edit + Generate replaces it with another question.
    from app.ui.chat_actions import edit, regenerate

    with qtbot.waitSignal(tab.generation_finished, timeout=GEN_MS):
        regenerate(tab)
    assert [m.content for m in ChatStore().messages(chat.id)][2:] == ["And times 3?", second]  # greedy: same
    edit(tab)
    tab.input.setPlainText("And minus 1?")
    generate(qtbot, tab)
    assert [m.content for m in ChatStore().messages(chat.id) if m.role == "user"] == ["What is 2+2?", "And minus 1?"]


def test_old_turns_are_dropped_and_the_status_says_so(qtbot, window):
    tab = window.task_tabs["code"]
    chats = ChatStore()
    chat = chats.create("code", "long one")
    for i in range(40):  # far more than the tiny model's context holds with the answer's room
        chats.add_turn(chat.id, Message("user", f"Question {i}: " + "list sort " * 60),
                       [Message("assistant", f"Answer {i}: " + "sorted(xs) " * 60)])
    assert tab.session.open(chat.id)
    assert tab.input.toPlainText().startswith("Question 39")  # the latest turn in the tab's own widgets
    ask(qtbot, window, tab, "And in reverse?")
    assert 0 < tab.turns_dropped < 40
    assert f"{tab.turns_dropped} earlier turns left out to fit the context" in tab.status.text()
    assert ChatStore().get_id(chat.id).turns == 41


def test_restart_reopens_the_last_conversation_of_each_tab(qtbot, tiny_qwen, adapters):
    win = open_window(qtbot, tiny_qwen)
    qtbot.waitUntil(lambda: win.host.engine is not None, timeout=LOAD_MS)
    ask(qtbot, win, win.task_tabs["math"], "What is 7*6?")
    ask(qtbot, win, win.task_tabs["math"], "Why?")
    math_chat, answer = win.task_tabs["math"].session.chat_id, win.task_tabs["math"].texts[0]
    ask(qtbot, win, win.task_tabs["code"], "Reverse a list")
    code_chat = win.task_tabs["code"].session.chat_id
    win.task_tabs["code"].session.new()  # an empty new chat is not a conversation to reopen
    win.close()

    again = open_window(qtbot, tiny_qwen)
    qtbot.waitUntil(lambda: again.host.engine is not None, timeout=LOAD_MS)
    tab = again.task_tabs["math"]
    assert tab.session.chat_id == math_chat
    assert tab.input.toPlainText() == "Why?" and tab.texts == [answer]
    assert "What is 7*6?" in tab.session.transcript.toPlainText()
    assert tab.session.panel.list.currentItem().text().startswith("What is 7*6?")
    assert again.task_tabs["code"].session.chat_id == code_chat  # the newest of its task
    again.close()


def test_sidebar_search_rename_delete_undo_and_new_chat(qtbot, window):
    from PySide6.QtCore import Qt

    math_tab, code_tab = window.task_tabs["math"], window.task_tabs["code"]
    chats = ChatStore()
    older = chats.create("math", "Fractions")
    chats.add_turn(older.id, Message("user", "Half of a third?"), [Message("assistant", "One sixth.")])
    newer = chats.create("math", "Primes")
    chats.add_turn(newer.id, Message("user", "Is 91 prime?"), [Message("assistant", "No: 7 times 13.")])
    other = chats.create("code", "Loops")
    chats.add_turn(other.id, Message("user", "Loop over a dict"), [Message("assistant", "for k, v in d.items()")])
    panel = math_tab.session.panel
    window.tabs.setCurrentWidget(math_tab)
    panel.refresh()
    assert panel.ids() == [newer.id, older.id]  # newest first, this task's only

    panel.search.setText("sixth")
    assert panel.ids() == [older.id] and "[sixth]" in panel.list.item(0).text()
    panel.search.setText("items")  # a hit in another task's conversation opens it in its own tab
    assert panel.ids() == [other.id] and panel.list.item(0).text().startswith("[code]")
    panel._activated(panel.list.item(0))
    assert window.tabs.currentWidget() is code_tab and code_tab.session.chat_id == other.id
    panel.search.clear()
    window.tabs.setCurrentWidget(math_tab)

    panel.list.setCurrentItem(panel.item_for(older.id))
    panel._activated(panel.list.currentItem())
    assert math_tab.session.chat_id == older.id and math_tab.texts == ["One sixth."]
    panel.start_rename()
    panel.item_for(older.id).setText("Thirds and halves")
    qtbot.waitUntil(lambda: ChatStore().get_id(older.id).name == "Thirds and halves", timeout=WAIT_MS)

    panel.list.setCurrentItem(panel.item_for(older.id))
    panel.delete_selected()
    assert older.id not in panel.ids() and panel.undo_bar.isVisible()
    assert math_tab.session.chat is None and math_tab.texts == []  # its tab moved to a new chat
    panel.undo_delete()
    assert older.id in panel.ids() and math_tab.session.chat_id == older.id
    panel.list.setCurrentItem(panel.item_for(older.id))
    panel.delete_selected()
    panel._purge_timer.setInterval(10)
    panel._purge_timer.start()
    qtbot.waitUntil(lambda: not panel.undo_bar.isVisible(), timeout=WAIT_MS)
    assert ChatStore().db.execute("SELECT count(*) FROM chats WHERE id = ?", (older.id,)).fetchone()[0] == 0

    math_tab.session.open(newer.id)
    math_tab.input.setFocus()
    qtbot.keyClick(math_tab.input, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)  # New chat
    assert math_tab.session.chat is None and math_tab.input.toPlainText() == ""
    ask(qtbot, window, math_tab, "A new question")
    assert math_tab.session.chat_id not in (newer.id, older.id)
    assert panel.ids()[0] == math_tab.session.chat_id


def test_compare_answers_in_two_panes_with_their_own_adapters(qtbot, window, tiny_adapters):
    engine = window.host.engine
    # A second stored adapter of the task (the paraphrase weights, registered for math), not in use.
    store.add("math", tiny_adapters["qwen2"]["paraphrase"], name="math-other")
    store.select("math", "math-tiny")
    tab = window.task_tabs["math"]
    window.tabs.setCurrentWidget(tab)
    tab.compare_btn.setChecked(True)
    a, b = tab.compare.panes
    labels = [a.choice.itemText(i) for i in range(a.choice.count())]
    assert labels[:3] == ["Base model (no adapter)", "This task's adapter (math-tiny)", "Stored adapter: math-other"]
    a.select("base")
    b.select("stored", "math@math-other")
    tab.input.setPlainText("What is 5+5?")
    assert generate(qtbot, tab) in ("stop", "length")

    task = tab.task
    messages = task.messages("What is 5+5?")
    assert a.text == reference(engine, None, messages, task.generation)
    assert b.text == reference(engine, "math@math-other", messages, task.generation)
    assert a.text != b.text and a.text != reference(engine, "math", messages, task.generation)  # never mixed
    assert "tok/s" in a.status.text() and "adapter: math@math-other" in b.status.text()
    msgs = ChatStore().messages(tab.session.chat_id)
    assert [(m.role, m.pane, m.adapter) for m in msgs] == [("user", 0, None), ("assistant", 1, None),
                                                           ("assistant", 2, "math@math-other")]
    assert msgs[1].tps > 0 and msgs[2].tps > 0 and msgs[2].adapter_hash

    b.select("mix")  # a mix of resident adapters
    b.mix.setText("math=0.5,code=0.5")
    tab.input.setPlainText("And 6+6?")
    generate(qtbot, tab)
    assert ChatStore().messages(tab.session.chat_id)[-1].adapter == "mix:math=0.5,code=0.5"
    qtbot.waitUntil(lambda: engine.active == "math", timeout=WAIT_MS)  # the tab's adapter again

    chat_id, shown = tab.session.chat_id, (a.text, b.text)
    tab.session.new()
    assert not tab.compare_btn.isChecked()
    for p in (a, b):
        p.show_answer("", "")
    tab.session.open(chat_id)  # reopened: both panes come back
    assert tab.compare_btn.isChecked() and (a.text, b.text) == shown and b.view.markdown_text == shown[1]
    assert "mix:math=0.5,code=0.5" in b.status.text()


def test_export_and_removed_adapter_note(qtbot, window, tmp_path):
    from app.ui.chat_actions import export_markdown

    tab = window.task_tabs["code"]
    ask(qtbot, window, tab, "Print hello")
    out = export_markdown(tab, tmp_path / "chat.md").read_text()
    assert out.startswith("# Print hello\n") and "## You\n\nPrint hello" in out and "## Answer (code," in out
    chat_id = tab.session.chat_id
    store.remove("code", "code-tiny")
    assert tab.session.open(chat_id)
    assert "no longer stored" in tab.message.text() and tab.message.isVisible()


def test_markdown_answers_render_with_highlighted_code(qtbot):
    from PySide6.QtGui import QTextFormat

    from app.ui.markdown_view import MarkdownView

    view = MarkdownView()
    qtbot.addWidget(view)
    view.show_markdown("# Title\n\n- one\n- two\n\n```python\ndef f(x):\n    return x\n```\n")
    doc = view.document()
    blocks = []
    b = doc.begin()
    while b.isValid():
        blocks.append(b)
        b = b.next()
    assert [bl.text() for bl in blocks][:3] == ["Title", "one", "two"]
    assert blocks[0].blockFormat().headingLevel() == 1 and blocks[1].textList() is not None
    code = next(bl for bl in blocks if bl.text() == "def f(x):")
    assert code.blockFormat().hasProperty(QTextFormat.Property.BlockCodeFence)
    colours = {r.format.foreground().color().name() for r in code.layout().formats()}
    assert "#7c3aed" in colours  # `def`, in the keyword colour
    assert not blocks[0].layout().formats()  # prose is not coloured as code
    view.show_markdown("«24*1=24» so 3*4 is 12, and *this* is emphasis")  # products keep their *
    assert view.toPlainText() == "«24*1=24» so 3*4 is 12, and this is emphasis"
    # Streaming: many updates, one render per RENDER_MS; the last text always shows.
    for i in range(200):
        view.stream_markdown(f"**{i}**")
    assert view.markdown_text != "**199**"
    qtbot.waitUntil(lambda: view.toPlainText() == "199", timeout=WAIT_MS)


def test_the_transcript_draws_the_last_turns_and_says_how_many_are_not_shown():
    from app.ui.chat_session import TRANSCRIPT_TURNS, transcript_markdown

    msgs = []
    for t in range(1, TRANSCRIPT_TURNS + 11):
        msgs += [Message("user", f"q{t}", turn=t), Message("assistant", f"a{t}", turn=t, adapter="math", tps=2.0)]
    md = transcript_markdown(msgs)
    assert md.startswith("*10 earlier turns are not shown here")
    assert "q10\n" not in md and "q11\n" in md and md.endswith(f"a{TRANSCRIPT_TURNS + 10}")
    assert "**math · 2.0 tok/s**" in md
    assert "not shown" not in transcript_markdown(msgs[:4])
