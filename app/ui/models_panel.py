"""Models & adapters: choose and download the base model; list, add, export and remove adapters."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QFileDialog, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
    QProgressBar, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from app.ui.engine_host import EngineHost
from app.ui.workers import Worker, create_worker

log = logging.getLogger(__name__)
ADAPTER_COLUMNS = ("Task", "Adapter", "Base model", "Rank", "Size", "Source", "Training", "In use")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def human_duration(s: float) -> str:
    s = int(max(0, s))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def progress_text(done: int, total: int, elapsed: float) -> str:
    """'312.0 MB of 940.0 MB · 10.4 MB/s · 1 min 00 s left'."""
    speed = done / elapsed if elapsed > 0 else 0.0
    parts = [f"{human_bytes(done)} of {human_bytes(total)}" if total else human_bytes(done)]
    if speed > 0:
        parts.append(f"{human_bytes(speed)}/s")
        if total > done:
            parts.append(f"{human_duration((total - done) / speed)} left")
    return " · ".join(parts)


def training_summary(meta: dict | None) -> str:
    """A short line from an adapter's training metadata (loradesk.json)."""
    if not meta:
        return ""
    parts = []
    steps = meta.get("steps") or meta.get("iters")
    if steps:
        parts.append(f"{steps} steps")
    for key, label in (("final_train_loss", "loss"), ("train_loss", "loss"), ("final_valid_loss", "valid"),
                       ("valid_loss", "valid")):
        v = meta.get(key)
        if isinstance(v, (int, float)) and label not in " ".join(parts):
            parts.append(f"{label} {v:.3f}")
    data = meta.get("datasets")
    if isinstance(data, dict):
        parts.append(", ".join(data))
    elif isinstance(data, list):
        parts.append(", ".join(str(d.get("id", d)) if isinstance(d, dict) else str(d) for d in data))
    return " · ".join(parts)


