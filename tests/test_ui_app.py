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


def test_changing_model_drops_the_old_one_first(qtbot, window, tiny_models):
    import gc
    import weakref

    host = window.host
    old = host.engine
    old_model = weakref.ref(old.model)
    events = []
    host.model_unloaded.connect(lambda: events.append(("unloaded", old_model() is None)))
    host.model_loaded.connect(lambda info: events.append(("loaded", info.model_type)))
    window.load_model(str(tiny_models["llama"]), "mlx")
    assert window.model_status.text() == "Loading llama…"  # one message, the permanent label
    assert window.statusBar().currentMessage() == ""
    qtbot.waitUntil(lambda: len(events) == 2, timeout=LOAD_MS)
    # The old model was gone (no reference left to it) before the new one was loaded.
    assert events == [("unloaded", True), ("loaded", "llama")]
    assert old.model_info is None and old.adapters == {}
    gc.collect()
    assert old_model() is None
    assert host.engine is not old and host.engine.model_info.model_type == "llama"
    assert window.model_status.text() == host.model_label() and "llama" in window.model_status.text()
    tab = window.task_tabs["math"]
    window.tabs.setCurrentWidget(tab)
    assert generate(qtbot, tab) in ("stop", "length")


def test_a_model_that_will_not_fit_in_memory_is_refused_and_the_old_one_stays(qtbot, window, tiny_models):
    host = window.host
    engine = host.engine
    host.memory_factor = 1e7  # the tiny model (a few MB) as if it needed tens of TB
    with qtbot.waitSignal(host.model_failed, timeout=LOAD_MS) as failed:
        window.load_model(str(tiny_models["llama"]), "mlx")
    message = failed.args[0]
    assert "will not fit in memory" in message and "The current model stays loaded" in message
    assert "Could not load the model" in window.banner.text() and window.banner.isVisible()
    assert host.engine is engine and engine.model_info.model_type == "qwen2" and not host.loading
    assert window.model_status.text() == host.model_label()
    assert window.models_panel.current_label.text() == f"Loaded: {host.model_label()}"
    tab = window.task_tabs["code"]
    window.tabs.setCurrentWidget(tab)
    assert generate(qtbot, tab) in ("stop", "length") and tab.adapter_used == "code"


def test_memory_check_counts_the_memory_the_old_model_gives_back():
    from app.memory import memory_check

    gb = 10**9
    assert memory_check("m", 4 * gb, 0, factor=1.25, available=5 * gb) is None
    refused = memory_check("m", 4 * gb, 0, factor=1.25, available=4 * gb)
    assert "needs about 5.0 GB (4.0 GB of weights) and 4.0 GB is available" in refused
    assert "stays loaded" not in refused  # nothing is loaded to stay
    assert memory_check("m", 4 * gb, 2 * gb, factor=1.25, available=3 * gb) is None  # 3 + 2 given back
    assert "once the current model is dropped. The current model stays loaded" in memory_check(
        "m", 4 * gb, 1 * gb, factor=1.25, available=3 * gb)


def test_offline_first_run_says_how_to_use_a_local_folder(qtbot, tiny_qwen):
    from app.models import local_repo_folder

    repo = "someorg/not-downloaded-model"
    win = open_window(qtbot, repo)
    panel = win.models_panel
    assert win.tabs.currentWidget() is panel
    assert panel.download_btn.isVisible() and "not on this machine" in panel.message.text()
    qtbot.mouseClick(panel.download_btn, __import__("PySide6.QtCore").QtCore.Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "offline" in panel.message.text(), timeout=WAIT_MS)
    text = panel.message.text()
    assert "Local folder" in text and str(local_repo_folder(repo)) in text
    assert panel.download_btn.isVisible()  # offered again
    assert win.host.engine is None
    # A local folder works right away.
    panel.request_model(str(tiny_qwen), "mlx")
    qtbot.waitUntil(lambda: win.host.engine is not None, timeout=LOAD_MS)
    win.close()


