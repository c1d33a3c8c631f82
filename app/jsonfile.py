"""A small JSON file shared by processes: the adapter and model registries, the settings.

The CLI, the app and its training/benchmark children all write these files, so each change is a
read-modify-write under a file lock, written to a unique temp file and renamed into place (a reader
sees the old file or the new one, never half of one). A damaged file is never deleted: it is moved
aside as `<name>.damaged-<time>`, rebuilt from what is on disk where the owner can (`rebuild`), and
a one-time notice says so (logged, and shown by the CLI and the app through `pop_notices`).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from app.errors import EngineError

log = logging.getLogger(__name__)
LOCK_TIMEOUT = 30.0  # seconds; writers hold the lock for milliseconds

class SaveError(EngineError, OSError):
    """The file could not be written (e.g. the disk is full); the old content is unchanged.
    An OSError too, so callers that already guard their writes with `except OSError` keep working."""


_notices: list[str] = []
_notices_lock = threading.Lock()


def pop_notices() -> list[str]:
    """Messages about recovered files not yet shown to the user (each is returned once)."""
    with _notices_lock:
        out = list(_notices)
        _notices.clear()
    return out


def _notify(message: str) -> None:
    log.warning(message)
    with _notices_lock:
        _notices.append(message)


class JsonFile:
    """One JSON object on disk. `read()` for a snapshot, `with f.update() as data:` to change it."""

    def __init__(self, path: Path, what: str, rebuild: Callable[[], dict] | None = None):
        self.path = Path(path)
        self.what = what  # for messages: "the adapter registry"
        self.rebuild = rebuild  # recreates the content from what is on disk, when the file is damaged

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT)
        try:
            with lock:
                yield
        except Timeout:
            raise EngineError(f"{self.what} ({self.path}) is locked by another LoRA Desk process for over "
                              f"{LOCK_TIMEOUT:.0f}s; close it or delete {lock.lock_file} if none is running") from None

    def _parse(self) -> dict | None:
        """The file's content; {} when absent; None when damaged."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def _recover(self) -> dict:
        """Under the lock: set the damaged file aside, rebuild and write its content."""
        data = self._parse()  # another process may have recovered it meanwhile
        if data is not None:
            return data
        kept = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(self.path, kept)
        data = self.rebuild() if self.rebuild else {}
        self._write(data)
        how = "rebuilt from the folders on disk" if self.rebuild else "reset to defaults"
        _notify(f"{self.what} ({self.path}) was damaged and has been {how}; the damaged file is kept as {kept.name}")
        return data

    def read(self) -> dict:
        data = self._parse()
        if data is None:
            with self._locked():
                data = self._recover()
        return data

    @contextmanager
    def update(self) -> Iterator[dict]:
        """Read-modify-write under the lock; the change is written when the block ends without error."""
        with self._locked():
            data = self._parse()
            if data is None:
                data = self._recover()
            yield data
            self._write(data)

    def write(self, data: dict) -> None:
        """Replace the whole content (under the lock)."""
        with self._locked():
            self._write(data)

    def _write(self, data: dict) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            why = "the disk is full" if e.errno == errno.ENOSPC else str(e)
            raise SaveError(f"could not save {self.what} ({self.path}): {why}; it is unchanged. "
                              "Free some space and try again.") from None


def read_jsonl(path: str | Path, need=("prompt",)) -> list[dict]:
    """JSON objects, one a line ('-': stdin); a bad line is an error naming its number."""
    if str(path) == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror}") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
        missing = [k for k in need if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{i}: expected an object with a string {missing[0]!r}, got {line[:80]!r}")
        rows.append(row)
    return rows