class ModelsPanel(QWidget):
    load_requested = Signal(str, str)  # model ref, engine kind
    download_progress = Signal(int, int)  # emitted from the download thread; queued to the GUI
    import_note = Signal(str)  # GGUF import progress lines, from the import thread

    def __init__(self, host: EngineHost, parent=None):
        super().__init__(parent)
        self.host = host
        self.download_worker: Worker | None = None
        self.job: Worker | None = None  # the last adapter add/export/remove job
        self._dl_start = 0.0
        self._offer: tuple[str, str] | None = None

        layout = QVBoxLayout(self)
        layout.addWidget(self._model_box())
        layout.addWidget(self._adapter_box(), 1)
        self.message = QLabel()
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.message)

        self.download_progress.connect(self._on_progress)
        self.import_note.connect(lambda text: self.show_message(text.strip()))
        host.model_loaded.connect(lambda _i: self._model_loaded())
        host.adapters_changed.connect(self.refresh)
        self.refresh()

    # -- layout ---------------------------------------------------------------------------------
    def _model_box(self) -> QGroupBox:
        from app.engine import ENGINES, default_engine

        box = QGroupBox("Base model")
        v = QVBoxLayout(box)
        row = QHBoxLayout()
        row.addWidget(QLabel("Engine:"))
        self.engine_combo = QComboBox()
        self.engine_combo.setObjectName("engine")
        for kind in ENGINES:
            self.engine_combo.addItem(kind, kind)
        auto, why = default_engine()
        self.engine_combo.setToolTip(f"Default here: {auto} ({why})")
        self.engine_combo.currentIndexChanged.connect(lambda _i: self._fill_models())
        row.addWidget(self.engine_combo)
        row.addWidget(QLabel("Model:"))
        self.model_combo = QComboBox()
        self.model_combo.setObjectName("model")
        self.model_combo.setMinimumWidth(320)
        row.addWidget(self.model_combo, 1)
        self.load_btn = QPushButton("Load")
        self.load_btn.setObjectName("primary")
        self.load_btn.clicked.connect(self._load_selected)
        row.addWidget(self.load_btn)
        v.addLayout(row)

        row2 = QHBoxLayout()
        folder_btn = QPushButton("Local folder…")
        folder_btn.setToolTip("A model folder with config.json, *.safetensors and tokenizer files")
        folder_btn.clicked.connect(self._choose_folder)
        gguf_btn = QPushButton("GGUF file…")
        gguf_btn.clicked.connect(self._choose_gguf)
        row2.addWidget(folder_btn)
        row2.addWidget(gguf_btn)
        row2.addStretch(1)
        self.current_label = QLabel("Loaded: none")
        self.current_label.setObjectName("current-model")
        row2.addWidget(self.current_label)
        v.addLayout(row2)

        dl = QHBoxLayout()
        self.download_btn = QPushButton("Download")
        self.download_btn.clicked.connect(self._download_offered)
        self.download_btn.hide()
        self.progress = QProgressBar()
        self.progress.setObjectName("download-progress")
        self.progress.hide()
        self.progress_label = QLabel()
        self.progress_label.hide()
        self.cancel_btn = QPushButton("Cancel download")
        self.cancel_btn.clicked.connect(self.cancel)
        self.cancel_btn.hide()
        dl.addWidget(self.download_btn)
        dl.addWidget(self.progress, 1)
        dl.addWidget(self.progress_label)
        dl.addWidget(self.cancel_btn)
        v.addLayout(dl)
        self._fill_models()
        return box

    def _adapter_box(self) -> QGroupBox:
        box = QGroupBox("Task adapters")
        v = QVBoxLayout(box)
        self.table = QTableWidget(0, len(ADAPTER_COLUMNS))
        self.table.setObjectName("adapters")
        self.table.setHorizontalHeaderLabels(ADAPTER_COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        v.addWidget(self.table, 1)
        row = QHBoxLayout()
        for label, slot in (("Add…", self._add_clicked), ("Export…", self._export_clicked),
                            ("Remove", self._remove_clicked), ("Refresh", self.refresh)):
            b = QPushButton(label)
            b.clicked.connect(slot)
            row.addWidget(b)
        row.addStretch(1)
        v.addLayout(row)
        return box

    # -- models -------------------------------------------------------------------------------
    def kind(self) -> str:
        return self.engine_combo.currentData()

    def set_engine(self, kind: str) -> None:
        i = self.engine_combo.findData(kind)
        if i >= 0:
            self.engine_combo.setCurrentIndex(i)

    def _fill_models(self) -> None:
        from app.models import DEFAULT_INDEX, SUPPORTED, local_repo_folder, registered_models

        kind = self.kind()
        self.model_combo.clear()
        for i, m in enumerate(SUPPORTED):
            repo = m.mlx_repo if kind == "mlx" else m.torch_repo
            here = (local_repo_folder(repo) / ".complete").exists()
            size = f"~{m.approx_gb_4bit:.1f} GB 4-bit" if kind == "mlx" else f"{m.params_b:.1f}B params"
            label = f"{m.label}{' (default)' if i == DEFAULT_INDEX else ''} — {repo} · {size}"
            self.model_combo.addItem(label + (" · downloaded" if here else ""), repo)
        for name, folder in registered_models().items():
            self.model_combo.addItem(f"{name} — {folder}", name)
        self.model_combo.setCurrentIndex(DEFAULT_INDEX)

    def select_model(self, ref: str) -> None:
        i = self.model_combo.findData(ref)
        if i < 0:
            self.model_combo.addItem(ref, ref)
            i = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(i)

    def _load_selected(self) -> None:
        self.request_model(self.model_combo.currentData(), self.kind())

    def request_model(self, ref: str, kind: str) -> None:
        """Load `ref`, downloading it first (with progress) when it is not on this machine."""
        from app.ui.engine_host import model_is_local

        self.select_model(ref)
        if model_is_local(ref):
            self.show_message("")
            self.load_requested.emit(ref, kind)
        else:
            self.download(ref, kind)

    def offer_download(self, ref: str, kind: str) -> None:
        """First run: the model is not here yet. Offer the download (or a local folder)."""
        from app.models import SUPPORTED

        self.select_model(ref)
        size = next((f" (about {m.approx_gb_4bit:.1f} GB)" for m in SUPPORTED if ref in (m.mlx_repo,)), "")
        self._offer = (ref, kind)
        self.download_btn.setText(f"Download {ref}")
        self.download_btn.show()
        self.show_message(f"The model {ref}{size} is not on this machine yet. Download it, or choose a "
                          "local model folder or GGUF file.")

    def _download_offered(self) -> None:
        if self._offer:
            self.download(*self._offer)

    def download(self, ref: str, kind: str) -> Worker:
        from app.models import resolve_model

        self.cancel()
        cancel = threading.Event()

        def job():
            return resolve_model(ref, engine=kind, cancel=cancel,
                                 progress=lambda done, total: self.download_progress.emit(done, total))

        self._dl_start = time.monotonic()
        self.download_btn.hide()
        self.progress.setRange(0, 0)  # busy until the first report gives a total
        for w in (self.progress, self.progress_label, self.cancel_btn):
            w.show()
        self.progress_label.setText("connecting…")
        self.show_message(f"Downloading {ref}…")
        self.download_worker = Worker(job, abort_event=cancel)
        self.download_worker.returned.connect(lambda folder: self._downloaded(ref, kind, folder))
        self.download_worker.errored.connect(lambda e: self._download_failed(ref, kind, e))
        self.download_worker.finished.connect(self._download_ended)
        return self.download_worker.start()

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            # QProgressBar holds an int: count in KB so multi-GB files fit.
            self.progress.setRange(0, max(1, total // 1024))
            self.progress.setValue(done // 1024)
        self.progress_label.setText(progress_text(done, total, time.monotonic() - self._dl_start))

    def _downloaded(self, ref: str, kind: str, folder) -> None:
        self._offer = None
        self.show_message(f"Downloaded {ref} to {folder}.")
        self._fill_models()
        self.select_model(ref)
        self.load_requested.emit(ref, kind)

    def _download_failed(self, ref: str, kind: str, e: Exception) -> None:
        from app.hub import Cancelled

        if isinstance(e, Cancelled):
            self.show_message(str(e))
        else:
            self.show_message(str(e), error=True)
        self._offer = (ref, kind)
        self.download_btn.setText(f"Download {ref}")
        self.download_btn.show()

    def _download_ended(self) -> None:
        for w in (self.progress, self.progress_label, self.cancel_btn):
            w.hide()
        if self.download_worker is not None and self.download_worker.abort_requested:
            self.show_message("Download cancelled; it resumes where it stopped next time.")

    def cancel(self) -> None:
        if self.download_worker is not None and not self.download_worker.done.is_set():
            self.download_worker.quit()

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder")
        if folder:
            self.request_model(folder, self.kind())

    def _choose_gguf(self) -> None:
        file, _ = QFileDialog.getOpenFileName(self, "Choose a GGUF model file", "", "GGUF models (*.gguf)")
        if file:
            self.import_gguf(file)

    def import_gguf(self, file: str) -> Worker:
        """Convert a GGUF file into a model folder both engines load (in a worker), then load it."""
        from app.ui import integrations

        self.show_message(f"Importing {file}… (dequantizing and converting can take minutes)")
        kind = self.kind()
        return create_worker(integrations.import_gguf, file, kind, say=self.import_note.emit, _connect={
            "returned": lambda ref: self.request_model(ref, kind),
            "errored": lambda e: self.show_message(f"Could not import {file}: {e}", error=True),
        })

    def _model_loaded(self) -> None:
        self._offer = None
        info = self.host.engine.model_info if self.host.engine is not None else None
        if info is not None:
            self.set_engine(self.host.kind)
            self.select_model(str(info.ref))
        self.download_btn.hide()
        self.current_label.setText(f"Loaded: {self.host.model_label()}")
        self.show_message("")
        self.refresh()

    # -- adapters -------------------------------------------------------------------------------
    def refresh(self) -> None:
        from app.cli_core import adapter_rows

        try:
            rows = adapter_rows()
        except Exception as e:  # noqa: BLE001 - a damaged store must not break the window
            self.show_message(f"Could not read the adapter store: {e}", error=True)
            return
        self.rows = rows
        engine = self.host.engine
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            task = row["task"]
            if engine is not None and task in engine.adapters:
                in_use = "loaded" + (" · active" if engine.active == task else "")
            elif task in self.host.problems:
                in_use = "not loaded: " + self.host.problems[task]
            else:
                in_use = "—"
            cells = (task, row["name"] or "—", row["base_model"], str(row["rank"]), row["size"],
                     row["source"], training_summary(row.get("metadata")), in_use)
            for c, text in enumerate(cells):
                item = QTableWidgetItem(str(text))
                item.setToolTip(str(text))
                self.table.setItem(r, c, item)

    def selected_task(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.table.item(rows[0].row(), 0).text()

    def _add_clicked(self) -> None:
        task = self.selected_task()
        if task is None:
            self.show_message("Select the task's row first, then Add… an adapter folder for it.")
            return
        folder = QFileDialog.getExistingDirectory(self, f"Choose an adapter folder for {task}")
        if folder:
            self.add_adapter(task, folder)

    def add_adapter(self, task: str, folder: str) -> Worker:
        """Copy an adapter folder into the store (validated first), then load it into the engine."""
        from app.engine import store

        self.show_message(f"Adding {folder} for {task}…")

        def added(entry):
            self.show_message(f"Found a {entry.format.upper()} adapter; registered as {entry.name!r} for {task}.")
            if self.host.engine is not None:
                self.host.add_adapter(task, entry.path)
            self.refresh()

        self.job = create_worker(store.add, task, folder, _connect={
            "returned": added,
            "errored": lambda e: self.show_message(f"Could not add the adapter: {e}", error=True),
        })
        return self.job

    def _export_clicked(self) -> None:
        task = self.selected_task()
        if task is None:
            self.show_message("Select the task's row first.")
            return
        out = QFileDialog.getExistingDirectory(self, f"Export the {task} adapter into…")
        if out:
            self.export_adapter(task, str(Path(out) / f"{task}-adapter"), "peft")

    def export_adapter(self, task: str, out: str, fmt: str = "peft") -> Worker:
        from app.ui import integrations

        self.job = create_worker(integrations.export_adapter, task, out, fmt, _connect={
            "returned": lambda text: self.show_message(text),
            "errored": lambda e: self.show_message(f"Could not export the {task} adapter: {e}", error=True),
        })
        return self.job

    def _remove_clicked(self) -> None:
        task = self.selected_task()
        row = next((r for r in getattr(self, "rows", []) if r["task"] == task), None)
        if row is None or not row["name"]:
            self.show_message("Select a task row that has an adapter first.")
            return
        self.remove_adapter(task, row["name"])

    def remove_adapter(self, task: str, name: str) -> Worker:
        from app.engine import store

        def job():
            store.remove(task, name)
            return store.adapter_folder(task)  # the task's next adapter, if it has one

        def removed(next_folder):
            self.show_message(f"Removed adapter {name!r} of {task}.")
            self.host.remove_adapter(task)
            if next_folder is not None and self.host.engine is not None:
                self.host.add_adapter(task, next_folder)
            self.refresh()

        self.job = create_worker(job, _connect={
            "returned": removed,
            "errored": lambda e: self.show_message(f"Could not remove the adapter: {e}", error=True),
        })
        return self.job

    def show_message(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setProperty("error", error)
        self.message.style().unpolish(self.message)
        self.message.style().polish(self.message)
