"""The main window: Auto, one tab per task, then Models & adapters, Train and Benchmark."""
from __future__ import annotations

import logging

from PySide6.QtCore import QByteArray, Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import QLabel, QMainWindow, QMessageBox, QTabWidget, QVBoxLayout, QWidget

from app import paths
from app.jsonfile import pop_notices
from app.session import choose_engine, choose_model, load_settings, save_settings
from app.tasks import load_tasks
from app.ui.engine_host import EngineHost, model_is_local
from app.ui.task_tab import TaskTab
from app.ui.task_tabs import make_tab

log = logging.getLogger(__name__)


def _short(ref: str) -> str:
    """A model ref as the status bar shows it: a folder by its name, a repo id as it is."""
    from pathlib import Path

    path = Path(str(ref)).expanduser()
    return path.name if path.is_absolute() or path.exists() else str(ref)


class MainWindow(QMainWindow):
    def __init__(self, model: str | None = None, engine: str | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("LoRA Desk")
        self.setObjectName("main")
        self.model_override, self.engine_override = model, engine
        self.settings = load_settings()
        self.host = EngineHost(self)

        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(6, 6, 6, 2)
        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.hide()
        lay.addWidget(self.banner)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        lay.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        self.task_tabs: dict[str, TaskTab] = {}
        from app.ui.auto_tab import AutoTab

        auto = AutoTab(self.host)  # first: the router picks the task
        auto.adapter_choice_changed.connect(lambda t=auto: self._adapter_choice_changed(t))
        self.task_tabs["auto"] = auto
        self.tabs.addTab(auto, "Auto")
        for task in load_tasks().values():
            tab = make_tab(task, self.host)
            tab.adapter_choice_changed.connect(lambda t=tab: self._adapter_choice_changed(t))
            tab.find_adapter_requested.connect(lambda task: self.models_panel.find_on_hub(task))
            tab.train_requested.connect(self._train_requested)
            tab.session.panel.open_elsewhere.connect(self._open_chat)  # a search hit of another task
            self.task_tabs[task.name] = tab
            self.tabs.addTab(tab, task.label)

        from app.ui.bench_panel import BenchPanel
        from app.ui.models_panel import ModelsPanel
        from app.ui.train_panel import TrainPanel

        self.models_panel = ModelsPanel(self.host, self)
        self.train_panel = TrainPanel(self.host, self)
        self.bench_panel = BenchPanel(self.host, self)
        self.tabs.addTab(self.models_panel, "Models && adapters")
        self.tabs.addTab(self.train_panel, "Train")
        self.tabs.addTab(self.bench_panel, "Benchmark")
        self.models_panel.load_requested.connect(self._user_load)
        self.train_panel.adapter_trained.connect(self._adapter_trained)
        self.models_panel.adapter_added.connect(self._adapter_trained)  # from the Hub: loaded the same way

        self.model_status = QLabel("no model")
        self.statusBar().addPermanentWidget(self.model_status)
        from app.ui.serve_action import ServeController

        self.serve = ServeController(self, self.host)  # File > Serve on localhost, address + count
        self.statusBar().addPermanentWidget(self.serve.label)
        # llama.cpp's merged copy of the active adapter (built in the background): shown while it
        # is built or kept, read every 2 s (merge_status takes no lock, so the GUI never waits).
        self.merge_status = QLabel("")
        self.merge_status.hide()
        self.statusBar().addPermanentWidget(self.merge_status)
        self._merge_timer = QTimer(self, interval=2000, timeout=self._refresh_merge)
        self._merge_timer.start()
        self._build_menus()

        self.host.model_loading.connect(self._model_loading)
        self.host.model_loaded.connect(self._model_loaded)
        self.host.model_failed.connect(self._model_failed)
        self.host.adapters_changed.connect(self._refresh_status)
        self.host.active_changed.connect(lambda _name: self._refresh_status())
        self.host.error.connect(self.show_error)
        self.tabs.currentChanged.connect(self._tab_changed)
        self._restore()

    # -- start-up ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load the last (or default) model if it is on this machine; else offer to get it."""
        kind = choose_engine(self.engine_override)
        ref = choose_model(self.model_override, kind)
        self.models_panel.set_engine(kind)
        if model_is_local(ref):
            self.load_model(ref, kind)
        else:
            self.tabs.setCurrentWidget(self.models_panel)
            self.models_panel.offer_download(ref, kind)

    def _user_load(self, ref: str, kind: str) -> None:
        """A model chosen in the panel: its engine becomes the app's setting (the CLI follows it too)."""
        self.settings["engine"] = kind
        self.load_model(ref, kind)

    def load_model(self, ref: str, kind: str) -> None:
        for tab in self.task_tabs.values():
            tab.stop()
        self.host.load(ref, kind)

    # -- engine events ------------------------------------------------------------------------
    # The status bar has one message about the model: the permanent label on its right. (A
    # temporary message beside it drew a second long "Loading …" over the first.)
    def _model_loading(self, ref: str) -> None:
        self.show_error("")
        self.model_status.setText(f"Loading {_short(ref)}…")
        self.model_status.setToolTip(str(ref))

    def _model_loaded(self, info) -> None:
        self.model_status.setToolTip(f"{info.path}\n{self.host.engine.scheduling()}")
        self.settings[f"model.{self.host.kind}"] = str(info.ref)
        self._persist_settings()
        problems = self.host.problems
        if problems:
            log.info("tasks without adapter: %s", problems)
        # A missing adapter is normal before training; one that failed to load is an error to show.
        broken = {t: why for t, why in problems.items() if not why.startswith("no adapter for")}
        messages = [f"The {t} adapter could not be loaded, so the {t} tab answers with the base model: {why}"
                    for t, why in broken.items()]
        messages += [f"Note: {a.warning}" for a in self.host.engine.adapters.values() if a.warning]
        messages += pop_notices()  # a damaged registry or settings file that was recovered: said once
        if messages:
            self.show_error("\n".join(messages))
        self._tab_changed(self.tabs.currentIndex())
        self._refresh_status()

    def _model_failed(self, message: str) -> None:
        self.model_status.setText(self.host.model_label())  # the previous model, when it stayed
        self.model_status.setToolTip("")
        self.show_error(f"Could not load the model: {message}")
        self.tabs.setCurrentWidget(self.models_panel)
        self.models_panel.show_message(message, error=True)

    def _refresh_status(self) -> None:
        if not self.host.loading:  # else it says "Loading …" until the load ends
            self.model_status.setText(self.host.model_label())
        for tab in self.task_tabs.values():
            if not tab.busy:
                tab.update_status()

    def _refresh_merge(self) -> None:
        engine = self.host.engine
        status = getattr(engine, "merge_status", None)
        text = status() if status is not None and engine.model_info is not None else ""
        shown = text.startswith(("merged copy of", "building", "ready", "dropped", "failed"))
        self.merge_status.setText(text if shown else "")
        self.merge_status.setToolTip(text)
        self.merge_status.setVisible(shown)

    def show_error(self, message: str) -> None:
        """A message in the window (never a modal box: work can go on around it)."""
        self.banner.setText(message)
        self.banner.setVisible(bool(message))
        if message:
            log.error("%s", message)

    # -- tabs ----------------------------------------------------------------------------------
    def current_task_tab(self) -> TaskTab | None:
        w = self.tabs.currentWidget()
        return w if isinstance(w, TaskTab) else None

    def _tab_changed(self, _index: int) -> None:
        tab = self.current_task_tab()
        # An answer never continues under another tab's adapter: one that runs under the active
        # adapter is cancelled first (the host queues the switch after it, on the engine thread);
        # where answers run side by side, each under its own adapter set, they go on.
        for other in self.task_tabs.values():
            if other is not tab and other.busy and not self.host.side_by_side:
                other.stop()
        if tab is not None and self.host.engine is not None:
            self.host.activate(tab.wanted_adapter())

    def _adapter_choice_changed(self, tab: TaskTab) -> None:
        tab.update_status()
        if tab is self.current_task_tab() and not tab.busy:
            self.host.activate(tab.wanted_adapter())

    def _open_chat(self, task: str, chat_id: int) -> None:
        tab = self.task_tabs.get(task)
        if tab is not None and tab.session is not None:
            self.tabs.setCurrentWidget(tab)
            tab.session.open(chat_id)

    def _train_requested(self, task: str) -> None:
        self.train_panel.task_combo.setCurrentIndex(max(0, self.train_panel.task_combo.findData(task)))
        self.tabs.setCurrentWidget(self.train_panel)

    def _adapter_trained(self, task: str, folder: str) -> None:
        """A finished training run: load its adapter so the task's tab uses it right away."""
        w = self.host.add_adapter(task, folder)
        w.finished.connect(lambda: self._tab_changed(self.tabs.currentIndex()))
        self.models_panel.refresh()

    # -- menus --------------------------------------------------------------------------------
    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        act = QAction("Models && adapters…", self)
        act.triggered.connect(lambda: self.tabs.setCurrentWidget(self.models_panel))
        file_menu.addAction(act)
        file_menu.addAction(self.serve.action)
        quit_act = QAction("Quit", self)
        quit_act.setShortcut(QKeySequence.StandardKey.Quit)
        quit_act.triggered.connect(self.close)
        file_menu.addAction(quit_act)

        help_menu = self.menuBar().addMenu("&Help")
        log_act = QAction("Open log file", self)
        log_act.triggered.connect(lambda: self._open(paths.log_dir() / "loradesk.log"))
        help_menu.addAction(log_act)
        folder_act = QAction("Open log folder", self)
        folder_act.triggered.connect(lambda: self._open(paths.log_dir()))
        help_menu.addAction(folder_act)
        data_act = QAction("Open data folder", self)
        data_act.triggered.connect(lambda: self._open(paths.home()))
        help_menu.addAction(data_act)
        about = QAction("About LoRA Desk", self)
        about.triggered.connect(self._about)
        help_menu.addAction(about)

    def _open(self, path) -> None:
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(path))):
            self.show_error(f"Could not open {path}; open it with a file manager.")

    def _about(self) -> None:
        QMessageBox.about(self, "About LoRA Desk",
                          "LoRA Desk: one small language model with one hot-swapped LoRA adapter per task.\n\n"
                          f"Log file: {paths.log_dir() / 'loradesk.log'}\nData: {paths.home()}")

    # -- settings --------------------------------------------------------------------------------
    def _restore(self) -> None:
        ui = self.settings.get("ui", {})
        geometry = ui.get("geometry")
        if geometry:
            self.restoreGeometry(QByteArray.fromBase64(geometry.encode()))
        else:
            self.resize(1000, 720)
        for name, tab in self.task_tabs.items():
            tab.restore(ui.get("tabs", {}).get(name, {}))
        self.train_panel.restore(ui.get("train", {}))
        self.bench_panel.restore(ui.get("bench", {}))
        last = ui.get("last_tab")
        for i in range(self.tabs.count()):
            if self.tabs.tabText(i).replace("&&", "&") == last:
                self.tabs.setCurrentIndex(i)

    def _persist_settings(self) -> None:
        # Re-read first: the CLI (or a panel) may have changed other keys meanwhile.
        merged = {**load_settings(), **{k: v for k, v in self.settings.items() if k != "ui"}}
        merged["ui"] = {
            "geometry": bytes(self.saveGeometry().toBase64()).decode(),
            "last_tab": self.tabs.tabText(self.tabs.currentIndex()).replace("&&", "&"),
            "tabs": {name: tab.state() for name, tab in self.task_tabs.items()},
            "train": self.train_panel.state(),
            "bench": self.bench_panel.state(),
        }
        self.settings = merged
        try:
            save_settings(merged)
        except OSError as e:
            log.warning("could not save settings: %s", e)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        self._persist_settings()
        for tab in self.task_tabs.values():
            tab.stop()
        self.train_panel.cancel()
        self.bench_panel.cancel()
        self.models_panel.cancel()
        self.serve.stop(wait=True)  # its queued requests are cancelled before the engine drains
        self.host.wait_idle(3000)  # a cancelled answer ends within a token
        super().closeEvent(event)
