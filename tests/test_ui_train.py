"""The Train panel on a tiny model (MLX engine) with the GSM8K fixture: live loss curve, cancel,
resume from the checkpoint, and the new adapter serving its tab when done."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

GSM8K = Path(__file__).parent / "fixtures" / "data" / "gsm8k" / "main" / "train.jsonl"


WAIT_MS = 30_000  # generous: a wait ends as soon as its event happens
# Enough steps that the Stop sent at step 2 (child process -> GUI -> child) lands before the end
# even on a loaded machine; a tiny-model step takes milliseconds.
ITERS = 40


def test_train_cancel_resume_and_the_adapter_becomes_active(qtbot, tiny_qwen):
    from app.ui.main_window import MainWindow

    win = MainWindow(model=str(tiny_qwen), engine="mlx")
    qtbot.addWidget(win)
    win.start()
    qtbot.waitUntil(lambda: win.host.engine is not None, timeout=60_000)
    engine = win.host.engine
    assert "math" not in engine.adapters  # a fresh install: no adapter yet
    panel = win.train_panel
    win.tabs.setCurrentWidget(panel)
    panel.task_combo.setCurrentIndex(panel.task_combo.findData("math"))
    panel.files.addItem(str(GSM8K))
    panel.iters.setValue(ITERS)
    panel.batch.setValue(2)
    panel.rank.setValue(4)
    panel.seq.setValue(512)
    cfg = panel.build_config()
    assert cfg.model == str(tiny_qwen) and cfg.engine == "mlx" and cfg.data == (str(GSM8K),) and cfg.rank == 4
    assert cfg.mix == {"openai/gsm8k": 0.7, "allenai/math_qa": 0.3}  # the record's weights
    panel.hub_rows["allenai/math_qa"][0].setChecked(False)
    assert panel.build_config().mix["allenai/math_qa"] == 0.0

    # Cancel once training is under way: a checkpoint is kept and Resume is offered.
    panel.report.connect(lambda d: panel.cancel() if d.get("phase") == "train" and d.get("step", 0) >= 2 else None)
    w = panel.start()
    qtbot.waitUntil(lambda: w.done.is_set(), timeout=120_000)
    qtbot.waitUntil(lambda: panel.start_btn.isEnabled(), timeout=WAIT_MS)
    assert "cancelled" in panel.message.text() and panel.resume.isChecked()
    first = [d["step"] for d in panel.reports if d.get("phase") == "train"]
    assert first and max(first) < ITERS
    assert len(panel.plot.series["train"]) == len(first)  # the curve drew every reported loss
    assert "math" not in engine.adapters

    panel.report.disconnect()
    panel.report.connect(panel._on_report)
    with qtbot.waitSignal(panel.adapter_trained, timeout=120_000) as blocker:
        panel.start()  # resumes from the checkpoint
    task, folder = blocker.args
    resumed = [d["step"] for d in panel.reports if d.get("phase") == "train"]
    assert task == "math" and resumed[0] > 1 and resumed[-1] == ITERS  # continued, did not start over
    assert panel.progress.value() == ITERS and "loss" in panel.progress_label.text()
    losses = [loss for _, loss in panel.plot.series["train"]]
    assert len(losses) == len(resumed)

    qtbot.waitUntil(lambda: "math" in engine.adapters, timeout=WAIT_MS)
    assert Path(engine.adapters["math"].path) == Path(folder)
    win.tabs.setCurrentWidget(win.task_tabs["math"])
    # The worker switches the adapter, then the tab hears of it (a signal): wait for the status line.
    qtbot.waitUntil(lambda: engine.active == "math" and "adapter: math" in win.task_tabs["math"].status.text(),
                    timeout=WAIT_MS)
    win.close()
