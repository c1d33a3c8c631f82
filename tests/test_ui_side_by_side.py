"""The app on an engine that batches (llama.cpp, tiny GGUF, offscreen): two tabs answer at once,
each under its own adapter, a tab switch cancels nothing, and a comparison's panes run together;
the status bar follows the merged copy of the active adapter."""
from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("llama_cpp")

from app import store  # noqa: E402
from tests.test_ui_app import GEN_MS, LOAD_MS, WAIT_MS, adapters, generate, long_runs, open_window  # noqa: E402,F401


@pytest.fixture
def window(qtbot, tiny_ggufs, tiny_adapters):
    for task in ("math", "code"):
        store.add(task, tiny_adapters["qwen2"][task], name=f"{task}-tiny")
    win = open_window(qtbot, tiny_ggufs["qwen2"], engine="llamacpp")
    qtbot.waitUntil(lambda: win.host.engine is not None and win.host.engine.model_info is not None,
                    timeout=LOAD_MS)
    assert win.host.side_by_side
    yield win
    win.close()


def _widest_step(engine, monkeypatch):
    """The most answers one llama_decode step held, as a one-item list the test reads."""
    import time

    widest = [0]
    real = engine._decode_batch

    def counted(batch):
        widest[0] = max(widest[0], engine._scheduler.running())
        time.sleep(0.005)  # so an answer cannot end before the other one starts
        real(batch)

    monkeypatch.setattr(engine, "_decode_batch", counted)
    return widest


def _lone(engine, adapter, messages, settings):
    """The same answer from the engine alone (greedy), under `adapter`."""
    return engine.generate(messages, settings, adapter=adapter)


def test_two_tabs_answer_at_once_and_switching_tab_cancels_nothing(qtbot, window, monkeypatch):
    engine = window.host.engine
    widest = _widest_step(engine, monkeypatch)
    math, code = window.task_tabs["math"], window.task_tabs["code"]
    long_runs(math, max_tokens=60)
    window.tabs.setCurrentWidget(math)
    math.input.setPlainText("12 + 30")
    with qtbot.waitSignal(math.generation_finished, timeout=GEN_MS) as math_done:
        math.generate()
        qtbot.waitUntil(lambda: math.last_chunk is not None, timeout=WAIT_MS)
        window.tabs.setCurrentWidget(code)  # Math goes on answering
        qtbot.waitUntil(lambda: engine.active == "code", timeout=WAIT_MS)
        assert math.busy
        code.input.setPlainText("reverse a list")
        with qtbot.waitSignal(code.generation_finished, timeout=GEN_MS) as code_done:
            code.generate()
    assert code_done.args[0] in ("stop", "length") and math_done.args[0] in ("stop", "length")
    assert widest[0] == 2  # both answers were in one step
    # each tab's answer is its own adapter's, as if it had run alone
    m_runs, c_runs = math.runs("12 + 30"), code.runs("reverse a list")
    assert math.answer_text() == _lone(engine, "math", m_runs[0].messages, m_runs[0].settings)
    assert code.answer_text() == _lone(engine, "code", c_runs[0].messages, c_runs[0].settings)
    assert math.adapter_used == "math" and code.adapter_used == "code"


def test_stop_in_one_tab_leaves_the_other_answering(qtbot, window, monkeypatch):
    _widest_step(window.host.engine, monkeypatch)
    math, code = window.task_tabs["math"], window.task_tabs["code"]
    long_runs(math, max_tokens=40)
    long_runs(code, max_tokens=400)
    for tab in (math, code):
        tab.input.setPlainText("12 + 30")
    with qtbot.waitSignal(code.generation_finished, timeout=GEN_MS) as code_done:
        with qtbot.waitSignal(math.generation_finished, timeout=GEN_MS) as math_done:
            math.generate()
            code.generate()  # a second tab's answer: the first goes on
            qtbot.waitUntil(lambda: math.last_chunk is not None and code.last_chunk is not None, timeout=WAIT_MS)
            code.stop()
    assert code_done.args == ["cancelled"]
    assert math_done.args[0] in ("stop", "length") and math.last_chunk.generation_tokens > 1


def test_a_comparisons_panes_answer_in_one_step(qtbot, window, monkeypatch):
    engine = window.host.engine
    widest = _widest_step(engine, monkeypatch)
    tab = window.task_tabs["math"]
    window.tabs.setCurrentWidget(tab)
    tab.compare_btn.setChecked(True)
    a, b = tab.compare.panes
    a.select("base")
    b.select("task")
    tab.input.setPlainText("What is 5+5?")
    with qtbot.waitSignal(tab.generation_finished, timeout=GEN_MS) as done:
        tab.generate()
    assert done.args[0] in ("stop", "length")
    assert widest[0] == 2
    messages = tab.task.messages("What is 5+5?")
    assert a.text == _lone(engine, None, messages, tab.task.generation)
    assert b.text == _lone(engine, "math", messages, tab.task.generation)
    assert a.text != b.text


def test_the_status_bar_follows_the_merged_copy_of_the_active_adapter(qtbot, tiny_ggufs, adapters):
    """llama.cpp: with merging on, an answer in the Math tab builds the merged copy (at once here),
    the next answer runs on it, and the Code tab's answer drops it; the status bar says each."""
    win = open_window(qtbot, tiny_ggufs["qwen2"], engine="llamacpp")
    qtbot.waitUntil(lambda: win.host.engine is not None and win.host.engine.model_info is not None, timeout=LOAD_MS)
    label, engine = win.merge_status, win.host.engine

    def answer(name):
        tab = win.task_tabs[name]
        win.tabs.setCurrentWidget(tab)
        qtbot.waitUntil(lambda: engine.active == name, timeout=WAIT_MS)
        tab.input.setPlainText("12 + 30")
        return generate(qtbot, tab)

    answer("math")  # merging off (the tests' default): the resident LoRA answers
    assert not label.isVisible()
    engine.merge_after = 0.0  # on, with no wait: the next answer's first step starts the build
    answer("math")
    qtbot.waitUntil(lambda: "math" in label.text() and ("ready" in label.text() or "in use" in label.text()),
                    timeout=WAIT_MS)
    assert label.isVisible()
    answer("math")  # from the merged copy (test_llamacpp_merge checks its answers)
    qtbot.waitUntil(lambda: label.text().startswith("merged copy of math") and "in use" in label.text(), timeout=WAIT_MS)
    engine.merge_after = None  # no copy for code: the message about math's stays
    answer("code")
    qtbot.waitUntil(lambda: "dropped: code answered" in label.text(), timeout=WAIT_MS)
    win.close()
