"""The app's parts on their own: workers, annotation checking and rendering, highlighting, the
code tab's sandbox run, charts; and the benchmark panel running a tiny benchmark to its table."""
from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("pytestqt")


WAIT_MS = 30_000  # generous: a wait ends as soon as its event happens


# -- workers --------------------------------------------------------------------------------------
def test_generator_worker_yields_returns_and_aborts_between_steps(qtbot):
    from app.ui.workers import create_worker

    def count(n):
        for i in range(n):
            yield i
        return "done"

    got, returned = [], []
    w = create_worker(count, 5, _start=False)
    w.yielded.connect(got.append)
    w.returned.connect(returned.append)
    with qtbot.waitSignal(w.finished, timeout=WAIT_MS):
        w.start()
    assert got == [0, 1, 2, 3, 4] and returned == ["done"]

    gate = threading.Event()
    steps = []

    def slow():
        for i in range(1000):
            steps.append(i)
            yield i
            gate.wait(60)  # the GUI has seen item i before the next step

    w = create_worker(slow, _start=False)
    w.yielded.connect(lambda _v: (w.quit(), gate.set()))
    returned = []
    w.returned.connect(returned.append)
    with qtbot.waitSignal(w.finished, timeout=WAIT_MS):
        w.start()
    assert len(steps) < 5 and w.abort_requested and returned == []


def test_worker_errors_become_signals(qtbot):
    from app.ui.workers import create_worker

    def broken():
        raise ValueError("bad input file x.jsonl")

    w = create_worker(broken, _start=False)
    with qtbot.waitSignal(w.errored, timeout=WAIT_MS) as blocker:
        w.start()
    assert isinstance(blocker.args[0], ValueError) and "x.jsonl" in str(blocker.args[0])


# -- math view (the checking itself: tests/test_annotations.py) ------------------------------------
def test_math_view_renders_annotations_readably(qtbot):
    from app.ui.math_view import MathView, render_html

    html, checked, wrong = render_html("48/2 = «48/2=24»24 clips.\n48+24 = «48+24=75»75 in all.\n#### 75")
    assert (checked, wrong) == (2, 1)
    assert "«" not in html and "»" not in html
    assert html.count(">&nbsp;24&nbsp;") == 1  # the result is shown once, marked
    assert "48+24 is 72" in html and "Answer: 75" in html
    html, _, _ = render_html("Half: \\( \\frac{48}{2} \\), total \\(\\boxed{72}\\).\n```python\nx = 1\ny = 2\n```")
    assert "48/2" in html and "<b>72</b>" in html and "\\(" not in html
    assert "<pre" in html and "x = 1\ny = 2</pre>" in html  # code lines kept
    view = MathView()
    qtbot.addWidget(view)
    view.set_answer("«2*3=6»6")
    assert view.checked == 1 and view.wrong == 0 and "6" in view.toPlainText() and "«" not in view.toPlainText()


# -- code -----------------------------------------------------------------------------------------------
def test_highlighter_colours_python(qtbot):
    from PySide6.QtWidgets import QPlainTextEdit

    from app.ui.highlight import STYLES, PythonHighlighter

    edit = QPlainTextEdit()
    qtbot.addWidget(edit)
    PythonHighlighter(edit.document())
    edit.setPlainText('def f(x):\n    """Doc\n    more"""\n    return x + 1  # "not a string"\ns = "# not a comment"\n')
    doc = edit.document()

    def colour_at(line: int, col: int):
        block = doc.findBlockByNumber(line)
        for r in block.layout().formats():
            if r.start <= col < r.start + r.length:
                return r.format.foreground().color().name()
        return None

    assert colour_at(0, 0) == STYLES["keyword"].foreground().color().name()  # def
    assert colour_at(0, 4) == STYLES["defname"].foreground().color().name()  # f
    assert colour_at(2, 4) == STYLES["string"].foreground().color().name()  # inside the docstring, line 2
    assert colour_at(3, 18) == STYLES["comment"].foreground().color().name()
    assert colour_at(4, 6) == STYLES["string"].foreground().color().name()  # '#' inside a string


def test_extract_code():
    from app.code_blocks import extract_code

    assert extract_code("Here:\n```python\ndef f(x):\n    return x\n```\nDone.") == "def f(x):\n    return x"
    assert extract_code("```\nprint(1)\n```\n```py\nprint(2)\n```") == "print(1)\n\nprint(2)"
    assert extract_code("```python\nprint(3)\n") == "print(3)"  # cut off mid-answer
    assert extract_code("print(4)") == "print(4)"


def test_run_in_sandbox_from_the_code_tab(qtbot):
    from app.tasks import get_task
    from app.ui.code_tab import CodeTab
    from app.ui.engine_host import EngineHost

    host = EngineHost()
    tab = CodeTab(get_task("code"), host)
    qtbot.addWidget(tab)
    tab.texts = ["Sure:\n```python\nimport os\nprint(6 * 7)\nos.system('echo hi')\n```"]
    tab.render()
    tab.run_code()
    qtbot.waitUntil(lambda: tab.run_btn.isEnabled(), timeout=30_000)
    out = tab.sandbox_output.toPlainText()
    assert "42" in out and "os.system is not allowed" in out and "failed" in out


