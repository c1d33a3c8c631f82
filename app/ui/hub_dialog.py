"""Find on the Hub…: search Hugging Face Hub adapters that fit the loaded model, ranked for a task,
and get one (download with progress and cancel, checked, registered, then loaded by its tab).

The search and the download run in worker threads (app/ui/workers.py) and report through signals;
app/hub_adapters.py does the work, so the app and `loradesk adapters search|get` behave the same.
"""
from __future__ import annotations

import threading

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QDialog, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton,
    QTableWidget, QTableWidgetItem, QVBoxLayout,
)

from app.tasks import load_tasks
from app.ui.engine_host import EngineHost
from app.format import human_bytes, progress_text
from app.ui.workers import Worker, create_worker

COLUMNS = ("Repo", "Downloads", "Likes", "Size", "Rank", "License", "Matches", "Datasets")


class HubDialog(QDialog):
    adapter_added = Signal(str, str)  # task, adapter folder (registered in the store)
    download_progress = Signal(object)  # app.hub.DownloadProgress, from the download thread

    def __init__(self, host: EngineHost, task: str | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Find adapters on the Hugging Face Hub")
        self.setObjectName("hub-dialog")
        self.resize(900, 460)
        self.host = host
        self.results = []  # hub_adapters.HubAdapter, in table order
        self.search_worker: Worker | None = None
        self.get_worker: Worker | None = None

        v = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("Task:"))
        self.task_combo = QComboBox()
        for t in load_tasks().values():
            self.task_combo.addItem(t.label, t.name)
        if task is not None:
            self.task_combo.setCurrentIndex(max(0, self.task_combo.findData(task)))
        row.addWidget(self.task_combo)
        row.addWidget(QLabel("Name contains:"))
        self.query = QLineEdit()
        self.query.setPlaceholderText("optional, e.g. gsm8k")
        self.query.returnPressed.connect(self.search)
        row.addWidget(self.query, 1)
        row.addWidget(QLabel("Base model:"))
        self.base = QLineEdit()
        self.base.setMinimumWidth(240)
        self.base.setToolTip("The hub repo of the loaded model's original weights; fill it in for a local folder "
                             "or GGUF file that does not name it")
        row.addWidget(self.base)
        self.search_btn = QPushButton("Search")
        self.search_btn.setObjectName("primary")
        self.search_btn.clicked.connect(self.search)
        row.addWidget(self.search_btn)
        v.addLayout(row)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("hub-results")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemDoubleClicked.connect(lambda _item: self.get_selected())
        v.addWidget(self.table, 1)

        bottom = QHBoxLayout()
        self.get_btn = QPushButton("Get")
        self.get_btn.setToolTip("Download the selected adapter, check it and use it for the task")
        self.get_btn.clicked.connect(self.get_selected)
        self.progress = QProgressBar()
        self.progress.hide()
        self.progress_label = QLabel()
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        close_btn = QPushButton("Close")
        close_btn.clicked.connect(self.close)
        for w in (self.get_btn, self.progress):
            bottom.addWidget(w)
        bottom.addWidget(self.progress_label, 1)
        bottom.addWidget(self.cancel_btn)
        bottom.addWidget(close_btn)
        v.addLayout(bottom)
        self.message = QLabel()
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        v.addWidget(self.message)

        self.download_progress.connect(self._on_progress)
        self._fill_base()

    # -- the model --------------------------------------------------------------------------------
    def model_ref(self) -> str | None:
        info = self.host.engine.model_info if self.host.engine is not None else None
        return str(info.ref) if info is not None else None

    def _fill_base(self) -> None:
        from app.hub_adapters import base_repo

        try:
            self.base.setText(base_repo(self.model_ref()))
        except ValueError:
            self.base.setPlaceholderText("owner/name of the original model")
            self.say("The loaded model does not name its Hub repo: type the original model's repo under Base model.")

    def task(self) -> str:
        return self.task_combo.currentData()

    # -- search -----------------------------------------------------------------------------------
    def search(self) -> Worker | None:
        from app.hub_adapters import search

        if self.busy:
            return None
        base = self.base.text().strip() or None
        cancel = threading.Event()
        self.say(f"Searching the Hub for {self.task_combo.currentText()} adapters for {base or 'the model'}…")
        self._set_busy(True)
        self.search_worker = create_worker(
            search, self.task(), self.model_ref(), query=self.query.text().strip() or None, base=base, cancel=cancel,
            abort_event=cancel, _connect={"returned": self._found, "errored": self._failed,
                                          "finished": lambda: self._set_busy(False)})
        return self.search_worker

    def _found(self, r) -> None:
        self.results = list(r.adapters)
        self.table.setRowCount(len(self.results))
        for i, a in enumerate(self.results):
            cells = (a.repo, str(a.downloads), str(a.likes), human_bytes(a.size), str(a.rank), a.license or "—",
                     ", ".join(a.matches) or "—", ", ".join(a.datasets) or "—")
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(text if c else f"{a.repo}@{a.sha[:12]} · {a.format.upper()} · targets "
                                f"{', '.join(a.targets)}")
                self.table.setItem(i, c, item)
        if self.results:
            self.table.selectRow(0)
        unfit = f" {len(r.skipped)} more do not fit this model." if r.skipped else ""
        self.say(f"{len(self.results)} adapters fit {r.base}, best first for {self.task_combo.currentText()}.{unfit}"
                 if self.results else f"No Hub adapter fits {r.base}.{unfit} Train one in the Train tab.")

    # -- get --------------------------------------------------------------------------------------
    def selected(self):
        rows = self.table.selectionModel().selectedRows()
        return self.results[rows[0].row()] if rows else None

    def get_selected(self) -> Worker | None:
        a = self.selected()
        if a is None:
            self.say("Search, then select an adapter to get.")
            return None
        return self.get(f"{a.repo}@{a.sha}" if a.sha else a.repo)

    def get(self, spec: str) -> Worker | None:
        from app.hub_adapters import get

        if self.busy:
            return None
        task, base = self.task(), self.base.text().strip() or None
        cancel = threading.Event()
        self._set_busy(True)
        self.progress.setRange(0, 0)
        self.progress.show()
        self.progress_label.setText("connecting…")
        self.say(f"Getting {spec.split('@')[0]} for {task}…")
        self.get_worker = Worker(get, spec, task, self.model_ref(), base=base, progress=self.download_progress.emit,
                                 cancel=cancel, abort_event=cancel)
        self.get_worker.returned.connect(lambda r: self._got(task, r))
        self.get_worker.errored.connect(self._failed)
        self.get_worker.finished.connect(self._get_ended)
        return self.get_worker.start()

    def _on_progress(self, p) -> None:
        if p.total > 0:
            self.progress.setRange(0, max(1, p.total // 1024))
            self.progress.setValue(p.done // 1024)
        self.progress_label.setText(progress_text(p))

    def _got(self, task: str, r) -> None:
        warn = "".join(f" Note: {w}." for w in r.warnings)
        self.say(f"Got {r.repo}@{r.revision[:12]}: registered as {r.entry.name!r} for {task}; its tab uses it "
                 f"now.{warn}")
        self.adapter_added.emit(task, str(r.entry.path))

    def _get_ended(self) -> None:
        self._set_busy(False)
        self.progress.hide()
        self.progress_label.setText("")

    # -- common -----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return any(w is not None and not w.done.is_set() for w in (self.search_worker, self.get_worker))

    def _set_busy(self, busy: bool) -> None:
        for w in (self.search_btn, self.get_btn):
            w.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    def cancel(self) -> None:
        for w in (self.search_worker, self.get_worker):
            if w is not None and not w.done.is_set():
                w.quit()

    def _failed(self, e: Exception) -> None:
        from app.hub import Cancelled

        self.say(str(e) if isinstance(e, Cancelled) else f"Failed: {e}", error=not isinstance(e, Cancelled))

    def say(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setProperty("error", error)
        self.message.style().unpolish(self.message)
        self.message.style().polish(self.message)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.cancel()
        super().closeEvent(event)
