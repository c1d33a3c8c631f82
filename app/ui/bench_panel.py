"""The Benchmark panel: tasks x configurations (Mistral-7B, base, adapter) on a subset; progress and
running scores while it runs; the milestone table and a chart when done; open / export the report."""
from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox, QFileDialog, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
    QLineEdit, QProgressBar, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from app import paths
from app.child_process import run_in_child
from app.ui.engine_host import EngineHost
from app.format import human_bytes, human_duration
from app.ui.plots import BarChart
from app.ui.workers import Worker

log = logging.getLogger(__name__)
FRACTION_METRICS = {"exact_match", "acc", "acc_norm", "pass@1", "annotations_ok"}
CONFIG_LABELS = {"mistral-7b": "Mistral-7B", "base": "base SLM", "adapter": "SLM + adapter"}


def shown_score(metric: str, value: float | None) -> float | None:
    """Scores on one 0-100 scale: fractions as percentages, ROUGE/BLEU as they are."""
    if value is None:
        return None
    return value * 100 if metric in FRACTION_METRICS else value


def milestone_rows(results: dict) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    """(row labels, column labels, cell texts) for the milestone table of a results dict:
    rows are tasks (plus speed and memory), columns configurations."""
    runs = results.get("runs", [])
    cols, rows, cells = [], [], {}
    for r in runs:
        col = r["config"] + (f":{r['adapter']}" if r["task"] == "hellaswag" and r.get("adapter") else "")
        if col not in cols:
            cols.append(col)
        row = f"{r['task']} ({r['primary']})"
        if row not in rows:
            rows.append(row)
        v = shown_score(r["primary"], (r.get("metrics") or {}).get(r["primary"]))
        cells[(row, col)] = "—" if v is None else f"{v:.1f}" + (f"  (n={r['n']})" if r.get("n") is not None else "")
    for label, key in (("decode tok/s", "decode_tps"), ("time to first token (s)", "ttft_median")):
        rows.append(label)
        for col in cols:
            vals = [r["speed"].get(key) for r in runs if _col(r) == col and r.get("speed", {}).get(key)]
            cells[(label, col)] = f"{sorted(vals)[len(vals) // 2]:.2f}" if vals else "—"
    rows.append("model + adapter size")
    for col in cols:
        r = next((r for r in runs if _col(r) == col), None)
        cells[("model + adapter size", col)] = human_bytes((r.get("model_bytes") or 0) + (r.get("adapter_bytes") or 0)) if r else "—"
    return rows, cols, cells


def _col(r: dict) -> str:
    return r["config"] + (f":{r['adapter']}" if r["task"] == "hellaswag" and r.get("adapter") else "")


