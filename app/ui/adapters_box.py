"""The task adapters table: base model, rank, size, source, training metadata and whether the engine
has it loaded; add (validated, copied into the store, loaded), export (PEFT or MLX) and remove."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QFileDialog, QGroupBox, QHBoxLayout, QHeaderView, QLabel, QPushButton,
    QTableWidget, QTableWidgetItem, QVBoxLayout,
)

from app.ui.engine_host import EngineHost
from app.format import training_summary
from app.ui.workers import Worker, create_worker

ADAPTER_COLUMNS = ("Task", "Adapter", "Base model", "Rank", "Size", "Source", "Training", "In use")


class AdaptersBox(QGroupBox):
    def __init__(self, host: EngineHost, say, parent=None):
        """`say(text, error=False)` shows a message in the panel."""
        super().__init__("Task adapters", parent)
        self.host, self.say = host, say
        self.job: Worker | None = None  # the last add/export/remove job
        self.rows: list[dict] = []
        v = QVBoxLayout(self)
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
        row.addWidget(QLabel("export as"))
        self.export_format = QComboBox()
        self.export_format.addItem("PEFT (vLLM, LoRAX)", "peft")
        self.export_format.addItem("MLX (mlx-lm)", "mlx")
        row.addWidget(self.export_format)
        row.addStretch(1)
        v.addLayout(row)

    def refresh(self) -> None:
        from app.store import adapter_rows

        try:
            rows = adapter_rows()
        except Exception as e:  # noqa: BLE001 - a damaged store must not break the window
            self.say(f"Could not read the adapter store: {e}", error=True)
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
            source = row["source"]
            if not row["name"] and source.startswith("none (loradesk train"):
                source = "none yet: train one in the Train tab, or Add… a folder"
            cells = (task, row["name"] or "—", row["base_model"], str(row["rank"]), row["size"],
                     source, training_summary(row.get("metadata")), in_use)
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
            self.say("Select the task's row first, then Add… an adapter folder for it.")
            return
        folder = QFileDialog.getExistingDirectory(self, f"Choose an adapter folder for {task}")
        if folder:
            self.add_adapter(task, folder)

    def add_adapter(self, task: str, folder: str) -> Worker:
        """Copy an adapter folder into the store (validated first), then load it into the engine."""
        from app import store

        self.say(f"Adding {folder} for {task}…")

        def added(entry):
            self.say(f"Found a {entry.format.upper()} adapter; registered as {entry.name!r} for {task}.")
            if self.host.engine is not None:
                self.host.add_adapter(task, entry.path)
            self.refresh()

        self.job = create_worker(store.add, task, folder, _connect={
            "returned": added,
            "errored": lambda e: self.say(f"Could not add the adapter: {e}", error=True),
        })
        return self.job

    def _export_clicked(self) -> None:
        task = self.selected_task()
        if task is None:
            self.say("Select the task's row first.")
            return
        out = QFileDialog.getExistingDirectory(self, f"Export the {task} adapter into…")
        if out:
            fmt = self.export_format.currentData()
            self.export_adapter(task, str(Path(out) / f"{task}-adapter-{fmt}"), fmt)

    def export_adapter(self, task: str, out: str, fmt: str = "peft") -> Worker:
        from app import store

        self.job = create_worker(store.export, task, out, fmt, _connect={
            "returned": lambda text: self.say(text),
            "errored": lambda e: self.say(f"Could not export the {task} adapter: {e}", error=True),
        })
        return self.job

    def _remove_clicked(self) -> None:
        task = self.selected_task()
        row = next((r for r in self.rows if r["task"] == task), None)
        if row is None or not row["name"]:
            self.say("Select a task row that has an adapter first.")
            return
        self.remove_adapter(task, row["name"])

    def remove_adapter(self, task: str, name: str) -> Worker:
        from app import store

        def job():
            store.remove(task, name)
            return store.adapter_folder(task)  # the task's next adapter, if it has one

        def removed(next_folder):
            self.say(f"Removed adapter {name!r} of {task}.")
            self.host.remove_adapter(task)
            if next_folder is not None and self.host.engine is not None:
                self.host.add_adapter(task, next_folder)
            self.refresh()

        self.job = create_worker(job, _connect={
            "returned": removed,
            "errored": lambda e: self.say(f"Could not remove the adapter: {e}", error=True),
        })
        return self.job

