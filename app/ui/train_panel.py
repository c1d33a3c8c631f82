"""The Train panel: task, datasets (hub ids or local files), key settings; progress, a live loss
curve, cancel and resume. A finished adapter is loaded and becomes active for its task's tab."""
from __future__ import annotations

import logging
import threading
import time

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout,
    QLabel, QListWidget, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from app.tasks import get_task, load_tasks
from app.ui import integrations
from app.child_process import run_in_child
from app.ui.engine_host import EngineHost
from app.format import human_duration
from app.ui.plots import LossPlot
from app.ui.workers import Worker

log = logging.getLogger(__name__)


class TrainPanel(QWidget):
    adapter_trained = Signal(str, str)  # task, adapter folder
    report = Signal(object)  # a progress dict, emitted from the training thread
    estimate_report = Signal(object)  # a progress dict of an estimate (kept off the loss curve)

    def __init__(self, host: EngineHost, parent=None):
        super().__init__(parent)
        self.host = host
        self.worker: Worker | None = None
        self.config = None
        self.reports: list[dict] = []  # this run's progress reports
        self._t0 = 0.0

        layout = QHBoxLayout(self)
        left = QVBoxLayout()
        layout.addLayout(left, 2)
        right = QVBoxLayout()
        layout.addLayout(right, 3)

        box = QGroupBox("What to train")
        form = QFormLayout(box)
        self.task_combo = QComboBox()
        self.task_combo.setObjectName("train-task")
        for t in load_tasks().values():
            self.task_combo.addItem(t.label, t.name)
        self.task_combo.currentIndexChanged.connect(lambda _i: self._task_changed())
        form.addRow("Task:", self.task_combo)
        # The task record's hub datasets, each with its mixing weight (unticked: left out).
        self.hub_box = QWidget()
        self.hub_grid = QGridLayout(self.hub_box)
        self.hub_grid.setContentsMargins(0, 0, 0, 0)
        self.hub_rows: dict[str, tuple[QCheckBox, QDoubleSpinBox]] = {}
        form.addRow("Hub datasets:", self.hub_box)
        files_row = QVBoxLayout()
        self.files = QListWidget()
        self.files.setObjectName("data-files")
        self.files.setMaximumHeight(90)
        files_row.addWidget(self.files)
        fb = QHBoxLayout()
        add_btn = QPushButton("Add files…")
        add_btn.clicked.connect(self._add_files)
        clear_btn = QPushButton("Clear")
        clear_btn.clicked.connect(self.files.clear)
        fb.addWidget(add_btn)
        fb.addWidget(clear_btn)
        fb.addStretch(1)
        files_row.addLayout(fb)
        form.addRow("Local files:", files_row)
        note = QLabel("Local files (jsonl, json, parquet, csv in the datasets' own columns) replace the "
                      "hub download; use them offline.")
        note.setWordWrap(True)
        note.setObjectName("hint")
        form.addRow(note)
        left.addWidget(box)

        sbox = QGroupBox("Key settings")
        sform = QFormLayout(sbox)
        self.iters = QSpinBox()
        self.iters.setRange(1, 1_000_000)
        self.rank = QSpinBox()
        self.rank.setRange(1, 256)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-5)
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.seq = QSpinBox()
        self.seq.setRange(16, 32768)
        for label, w in (("Steps:", self.iters), ("LoRA rank:", self.rank), ("Learning rate:", self.lr),
                         ("Batch size:", self.batch), ("Max sequence length:", self.seq)):
            sform.addRow(label, w)
        self.resume = QCheckBox("Resume the task's last interrupted run")
        sform.addRow(self.resume)
        left.addWidget(sbox)
        left.addStretch(1)

        buttons = QHBoxLayout()
        self.start_btn = QPushButton("Start training")
        self.start_btn.setObjectName("primary")
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.estimate_btn = QPushButton("Estimate time")
        self.estimate_btn.setToolTip("Time a few steps on this machine (nothing is kept): how long the whole run "
                                     "takes and how much memory it needs")
        self.estimate_btn.clicked.connect(self.estimate)
        buttons.addWidget(self.start_btn)
        buttons.addWidget(self.estimate_btn)
        buttons.addWidget(self.cancel_btn)
        buttons.addStretch(1)
        right.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setObjectName("train-progress")
        right.addWidget(self.progress)
        self.progress_label = QLabel("")
        self.progress_label.setWordWrap(True)  # a long line must not widen the window
        right.addWidget(self.progress_label)
        self.plot = LossPlot()
        right.addWidget(self.plot, 1)
        self.message = QLabel()
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        right.addWidget(self.message)

        self.report.connect(self._on_report)
        self.estimate_report.connect(lambda d: d.get("message") and self.progress_label.setText(str(d["message"])))
        self.last_estimate = None
        self._task_changed()
        if not integrations.training_available():
            self.show_message("Training is not part of this build yet (no training module found).", error=True)

    # -- settings ----------------------------------------------------------------------------------
    def task(self) -> str:
        return self.task_combo.currentData()

    def _task_changed(self) -> None:
        t = get_task(self.task())
        d = t.training
        self.iters.setValue(d.iters)
        self.rank.setValue(d.rank)
        self.lr.setValue(d.learning_rate)
        self.batch.setValue(d.batch_size)
        self.seq.setValue(d.max_seq_length)
        while self.hub_grid.count():
            self.hub_grid.takeAt(0).widget().deleteLater()
        self.hub_rows = {}
        for i, spec in enumerate(t.datasets):
            cb = QCheckBox(spec.id)
            cb.setChecked(True)
            weight = QDoubleSpinBox()
            weight.setRange(0.0, 100.0)
            weight.setSingleStep(0.1)
            weight.setValue(spec.weight)
            weight.setToolTip("mixing weight (renormalized over the ticked datasets)")
            self.hub_grid.addWidget(cb, i, 0)
            self.hub_grid.addWidget(weight, i, 1)
            self.hub_rows[spec.id] = (cb, weight)

    def _add_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Training data", "",
                                                "Data files (*.jsonl *.json *.parquet *.csv);;All files (*)")
        for f in files:
            self.files.addItem(f)
            self.files.item(self.files.count() - 1).setToolTip(f)

    def data(self) -> tuple[str, ...]:
        return tuple(self.files.item(i).text() for i in range(self.files.count()))

    def mix(self) -> dict[str, float]:
        return {ds: (w.value() if cb.isChecked() else 0.0) for ds, (cb, w) in self.hub_rows.items()}

    def build_config(self):
        from training.config import TrainConfig

        from app.engine import installed_engines
        from app.models import trainable_model
        from app.session import TRAINERS

        if not any(k in TRAINERS for k in installed_engines()):
            raise ValueError("training needs torch (transformers + PEFT) or MLX, which this build does not include; "
                             "install LoRA Desk with pip to train (README), or add a trained adapter under "
                             "Models & adapters")
        model = None
        if self.host.engine is not None and self.host.engine.model_info is not None:
            model = str(self.host.engine.model_info.ref)
        engine = self.host.kind if self.host.kind in TRAINERS else None
        if engine is None:  # llama.cpp serves adapters; torch (or MLX) trains them on the same base
            model = trainable_model(model)
        iters = self.iters.value()
        return TrainConfig.for_task(
            self.task(), model=model, engine=engine, data=self.data(), mix=self.mix(), iters=iters,
            rank=self.rank.value(), alpha=2.0 * self.rank.value(), learning_rate=self.lr.value(),
            batch_size=self.batch.value(), max_seq_length=self.seq.value(), resume=self.resume.isChecked(),
            save_every=max(1, min(50, iters // 4 or 1)), eval_every=max(1, min(100, iters // 4 or 1)),
        )

    # -- run -----------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.worker is not None and not self.worker.done.is_set()

    def start(self) -> Worker | None:
        if self.busy:
            return None
        try:
            self.config = config = self.build_config()
        except (ValueError, ImportError) as e:
            self.show_message(f"Cannot start: {e}", error=True)
            return None
        self.plot.clear()
        self.reports = []
        self.plot.total_steps = config.iters
        self.progress.setRange(0, config.iters or 0)
        self.progress.setValue(0)
        self.progress_label.setText("preparing data…")
        self.show_message(f"Training a {config.task} adapter ({config.iters} steps, rank {config.rank}, "
                          f"{config.engine or 'default'} engine)…")
        self._t0 = time.monotonic()
        cancel = threading.Event()
        # A child process: a training loop holds the GIL too long for a thread (see child_process).
        self.worker = Worker(run_in_child, "app.ui.integrations:train", (config,), self.report.emit, cancel,
                             "training", abort_event=cancel)
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._ended)
        self.start_btn.setEnabled(False)
        self.estimate_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        return self.worker.start()

    def estimate(self) -> Worker | None:
        """Measure a few steps of these settings in a child process (training/estimate.py)."""
        from training.estimate import MEASURED_STEPS

        if self.busy:
            return None
        try:
            config = self.build_config().replace(resume=False)
        except (ValueError, ImportError) as e:
            self.show_message(f"Cannot estimate: {e}", error=True)
            return None
        self.show_message(f"Timing {MEASURED_STEPS} steps of this run on this machine (the model loads first)…")
        cancel = threading.Event()
        self.worker = Worker(run_in_child, "training.estimate:estimate_job", (config, MEASURED_STEPS),
                             self.estimate_report.emit, cancel, "estimate", abort_event=cancel)
        self.worker.returned.connect(self._estimated)
        self.worker.errored.connect(lambda e: None if self.worker.abort_requested
                                    else self.show_message(f"Estimate failed: {e}", error=True))
        self.worker.finished.connect(self._estimate_ended)
        for b in (self.start_btn, self.estimate_btn):
            b.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        return self.worker.start()

    def _estimated(self, est) -> None:
        self.last_estimate = est
        self.show_message(f"Estimated on this machine: {est.summary()}. Rather not wait? Get a ready-made adapter: "
                          "Models & adapters > Find on the Hub…")

    def _estimate_ended(self) -> None:
        for b in (self.start_btn, self.estimate_btn):
            b.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress_label.setText("estimate cancelled" if self.worker.abort_requested else "")

    def cancel(self) -> None:
        if self.busy:
            self.worker.quit()
            self.progress_label.setText("cancelling after the current step…")

    def _failed(self, e: Exception) -> None:
        if type(e).__name__ == "TrainingCancelled" or (self.worker is not None and self.worker.abort_requested):
            return  # _ended says it was cancelled
        self.show_message(f"Training failed: {e}", error=True)

    def _on_report(self, d: dict) -> None:
        """One TrainReport (as a dict): step, total, phase, loss, val_loss, tokens_per_s, eta_s, message."""
        self.reports.append(d)
        step = d.get("step")
        total = d.get("total") or (self.config.iters if self.config else None)
        phase = d.get("phase", "train")
        train_loss = d.get("loss") if phase == "train" else None
        val_loss = d.get("val_loss") if phase == "val" else None
        if step is None or phase not in ("train", "val"):
            if d.get("message"):
                self.progress_label.setText(str(d["message"]))
            if step is not None and total:
                self.progress.setRange(0, int(total))
                self.progress.setValue(int(step))
            return
        if train_loss is not None:
            self.plot.add_point("train", step, train_loss)
        if val_loss is not None:
            self.plot.add_point("valid", step, val_loss)
        if total:
            self.progress.setRange(0, int(total))
            self.plot.total_steps = int(total)
        self.progress.setValue(int(step))
        parts = [f"step {step}" + (f"/{total}" if total else "")]
        if train_loss is not None:
            parts.append(f"loss {train_loss:.3f}")
        if val_loss is not None:
            parts.append(f"valid {val_loss:.3f}")
        tps = d.get("tokens_per_s")
        if tps:
            parts.append(f"{tps:.0f} tok/s")
        eta = d.get("eta_s")
        if eta is None and total and step:
            el = time.monotonic() - self._t0
            eta = el / step * (total - step)
        if eta is not None:
            parts.append(f"{human_duration(eta)} left")
        self.progress_label.setText(" · ".join(parts))

    def _done(self, result) -> None:
        folder = integrations.result_folder(result)
        task = self.config.task
        if self.worker.abort_requested:
            self.show_message("Training cancelled; its last checkpoint is kept. Tick Resume and Start to continue.")
            return
        if folder is None:
            self.show_message(f"Training finished, but it returned no adapter folder ({result!r}).", error=True)
            return
        self.show_message(f"Trained a {task} adapter: {folder}. It is now active in the {get_task(task).label} tab.")
        self.adapter_trained.emit(task, folder)

    def _ended(self) -> None:
        self.start_btn.setEnabled(True)
        self.estimate_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        if self.worker is not None and self.worker.abort_requested:
            self.progress_label.setText("cancelled")
            self.resume.setChecked(True)
            self.show_message("Training cancelled; its last checkpoint is kept. Start again with Resume ticked "
                              "to continue from it.")

    def show_message(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setProperty("error", error)
        self.message.style().unpolish(self.message)
        self.message.style().polish(self.message)

    # -- settings persistence -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"task": self.task(), "iters": self.iters.value(), "rank": self.rank.value(),
                "learning_rate": self.lr.value(), "batch_size": self.batch.value(),
                "max_seq_length": self.seq.value(),
                "files": [self.files.item(i).text() for i in range(self.files.count())]}

    def restore(self, s: dict) -> None:
        i = self.task_combo.findData(s.get("task"))
        if i >= 0:
            self.task_combo.setCurrentIndex(i)
        for key, w in (("iters", self.iters), ("rank", self.rank), ("batch_size", self.batch),
                       ("max_seq_length", self.seq)):
            if key in s:
                w.setValue(int(s[key]))
        if "learning_rate" in s:
            self.lr.setValue(float(s["learning_rate"]))
        for f in s.get("files", []):
            self.files.addItem(f)