class BenchPanel(QWidget):
    progress_report = Signal(object)  # a quality.Progress, emitted from the benchmark thread
    run_finished = Signal(object)  # the results dict

    def __init__(self, host: EngineHost, parent=None):
        super().__init__(parent)
        self.host = host
        self.worker: Worker | None = None
        self.results: dict | None = None
        self.out_dir: Path | None = None
        self.report_files: list[Path] = []
        self.running: dict[tuple[str, str], str] = {}

        layout = QHBoxLayout(self)
        left = QVBoxLayout()
        layout.addLayout(left, 2)
        right = QVBoxLayout()
        layout.addLayout(right, 5)

        tbox = QGroupBox("Tasks")
        grid = QGridLayout(tbox)
        self.task_checks: dict[str, QCheckBox] = {}
        for i, name in enumerate(self._eval_names()):
            cb = QCheckBox(name)
            cb.setChecked(name in ("gsm8k", "humaneval"))
            self.task_checks[name] = cb
            grid.addWidget(cb, i // 2, i % 2)
        left.addWidget(tbox)

        cbox = QGroupBox("Configurations")
        cl = QVBoxLayout(cbox)
        self.config_checks: dict[str, QCheckBox] = {}
        for name in ("mistral-7b", "base", "adapter"):
            cb = QCheckBox(f"{CONFIG_LABELS[name]} ({name})")
            cb.setChecked(name != "mistral-7b")
            self.config_checks[name] = cb
            cl.addWidget(cb)
        left.addWidget(cbox)

        sbox = QGroupBox("Subset")
        form = QFormLayout(sbox)
        self.limit = QSpinBox()
        self.limit.setObjectName("limit")
        self.limit.setRange(0, 100_000)
        self.limit.setValue(20)
        self.limit.setSpecialValueText("all items")
        self.limit.setToolTip("The first N items of each dataset (0: all)")
        form.addRow("Items per task:", self.limit)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(0, 4096)
        self.max_tokens.setSpecialValueText("task default")
        form.addRow("Answer length limit:", self.max_tokens)
        self.data_dir = QLineEdit()
        self.data_dir.setPlaceholderText("optional: a folder of local dataset files")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_data)
        drow = QHBoxLayout()
        drow.addWidget(self.data_dir)
        drow.addWidget(browse)
        form.addRow("Data folder:", drow)
        self.resume = QCheckBox("Resume the last run (skip items already done)")
        form.addRow(self.resume)
        left.addWidget(sbox)
        left.addStretch(1)

        buttons = QHBoxLayout()
        self.run_btn = QPushButton("Run benchmark")
        self.run_btn.setObjectName("primary")
        self.run_btn.clicked.connect(self.start)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.open_btn = QPushButton("Open report")
        self.open_btn.setEnabled(False)
        self.open_btn.clicked.connect(self.open_report)
        self.export_btn = QPushButton("Export report…")
        self.export_btn.setEnabled(False)
        self.export_btn.clicked.connect(self._export_clicked)
        for b in (self.run_btn, self.cancel_btn, self.open_btn, self.export_btn):
            buttons.addWidget(b)
        buttons.addStretch(1)
        right.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setObjectName("bench-progress")
        right.addWidget(self.progress)
        self.progress_label = QLabel("")
        self.progress_label.setObjectName("bench-status")
        self.progress_label.setWordWrap(True)  # a long line must not widen the window
        right.addWidget(self.progress_label)
        self.table = QTableWidget(0, 0)
        self.table.setObjectName("milestones")
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        right.addWidget(self.table, 2)
        self.chart = BarChart()
        right.addWidget(self.chart, 3)
        self.message = QLabel()
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        right.addWidget(self.message)

        self.progress_report.connect(self._on_progress)

    @staticmethod
    def _eval_names() -> list[str]:
        try:
            from app.bench.evals import EVALS
        except ImportError:
            return []
        return list(EVALS)

    def _browse_data(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder with local dataset files")
        if d:
            self.data_dir.setText(d)

    # -- run ------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.worker is not None and not self.worker.done.is_set()

    def build_config(self):
        from app.bench.quality import QualityConfig
        from app.bench.evals import EvalOptions

        tasks = [n for n, cb in self.task_checks.items() if cb.isChecked()]
        configs = [n for n, cb in self.config_checks.items() if cb.isChecked()]
        model = None
        if self.host.engine is not None and self.host.engine.model_info is not None:
            model = str(self.host.engine.model_info.ref)
        root = paths.runs_dir() / "bench"
        out = root / time.strftime("%Y%m%d-%H%M%S")
        if self.resume.isChecked():  # continue this session's run, else the newest one on disk
            earlier = sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []
            out = self.out_dir or (earlier[-1] if earlier else out)
        return QualityConfig(
            tasks=tuple(tasks), configs=tuple(configs), model=model, engine=self.host.kind,
            limit=self.limit.value() or None, out_dir=out, resume=self.resume.isChecked(),
            data_dir=self.data_dir.text().strip() or None,
            options=EvalOptions(max_tokens=self.max_tokens.value() or None),
        )

    def start(self) -> Worker | None:
        if self.busy:
            return None
        try:
            cfg = self.build_config()
        except (ValueError, ImportError) as e:
            self.show_message(f"Cannot start: {e}", error=True)
            return None
        self.out_dir = cfg.out_dir
        self.results, self.report_files, self.running = None, [], {}
        self.table.setRowCount(0)
        self.table.setColumnCount(0)
        self.chart.set_data("", [], {})
        self.progress.setRange(0, 0)
        self.progress_label.setText("loading datasets and models…")
        self.show_message(f"Benchmark running: {', '.join(cfg.tasks)} × {', '.join(cfg.configs)}, "
                          f"{cfg.selection()}. Results go to {cfg.out_dir}.")
        cancel = threading.Event()
        self.worker = Worker(self._job, cfg, cancel, abort_event=cancel)
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(lambda e: self.show_message(f"Benchmark failed: {e}", error=True))
        self.worker.finished.connect(self._ended)
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.open_btn.setEnabled(False)
        self.export_btn.setEnabled(False)
        return self.worker.start()

    def _job(self, cfg, cancel):
        # A child process: loading models and scoring hold the GIL too long for a thread (see child_process).
        return run_in_child("app.ui.integrations:bench_job", (cfg,), self.progress_report.emit, cancel,
                            what="benchmark")

    def cancel(self) -> None:
        if self.busy:
            self.worker.quit()
            self.progress_label.setText("cancelling after the current item…")

    def _on_progress(self, p) -> None:
        self.progress.setRange(0, max(1, p.total))
        self.progress.setValue(p.done)
        score = shown_score(p.metric, p.score)
        parts = [f"{p.task} · {p.config}: {p.done}/{p.total}"]
        if score is not None:
            parts.append(f"{p.metric} {score:.1f}")
        if p.eta:
            parts.append(f"{human_duration(p.eta)} left")
        if p.message:
            parts.append(p.message)
        self.progress_label.setText(" · ".join(parts))
        if score is not None:
            self.running[(p.task, p.config)] = f"{score:.1f} ({p.done}/{p.total})…"
            self._show_running()

    def _show_running(self) -> None:
        rows = list(dict.fromkeys(t for t, _ in self.running))
        cols = list(dict.fromkeys(c for _, c in self.running))
        self._fill_table(rows, cols, {k: v for k, v in self.running.items()})

    def _fill_table(self, rows, cols, cells) -> None:
        self.table.setRowCount(len(rows))
        self.table.setColumnCount(len(cols))
        self.table.setVerticalHeaderLabels(rows)
        self.table.setHorizontalHeaderLabels([CONFIG_LABELS.get(c, c) for c in cols])
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                item = QTableWidgetItem(cells.get((r, c), ""))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(i, j, item)

    def _done(self, payload) -> None:
        results, files = payload
        self.results, self.report_files = results, files
        rows, cols, cells = milestone_rows(results)
        self._fill_table(rows, cols, cells)
        runs = results.get("runs", [])
        tasks = list(dict.fromkeys(r["task"] for r in runs))
        series = {CONFIG_LABELS.get(c, c): [next((shown_score(r["primary"], (r.get("metrics") or {}).get(r["primary"]))
                                                  for r in runs if r["task"] == t and _col(r) == c), None)
                                            for t in tasks] for c in cols}
        self.chart.set_data("Headline score per task (0-100)", tasks, series)
        skipped = results.get("skipped", [])
        notes = [f"{s['task']} / {s['config']}: {s['reason']}" for s in skipped]
        meta = results.get("meta", {})
        head = "Cancelled; the items done are kept (tick Resume to continue)." if meta.get("cancelled") else \
            f"Done in {human_duration(meta.get('wall_seconds', 0))}: {meta.get('selection', '')}."
        where = f" Report: {self.out_dir}" if self.out_dir else ""
        self.show_message(head + where + ("\nSkipped: " + "; ".join(notes) if notes else ""), error=bool(notes) and not runs)
        has_report = any(p.suffix in (".html", ".md") for p in files)
        self.open_btn.setEnabled(has_report)
        self.export_btn.setEnabled(self.out_dir is not None)

    def _ended(self) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        if self.worker is not None and self.worker.abort_requested:
            self.progress_label.setText("cancelled")

    def report_file(self) -> Path | None:
        for suffix in (".html", ".md"):
            for p in self.report_files:
                if p.suffix == suffix:
                    return p
        return None

    def open_report(self) -> None:
        f = self.report_file()
        if f is None or not QDesktopServices.openUrl(QUrl.fromLocalFile(str(f))):
            self.show_message(f"Could not open the report; it is in {self.out_dir}.", error=True)

    def _export_clicked(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Export the report into…")
        if d:
            self.export_report(Path(d) / f"loradesk-bench-{time.strftime('%Y%m%d-%H%M%S')}")

    def export_report(self, dest: Path) -> Path:
        """Copy the run's folder (results, report, charts) to `dest` (written to a temp name first)."""
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.out_dir, tmp)
        tmp.rename(dest)
        self.show_message(f"Exported the report to {dest}.")
        return dest

    def show_message(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setProperty("error", error)
        self.message.style().unpolish(self.message)
        self.message.style().polish(self.message)

    # -- settings persistence ------------------------------------------------------------------------
    def state(self) -> dict:
        return {"tasks": [n for n, cb in self.task_checks.items() if cb.isChecked()],
                "configs": [n for n, cb in self.config_checks.items() if cb.isChecked()],
                "limit": self.limit.value(), "max_tokens": self.max_tokens.value(),
                "data_dir": self.data_dir.text()}

    def restore(self, s: dict) -> None:
        if "tasks" in s:
            for n, cb in self.task_checks.items():
                cb.setChecked(n in s["tasks"])
        if "configs" in s:
            for n, cb in self.config_checks.items():
                cb.setChecked(n in s["configs"])
        if "limit" in s:
            self.limit.setValue(int(s["limit"]))
        if "max_tokens" in s:
            self.max_tokens.setValue(int(s["max_tokens"]))
        self.data_dir.setText(s.get("data_dir", ""))
