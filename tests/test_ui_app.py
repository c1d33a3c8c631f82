"""The desktop app with the tiny models (MLX engine), offscreen: each tab generates, tab switches
move the engine's active adapter, Stop cancels, a switch mid-answer never mixes adapters, bad
adapters and offline downloads become messages, settings persist."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("pytestqt")

from app import store  # noqa: E402
from app.tasks import load_tasks  # noqa: E402

TASKS = ("math", "code", "summarize", "paraphrase")
LOAD_MS = 60_000
GEN_MS = 60_000
WAIT_MS = 30_000  # any other event; generous: a wait ends as soon as it happens


@pytest.fixture
def adapters(tiny_adapters):
    folders = tiny_adapters["qwen2"]
    for task in TASKS:
        store.add(task, folders[task], name=f"{task}-tiny")
    return folders


def open_window(qtbot, model, engine="mlx"):
    from app.ui.main_window import MainWindow

    win = MainWindow(model=str(model), engine=engine)
    qtbot.addWidget(win)
    win.show()
    win.start()
    return win


@pytest.fixture
def window(qtbot, tiny_qwen, adapters):
    win = open_window(qtbot, tiny_qwen)
    qtbot.waitUntil(lambda: win.host.engine is not None, timeout=LOAD_MS)
    yield win
    win.close()


def generate(qtbot, tab, timeout=GEN_MS):
    with qtbot.waitSignal(tab.generation_finished, timeout=timeout) as blocker:
        tab.generate()
    return blocker.args[0]


def reference(engine, adapter, messages, settings):
    """The same answer computed straight from the engine (greedy)."""
    engine.activate(adapter)
    return engine.generate(messages, settings)


def long_runs(tab, max_tokens=1500):
    """Make the tab's next answer long enough to interrupt."""
    orig = tab.runs
    tab.runs = lambda text: [type(r)(r.messages, r.settings.replace(max_tokens=max_tokens)) for r in orig(text)]


def test_generate_in_each_tab_matches_the_engine(qtbot, window):
    from PySide6.QtCore import Qt

    engine = window.host.engine
    assert set(engine.adapters) == set(TASKS)
    for name in TASKS:
        tab = window.task_tabs[name]
        window.tabs.setCurrentWidget(tab)
        qtbot.waitUntil(lambda: engine.active == name, timeout=WAIT_MS)
        qtbot.keyClicks(tab.input, f"Please help with {name}: 12 + 30")
        with qtbot.waitSignal(tab.generation_finished, timeout=GEN_MS):
            qtbot.keyClick(tab.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)  # Ctrl+Enter
        assert tab.adapter_used == name
        answer = tab.answer_text()
        assert answer.strip()
        run = tab.runs(tab.input_text())[0]
        assert reference(engine, name, run.messages, run.settings) == tab.texts[0]
        status = tab.status.text()
        assert f"adapter: {name}" in status and "tok/s" in status and "first token" in status
    # The base model answers differently from the adapter (the "No adapter" comparison).
    tab = window.task_tabs["math"]
    window.tabs.setCurrentWidget(tab)
    with_adapter = tab.texts[0]
    tab.no_adapter.setChecked(True)
    qtbot.waitUntil(lambda: engine.active is None, timeout=WAIT_MS)
    generate(qtbot, tab)
    assert tab.adapter_used is None and "adapter: none (base model)" in tab.status.text()
    assert tab.texts[0] != with_adapter


def test_empty_input_uses_the_example_and_copy(qtbot, window):
    from PySide6.QtGui import QGuiApplication

    tab = window.task_tabs["summarize"]
    window.tabs.setCurrentWidget(tab)
    assert tab.input.placeholderText() == load_tasks()["summarize"].example_input
    assert generate(qtbot, tab) in ("stop", "length")
    assert tab.input_text() == tab.task.example_input
    tab.copy()
    assert QGuiApplication.clipboard().text() == tab.answer_text() != ""


