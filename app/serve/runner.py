"""Run the API with uvicorn: in the foreground (`loradesk serve`) or on a background thread (the
app's "Serve on localhost", tests, `loradesk bench serve`)."""
from __future__ import annotations

import socket
import threading
import time

import uvicorn


class ServeError(ValueError):
    """The server cannot start (address in use, bad host); the message says what to do."""


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one). Bound here, before uvicorn starts,
    so an address in use is a clear error and the actual port is known at once."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise ServeError(f"cannot serve on {host!r}: {e}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror}); choose another port with --port") from None
    sock.listen(128)
    return sock


def _config(app, log_level: str) -> uvicorn.Config:
    # A cancelled answer ends within a token, so a short graceful shutdown is enough.
    return uvicorn.Config(app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=3,
                          access_log=log_level == "info")


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class BackgroundServer:
    """uvicorn on a daemon thread; `stop()` ends it (open streams are cancelled)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.port = self.sock.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(_config(app, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="loradesk-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            self.stop()
            raise ServeError(f"the server did not start on {self.url}")

    def stop(self, timeout: float = 10) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def run_foreground(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on a bound socket until Ctrl-C (uvicorn handles the signal and shuts down gracefully)."""
    uvicorn.Server(_config(app, log_level)).run(sockets=[sock])
