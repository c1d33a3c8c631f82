"""Models & adapters: choose, download or import the base model; the task adapters below it
(app/ui/adapters_box.py)."""
from __future__ import annotations

import logging
import threading

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox, QFileDialog, QGroupBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout,
    QWidget,
)

from app.ui.adapters_box import AdaptersBox
from app.ui.engine_host import EngineHost
from app.format import progress_text
from app.ui.workers import Worker, create_worker

log = logging.getLogger(__name__)


class ModelsPanel(QWidget):
    load_requested = Signal(str, str)  # model ref, engine kind
    download_progress = Signal(object)  # app.hub.DownloadProgress, from the download thread; queued to the GUI
    import_note = Signal(str)  # GGUF import progress lines, from the import thread
    adapter_added = Signal(str, str)  # task, folder: an adapter got from the Hub, to load into the engine

    def __init__(self, host: EngineHost, parent=None):
        super().__init__(parent)
        self.host = host
        self.download_worker: Worker | None = None
        self._offer: tuple[str, str] | None = None

        layout = QVBoxLayout(self)
        # Messages sit right under the model controls (download offers, offline, adapter results).
        self.message = QLabel()
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self._model_box())
        layout.addWidget(self.message)
        self.adapters = AdaptersBox(host, self.show_message)
        layout.addWidget(self.adapters, 1)
        hub_row = QHBoxLayout()
        self.hub_btn = QPushButton("Find on the Hub…")
        self.hub_btn.setObjectName("find-on-hub")
        self.hub_btn.setToolTip("Search Hugging Face Hub adapters that fit the loaded model, ranked for a task")
        self.hub_btn.clicked.connect(lambda: self.find_on_hub(self.adapters.selected_task()))
        hub_row.addWidget(self.hub_btn)
        hub_row.addStretch(1)
        layout.addLayout(hub_row)
        self.hub_dialog = None

        self.download_progress.connect(self._on_progress)
        self.import_note.connect(lambda text: self.show_message(text.strip()))
        host.model_loaded.connect(lambda _i: self._model_loaded())
        # A refused load keeps the old model; a failed one after the old was dropped leaves none.
        host.model_unloaded.connect(self._show_current)
        host.model_failed.connect(lambda _m: self._show_current())
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
        self.current_label = QLabel("Loaded: none")
        self.current_label.setObjectName("current-model")
        self.current_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.current_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        row2.addWidget(self.current_label, 1)
        v.addLayout(row2)

        dl = QHBoxLayout()
        self.download_btn = QPushButton("Download")
        self.download_btn.clicked.connect(self._download_offered)
        self.download_btn.hide()
        self.progress = QProgressBar()
        self.progress.setObjectName("download-progress")
        self.progress.hide()
        self.progress_label = QLabel()
        self.progress_label.setMinimumWidth(320)
        self.progress_label.hide()
        self.cancel_btn = QPushButton("Cancel download")
        self.cancel_btn.clicked.connect(self.cancel)
        self.cancel_btn.hide()
        self.download_btn.setObjectName("primary")
        self.download_btn.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Fixed)
        dl.addWidget(self.download_btn)
        dl.addWidget(self.progress, 1)
        dl.addWidget(self.progress_label)
        dl.addWidget(self.cancel_btn)
        dl.addStretch(0)  # keeps the Download button its own size while the bar is hidden
        v.addLayout(dl)
        self._fill_models()
        return box

    # -- models -------------------------------------------------------------------------------
    def kind(self) -> str:
        return self.engine_combo.currentData()

    def set_engine(self, kind: str) -> None:
        i = self.engine_combo.findData(kind)
        if i >= 0:
            self.engine_combo.setCurrentIndex(i)

    def _fill_models(self) -> None:
        from app.model_choices import DEFAULT_INDEX, SUPPORTED
        from app.models import local_repo_folder, registered_models, shipped_tasks

        kind = self.kind()
        self.model_combo.clear()
        for i, m in enumerate(SUPPORTED):
            repo = m.repo_for(kind)
            here = (local_repo_folder(repo) / ".complete").exists()
            size = m.size_label(kind)
            label = f"{m.label}{' (default)' if i == DEFAULT_INDEX else ''} — {repo} · {size}"
            shipped = shipped_tasks(m)
            label += f" · adapters included: {', '.join(shipped)}" if shipped else ""
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
        from app.model_choices import SUPPORTED

        self.select_model(ref)
        size = next((f" ({m.size_label(kind)})" for m in SUPPORTED if ref == m.repo_for(kind)), "")
        self._offer = (ref, kind)
        self.download_btn.setText(f"Download {ref}{size}")
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
            return resolve_model(ref, engine=kind, cancel=cancel, progress=self.download_progress.emit)

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

    def _on_progress(self, p) -> None:
        if p.total > 0:
            # QProgressBar holds an int: count in KB so multi-GB files fit.
            self.progress.setRange(0, max(1, p.total // 1024))
            self.progress.setValue(p.done // 1024)
        self.progress_label.setText(progress_text(p))

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
        if not self.download_btn.text().startswith(f"Download {ref}"):  # keep the offer's size note
            self.download_btn.setText(f"Download {ref}")
        self.download_btn.show()

    def _download_ended(self) -> None:
        for w in (self.progress, self.progress_label, self.cancel_btn):
            w.hide()
        if self.download_worker is not None and self.download_worker.abort_requested:
            self.show_message("Download cancelled; files already downloaded are kept and the next download "
                              "fetches the rest.")

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
        self._show_current()
        self.show_message("")
        self.refresh()

    def _show_current(self) -> None:
        self.current_label.setText(f"Loaded: {self.host.model_label() if self.host.engine is not None else 'none'}")

    def find_on_hub(self, task: str | None = None):
        """Open the Hub search (app/ui/hub_dialog.py); an adapter it gets is loaded like a trained one."""
        from app.ui.hub_dialog import HubDialog

        if self.hub_dialog is not None and self.hub_dialog.busy:
            self.hub_dialog.raise_()
            return self.hub_dialog
        self.hub_dialog = HubDialog(self.host, task, self)
        self.hub_dialog.adapter_added.connect(self.adapter_added)
        self.hub_dialog.adapter_added.connect(lambda *_a: self.refresh())
        self.hub_dialog.show()
        return self.hub_dialog

    # -- adapters (the box does the work; these keep one place to call) -------------------------------
    def refresh(self) -> None:
        self.adapters.refresh()

    def add_adapter(self, task: str, folder: str) -> Worker:
        return self.adapters.add_adapter(task, folder)

    def export_adapter(self, task: str, out: str, fmt: str = "peft") -> Worker:
        return self.adapters.export_adapter(task, out, fmt)

    def remove_adapter(self, task: str, name: str) -> Worker:
        return self.adapters.remove_adapter(task, name)

    @property
    def table(self):
        return self.adapters.table

    def show_message(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setProperty("error", error)
        self.message.style().unpolish(self.message)
        self.message.style().polish(self.message)
