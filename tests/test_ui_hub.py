"""The app's way to a first adapter without training: a task tab with none offers the Hub, the
"Find on the Hub…" dialog searches (fake hub on 127.0.0.1) and gets one with progress, and its tab
uses it at once; the Train panel's Estimate says what training would cost instead."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.tiny import random_adapter
from fake_hub import FakeHub
from test_hub_adapters import BASE, TAG, _peft

pytest.importorskip("pytestqt")
GSM8K = Path(__file__).parent / "fixtures" / "data" / "gsm8k" / "main" / "train.jsonl"
WAIT_MS = 60_000


def test_no_adapter_offer_find_on_hub_get_and_estimate(qtbot, tiny_qwen, tmp_path, monkeypatch):
    from app.ui.main_window import MainWindow

    repos = {"alice/tiny-gsm8k-lora": _peft(tmp_path, random_adapter(tiny_qwen, seed=1), BASE),
             BASE: {"config.json": (tiny_qwen / "config.json").read_bytes()}}
    info = {"alice/tiny-gsm8k-lora": {"downloads": 50, "likes": 3, "tags": ["peft", TAG],
                                      "cardData": {"datasets": ["openai/gsm8k"], "license": "apache-2.0"}}}
    with FakeHub(repos, info=info).use(monkeypatch):
        win = MainWindow(model=str(tiny_qwen), engine="mlx")
        qtbot.addWidget(win)
        win.start()
        qtbot.waitUntil(lambda: win.host.engine is not None, timeout=WAIT_MS)
        tab = win.task_tabs["math"]
        win.tabs.setCurrentWidget(tab)
        qtbot.waitUntil(lambda: not tab.offer.isHidden(), timeout=WAIT_MS)
        assert "No Math adapter yet" in tab.offer.text()

        tab.offer.linkActivated.emit("hub")  # the "Find one on the Hub" link
        dialog = win.models_panel.hub_dialog
        assert dialog is not None and dialog.task() == "math"
        assert dialog.base.text() == ""  # a local folder does not name its hub repo: the user says
        dialog.base.setText(BASE)
        w = dialog.search()
        qtbot.waitUntil(lambda: w.done.is_set(), timeout=WAIT_MS)
        # done is set in the pool thread; the results reach the table through a queued signal
        qtbot.waitUntil(lambda: "fit" in dialog.message.text(), timeout=WAIT_MS)
        assert dialog.table.rowCount() == 1 and dialog.table.item(0, 0).text() == "alice/tiny-gsm8k-lora"
        assert dialog.table.item(0, 6).text() == "gsm8k" and "1 adapters fit" in dialog.message.text()

        seen = []
        dialog.download_progress.connect(seen.append)
        with qtbot.waitSignal(dialog.adapter_added, timeout=WAIT_MS) as got:
            dialog.get_selected()
        assert got.args[0] == "math" and seen and seen[-1].done == seen[-1].total
        qtbot.waitUntil(lambda: "math" in win.host.engine.adapters, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: tab.offer.isHidden(), timeout=WAIT_MS)
        meta = json.loads((Path(got.args[1]) / "loradesk.json").read_text())
        assert meta["hub"]["repo"] == "alice/tiny-gsm8k-lora"
        dialog.close()

    tab.offer.linkActivated.emit("train")
    panel = win.train_panel
    assert win.tabs.currentWidget() is panel and panel.task() == "math"
    panel.files.addItem(str(GSM8K))
    panel.iters.setValue(50)
    panel.batch.setValue(1)
    panel.seq.setValue(1024)
    w = panel.estimate()
    qtbot.waitUntil(lambda: w.done.is_set(), timeout=120_000)
    qtbot.waitUntil(lambda: panel.estimate_btn.isEnabled(), timeout=WAIT_MS)
    est = panel.last_estimate
    assert est is not None and (est.engine, est.total_steps) == ("mlx", 50), panel.message.text()
    assert panel.message.text().startswith("Estimated on this machine: mlx: ")
    assert "Find on the Hub" in panel.message.text()
    assert len(panel.plot.series.get("train", [])) == 0  # the timed steps are not a training curve
