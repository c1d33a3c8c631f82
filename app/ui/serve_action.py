"""File > "Serve on localhost": the OpenAI-compatible API inside the app, over the app's engine.

On an engine that answers one at a time, requests run as jobs on the engine host's one serial
thread, after and before the app's own jobs, so an API answer and a tab's answer never interleave.
On one that batches (llama.cpp), they run beside the tabs' answers in the engine's scheduler, each
under its own adapter set. Neither sees the other's adapter. The status bar shows the address, a
running request count and the engine's batch (polled: the counts live on other threads, and
reading a few ints needs no signal).
"""
from __future__ import annotations

import logging
import threading

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QLabel

log = logging.getLogger(__name__)

DEFAULT_PORT = 8000


class ServeController(QObject):
    def __init__(self, window, host, port: int | None = None):
        super().__init__(window)
        self.window, self.host = window, host
        self.port = port if port is not None else int(window.settings.get("serve_port", DEFAULT_PORT))
        self.server = None
        self.action = QAction("Serve on localhost", window)
        self.action.setCheckable(True)
        self.action.setToolTip("An OpenAI-compatible API on 127.0.0.1 for editors, chat UIs and scripts")
        self.action.toggled.connect(self._toggled)
        self.label = QLabel()
        self.label.setObjectName("serveStatus")
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # copy the address
        self.label.hide()
        self.timer = QTimer(self)
        self.timer.setInterval(500)
        self.timer.timeout.connect(self._update)

    @property
    def url(self) -> str | None:
        return self.server.url + "/v1" if self.server else None

    def _toggled(self, on: bool) -> None:
        self.start() if on else self.stop()

    def start(self) -> bool:
        if self.server is not None:
            return True
        try:
            from app.serve.api import Backend, ServeConfig, create_app
            from app.serve.runner import BackgroundServer

            host = self.host
            backend = Backend(engine=lambda: host.engine, executor=lambda fn: host.pool.start(fn))
            self.server = BackgroundServer(create_app(backend, ServeConfig(port=self.port)))
        except (ImportError, ValueError) as e:  # no fastapi/uvicorn, port in use
            self.window.show_error(f"Could not serve on localhost: {e}")
            self.action.blockSignals(True)
            self.action.setChecked(False)
            self.action.blockSignals(False)
            return False
        log.info("serving the OpenAI-compatible API at %s", self.url)
        self.label.show()
        self._update()
        self.timer.start()
        return True

    def stop(self, wait: bool = False) -> None:
        """Stop serving; open streams are cancelled at their next token. `wait`: block until the
        server has shut down (on quit), else it ends on a thread of its own."""
        server, self.server = self.server, None
        self.timer.stop()
        self.label.hide()
        if self.action.isChecked():
            self.action.blockSignals(True)
            self.action.setChecked(False)
            self.action.blockSignals(False)
        if server is not None:
            if wait:
                server.stop()
            else:
                threading.Thread(target=server.stop, name="loradesk-serve-stop", daemon=True).start()

    def _update(self) -> None:
        if self.server is None:
            return
        q = self.server.app.state.queue
        running = f", {q.pending} in progress" if q.pending else ""
        engine = self.host.engine
        batch = engine.batch_status() if engine is not None and engine.model_info is not None else ""
        self.label.setText(f"API {self.url} · {q.served} request{'s' if q.served != 1 else ''}{running}"
                           + (f" · {batch}" if batch else ""))
