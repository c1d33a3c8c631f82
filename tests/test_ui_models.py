"""The app's models and adapters (tiny models, MLX engine, offscreen): changing model drops the old
one first or refuses one that will not fit, offline first runs and downloads say what happens,
a model that cannot load is a message, the adapter table exports and removes, settings persist."""
from __future__ import annotations


import pytest

pytest.importorskip("pytestqt")

from app import store  # noqa: E402
from tests.test_ui_app import (LOAD_MS, TASKS, WAIT_MS, adapters, generate, open_window,  # noqa: E402,F401
                               reference, window)


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