def test_task_options_reach_the_prompt(qtbot, window):
    summarize = window.task_tabs["summarize"]
    choices = summarize.task.option_choices("length")
    assert {summarize.length.itemData(i) for i in range(summarize.length.count())} == set(choices)
    summarize.length.setCurrentIndex(summarize.length.findData("short"))
    prompt = summarize.runs("Some article.")[0].messages[-1]["content"]
    assert summarize.task.options["length"]["short"] in prompt

    para = window.task_tabs["paraphrase"]
    window.tabs.setCurrentWidget(para)
    para.variants.setValue(3)
    runs = para.runs("The cat sat on the mat.")
    assert [r.settings.temperature for r in runs] == [0.0, para.VARIANT_TEMPERATURE, para.VARIANT_TEMPERATURE]
    assert len({r.settings.seed for r in runs[1:]}) == 2
    generate(qtbot, para)
    assert len(para.texts) == 3 and all(t.strip() for t in para.texts)
    assert para.texts[1] != para.texts[2]  # sampled with different seeds
    shown = para.answer_text()
    assert "Variant 1:" in shown and "Variant 3:" in shown


def test_switching_tab_moves_the_active_adapter(qtbot, window):
    engine = window.host.engine
    for name in ("code", "paraphrase", "math", "summarize"):
        window.tabs.setCurrentWidget(window.task_tabs[name])
        qtbot.waitUntil(lambda: engine.active == name, timeout=WAIT_MS)
    # Panels do not change the adapter; the "No adapter" toggle does.
    window.tabs.setCurrentWidget(window.models_panel)
    # Any job the panel queued runs before this no-op one: then nothing has changed the adapter.
    marker = window.host.submit(lambda: None)
    qtbot.waitUntil(marker.done.is_set, timeout=WAIT_MS)
    assert engine.active == "summarize"
    window.tabs.setCurrentWidget(window.task_tabs["code"])
    window.task_tabs["code"].no_adapter.setChecked(True)
    qtbot.waitUntil(lambda: engine.active is None, timeout=WAIT_MS)
    window.task_tabs["code"].no_adapter.setChecked(False)
    qtbot.waitUntil(lambda: engine.active == "code", timeout=WAIT_MS)


def test_stop_cancels_and_the_window_stays_responsive(qtbot, window):
    from PySide6.QtCore import Qt

    from app.ui.app import StallWatch

    tab = window.task_tabs["code"]
    window.tabs.setCurrentWidget(tab)
    long_runs(tab)
    watch = StallWatch(window)
    with qtbot.waitSignal(tab.generation_finished, timeout=GEN_MS) as blocker:
        tab.generate()
        assert tab.stop_btn.isEnabled() and not tab.generate_btn.isEnabled()
        qtbot.waitUntil(lambda: tab.last_chunk is not None and tab.last_chunk.generation_tokens >= 5, timeout=GEN_MS)
        qtbot.keyClick(tab.input, Qt.Key.Key_Escape)  # Esc = Stop
    assert blocker.args == ["cancelled"]
    assert tab.last_chunk.generation_tokens < 1500
    assert "stopped" in tab.status.text()
    assert tab.generate_btn.isEnabled() and not tab.stop_btn.isEnabled()
    # The GUI thread never waited on the engine: a 20 ms timer kept firing during the answer.
    assert watch.worst_ms < 500, f"event loop blocked for {watch.worst_ms:.0f} ms"


def test_switching_tab_mid_answer_never_mixes_adapters(qtbot, window):
    engine = window.host.engine
    math_tab, code_tab = window.task_tabs["math"], window.task_tabs["code"]
    window.tabs.setCurrentWidget(math_tab)
    qtbot.waitUntil(lambda: engine.active == "math", timeout=WAIT_MS)
    long_runs(math_tab)
    with qtbot.waitSignal(math_tab.generation_finished, timeout=GEN_MS) as blocker:
        math_tab.generate()
        qtbot.waitUntil(lambda: math_tab.last_chunk is not None and math_tab.last_chunk.generation_tokens >= 5,
                        timeout=GEN_MS)
        window.tabs.setCurrentWidget(code_tab)  # while the math answer streams
    assert blocker.args == ["cancelled"]
    qtbot.waitUntil(lambda: engine.active == "code", timeout=WAIT_MS)
    partial = math_tab.texts[0]
    n = math_tab.last_chunk.generation_tokens
    run = math_tab.runs(math_tab.input_text())[0]
    # Every token of the interrupted answer came from the math adapter alone.
    ref = reference(engine, "math", run.messages, run.settings.replace(max_tokens=n))
    assert partial and ref.startswith(partial)
    engine.activate("code")
    generate(qtbot, code_tab)
    run = code_tab.runs(code_tab.input_text())[0]
    assert code_tab.texts[0] == reference(engine, "code", run.messages, run.settings)