# -- charts -------------------------------------------------------------------------------------------
def test_loss_plot_and_bar_chart_draw(qtbot):
    from PySide6.QtGui import QColor

    from app.ui.plots import BarChart, LossPlot, nice_ticks

    assert nice_ticks(0, 0.93) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(400, 240)
    for step, loss in enumerate([2.5, 2.0, 1.6, 1.3], 1):
        plot.add_point("train", step * 10, loss)
    plot.add_point("valid", 40, 1.5)
    img = plot.grab().toImage()
    blue = QColor("#2563eb").rgb()
    assert any(img.pixel(x, y) == blue for x in range(0, 400, 2) for y in range(0, 240, 2))
    chart = BarChart()
    qtbot.addWidget(chart)
    chart.resize(400, 240)
    chart.set_data("scores", ["gsm8k"], {"base": [20.0], "adapter": [40.0]})
    img = chart.grab().toImage()
    orange = QColor("#f97316").rgb()
    assert any(img.pixel(x, y) == orange for x in range(0, 400, 2) for y in range(0, 240, 2))


# -- benchmark panel ------------------------------------------------------------------------------------
def test_bench_panel_runs_a_tiny_benchmark_to_its_table(qtbot, tiny_qwen, tiny_adapters, tmp_path):
    """Cancel part-way, resume (done items are not rerun), then the milestone table and report."""
    from app import store
    from app.ui.app import StallWatch
    from app.ui.main_window import MainWindow

    store.add("code", tiny_adapters["qwen2"]["code"], name="code-tiny")
    win = MainWindow(model=str(tiny_qwen), engine="mlx")
    qtbot.addWidget(win)
    win.start()
    qtbot.waitUntil(lambda: win.host.engine is not None, timeout=60_000)
    panel = win.bench_panel
    win.tabs.setCurrentWidget(panel)
    for name, cb in panel.task_checks.items():
        cb.setChecked(name == "humaneval")
    for name, cb in panel.config_checks.items():
        cb.setChecked(name in ("base", "adapter"))
    panel.limit.setValue(3)
    panel.max_tokens.setValue(8)

    stop_after_first = lambda p: panel.cancel() if p.done >= 1 else None  # noqa: E731
    panel.progress_report.connect(stop_after_first)
    w = panel.start()
    assert w is not None and not panel.run_btn.isEnabled()
    qtbot.waitUntil(lambda: w.done.is_set(), timeout=120_000)
    qtbot.waitUntil(lambda: panel.run_btn.isEnabled(), timeout=WAIT_MS)
    assert panel.results["meta"]["cancelled"] and "Cancelled" in panel.message.text()
    done_first = sum(r["n"] for r in panel.results["runs"])
    assert 1 <= done_first < 6
    panel.progress_report.disconnect(stop_after_first)

    seen = []
    panel.progress_report.connect(lambda p: seen.append((p.task, p.config, p.done, p.total)))
    panel.resume.setChecked(True)
    watch = StallWatch(win)
    w = panel.start()
    qtbot.waitUntil(lambda: w.done.is_set(), timeout=120_000)
    qtbot.waitUntil(lambda: panel.run_btn.isEnabled(), timeout=WAIT_MS)
    # The run (models loaded, items scored) happens in a child process: the window never froze.
    assert watch.worst_ms < 500, f"event loop blocked for {watch.worst_ms:.0f} ms"
    assert not panel.results["meta"]["cancelled"]
    assert ("humaneval", "base", 3, 3) in seen and ("humaneval", "adapter", 3, 3) in seen
    lines = panel.out_dir.joinpath("results.jsonl").read_text().strip().splitlines()
    assert len(lines) == 6  # the items done before the cancel were not run again
    headers = [panel.table.horizontalHeaderItem(i).text() for i in range(panel.table.columnCount())]
    rows = [panel.table.verticalHeaderItem(i).text() for i in range(panel.table.rowCount())]
    assert headers == ["base SLM", "SLM + adapter"]
    assert rows[0] == "humaneval (pass@1)" and "decode tok/s" in rows
    assert "n=3" in panel.table.item(0, 0).text() and "n=3" in panel.table.item(0, 1).text()
    assert panel.report_file() is not None and panel.report_file().exists() and panel.open_btn.isEnabled()
    dest = panel.export_report(tmp_path / "exported")
    assert (dest / "results.jsonl").exists() and "Exported" in panel.message.text()
    assert panel.chart.categories == ["humaneval"]
    win.close()


def test_installed_pyside_keeps_signal_refcounts():
    """PySide6 6.12.0 lost a reference to True per emit: a streamed answer then aborted the process
    on Python 3.11. The pinned version must not."""
    from app.ui.app import signal_emit_leak

    assert signal_emit_leak(500) == 0