def test_download_shows_progress_then_loads_and_can_be_cancelled(qtbot, tiny_qwen, monkeypatch):
    """Against a local fake hub (tests/fake_hub.py): huggingface-hub's own download code runs."""
    import threading

    from fake_hub import FakeHub, repo_from_folder

    from app.models import local_repo_folder
    from app.format import human_bytes

    repo, slow = "someorg/tiny-model", "someorg/tiny-slow"
    fake = FakeHub({repo: repo_from_folder(tiny_qwen), slow: repo_from_folder(tiny_qwen)}).use(monkeypatch)
    with fake:
        win = open_window(qtbot, repo)
        panel = win.models_panel
        labels = []
        panel.download_progress.connect(lambda p: labels.append((p, panel.progress.value(), panel.progress_label.text())))
        panel.download(repo, "mlx")
        qtbot.waitUntil(lambda: win.host.engine is not None, timeout=LOAD_MS)
        assert win.host.engine.model_info.ref == repo
        last, value, text = labels[-1]
        assert last.done == last.total > 0 and value == last.total // 1024
        assert text.startswith(f"{human_bytes(last.total)} / {human_bytes(last.total)} · ") and text.endswith("/s")
        assert len({p.done for p, _, _ in labels}) > 3  # bytes as they arrive, not one step per file
        assert not panel.progress.isVisible()

        # Cancel mid-file: the server holds the weights after their first block until the click.
        fake.gate, labels[:] = threading.Event(), []
        w = panel.download(slow, "mlx")
        qtbot.waitUntil(lambda: any(p.file.endswith(".safetensors") and p.done > 0 for p, _, _ in labels), timeout=WAIT_MS)
        text = panel.progress_label.text()
        assert " / " in text and "/s · ETA " in text  # e.g. '64.2 KB / 1.9 MB · 3.1 MB/s · ETA 0:01'
        qtbot.mouseClick(panel.cancel_btn, __import__("PySide6.QtCore").QtCore.Qt.MouseButton.LeftButton)
        fake.gate.set()
        qtbot.waitUntil(lambda: w.done.is_set(), timeout=WAIT_MS)
        qtbot.waitUntil(lambda: "cancelled" in panel.message.text(), timeout=WAIT_MS)
        assert "files already downloaded are kept" in panel.message.text()
        assert not (local_repo_folder(slow) / ".complete").exists()
        assert win.host.engine.model_info.ref == repo  # the loaded model is untouched
        assert panel.download_btn.isVisible()  # offered again
        win.close()


def test_settings_persist_between_runs(qtbot, tiny_qwen, adapters):
    from app.session import load_settings

    win = open_window(qtbot, tiny_qwen)
    qtbot.waitUntil(lambda: win.host.engine is not None, timeout=LOAD_MS)
    win.resize(780, 520)
    size = (win.width(), win.height())
    win.task_tabs["paraphrase"].variants.setValue(4)
    win.task_tabs["summarize"].length.setCurrentIndex(win.task_tabs["summarize"].length.findData("long"))
    win.tabs.setCurrentWidget(win.task_tabs["code"])
    win.close()
    s = load_settings()
    assert s["model.mlx"] == str(tiny_qwen)
    assert s["ui"]["last_tab"] == "Code"

    from app.ui.main_window import MainWindow

    again = MainWindow()  # no --model: the last model comes from the settings
    qtbot.addWidget(again)
    assert again.tabs.currentWidget() is again.task_tabs["code"]
    assert again.task_tabs["paraphrase"].variants.value() == 4
    assert again.task_tabs["summarize"].length.currentData() == "long"
    assert (again.width(), again.height()) == size != (1000, 720)  # not the default
    again.engine_override = "mlx"
    again.start()
    qtbot.waitUntil(lambda: again.host.engine is not None, timeout=LOAD_MS)
    assert str(again.host.engine.model_info.ref) == str(tiny_qwen)
    again.close()


def test_gui_command_is_registered():
    from app.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["gui", "--engine", "mlx", "--model", "x/y"])
    from app.ui.cli import cmd_gui

    assert args.func is cmd_gui and args.engine == "mlx" and args.model == "x/y"


def test_adapter_table_export_and_remove(qtbot, window, tmp_path):
    from app.engine.adapter_format import detect_format, read_adapter

    panel = window.models_panel
    engine = window.host.engine
    table = panel.table
    tasks = [table.item(r, 0).text() for r in range(table.rowCount())]
    assert tasks == list(TASKS)
    r = tasks.index("code")
    assert table.item(r, 1).text() == "code-tiny" and table.item(r, 3).text() == "4"
    assert table.item(r, 7).text().startswith("loaded")

    out = tmp_path / "code-peft"
    w = panel.export_adapter("code", str(out), "peft")
    qtbot.waitUntil(lambda: w.done.is_set(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: "Exported" in panel.message.text(), timeout=WAIT_MS)
    assert detect_format(out) == "peft" and read_adapter(out).rank == 4
    w = panel.export_adapter("code", str(out), "mlx")  # never overwrites
    qtbot.waitUntil(lambda: "already exists" in panel.message.text(), timeout=WAIT_MS)

    w = panel.remove_adapter("code", "code-tiny")
    qtbot.waitUntil(lambda: "code" not in engine.adapters, timeout=WAIT_MS)
    assert store.current("code") is None
    qtbot.waitUntil(lambda: table.item(tasks.index("code"), 1).text() == "—", timeout=WAIT_MS)
    code_tab = window.task_tabs["code"]
    window.tabs.setCurrentWidget(code_tab)
    qtbot.waitUntil(lambda: engine.active is None, timeout=WAIT_MS)
    assert generate(qtbot, code_tab) in ("stop", "length") and code_tab.adapter_used is None


def test_a_model_that_cannot_load_is_a_message(qtbot, tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    win = open_window(qtbot, empty)
    qtbot.waitUntil(lambda: win.banner.isVisible(), timeout=LOAD_MS)
    assert "config.json" in win.banner.text() and str(empty) in win.banner.text()
    assert win.tabs.currentWidget() is win.models_panel and win.host.engine is None
    tab = win.task_tabs["math"]
    tab.generate()
    assert "no model is loaded" in tab.message.text()
    win.close()


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