def test_corrupt_adapter_is_reported_and_the_app_keeps_working(qtbot, tiny_qwen, adapters, tmp_path):
    # Damage the stored math adapter after it was registered (e.g. a disk error).
    folder = store.current("math").path
    for f in folder.glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    win = open_window(qtbot, tiny_qwen)
    qtbot.waitUntil(lambda: win.host.engine is not None, timeout=LOAD_MS)
    engine = win.host.engine
    assert "math" not in engine.adapters and "math" in win.host.problems
    assert win.banner.isVisible() and "math adapter could not be loaded" in win.banner.text()
    assert set(engine.adapters) == {"code", "summarize", "paraphrase"}
    math_tab = win.task_tabs["math"]
    win.tabs.setCurrentWidget(math_tab)
    assert "adapter: none" in math_tab.status.text() and str(folder.name) in math_tab.status.text()
    row = next(r for r in range(win.models_panel.table.rowCount()) if win.models_panel.table.item(r, 0).text() == "math")
    assert "not loaded" in win.models_panel.table.item(row, 7).text()
    assert generate(qtbot, math_tab) in ("stop", "length")  # the base model answers
    assert math_tab.adapter_used is None and math_tab.texts[0]

    # Adding a corrupt folder through the panel: a message naming it; the old adapter stays.
    bad = tmp_path / "bad-adapter"
    shutil.copytree(adapters["code"], bad)
    for f in bad.glob("*.safetensors"):
        f.write_bytes(b"\x00" * 10)
    w = win.models_panel.add_adapter("code", str(bad))
    qtbot.waitUntil(lambda: w.done.is_set(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: "Could not add" in win.models_panel.message.text(), timeout=WAIT_MS)
    assert "bad-adapter" in win.models_panel.message.text()
    assert "code" in engine.adapters and store.current("code").name == "code-tiny"
    code_tab = win.task_tabs["code"]
    win.tabs.setCurrentWidget(code_tab)
    qtbot.waitUntil(lambda: engine.active == "code", timeout=WAIT_MS)
    assert generate(qtbot, code_tab) in ("stop", "length")

    # A good folder added through the panel repairs the math tab.
    w = win.models_panel.add_adapter("math", str(adapters["math"]))
    # The worker adds it, then the window hears of it (a signal): wait for both.
    qtbot.waitUntil(lambda: "math" in engine.adapters and "math" not in win.host.problems, timeout=WAIT_MS)
    win.close()


def test_too_long_input_is_cut_and_the_status_says_so(qtbot, window):
    tab = window.task_tabs["paraphrase"]
    window.tabs.setCurrentWidget(tab)
    tab.input.setPlainText("word " * 5000)  # about 5000 tokens; the tiny model reads 2048
    assert generate(qtbot, tab) in ("stop", "length")
    c = tab.last_chunk
    assert c.truncated_tokens > 2000 and c.prompt_tokens + tab.task.generation.max_tokens <= 2048
    assert f"input cut to fit the context (its last {c.truncated_tokens} tokens left out)" in tab.status.text()
    assert not tab.message.isVisible() and tab.texts[0]
    tab.input.setPlainText("A short sentence.")
    assert generate(qtbot, tab) in ("stop", "length")
    assert tab.last_chunk.truncated_tokens == 0 and "input cut" not in tab.status.text()
