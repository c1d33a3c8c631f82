"""Downloads from the Hugging Face hub: the network edge (tests mock here, nowhere else).

Progress is reported in bytes as they arrive: `hf_hub_download` opens one progress bar per file from
the `tqdm_class` it is given (total = the file's size) and calls `update(len(chunk))` for every
chunk it writes (plain HTTP) or reconstructs (Xet). Our class forwards those counts to a
`DownloadProgress` callback and raises `Cancelled` once the cancel event is set, which stops a plain
HTTP transfer between chunks. Xet transfers report from hf_xet's own thread, which swallows that
exception, so a watcher aborts the Xet session instead (huggingface-hub's private abort_xet_session,
the one way 2.4 offers). huggingface-hub deletes the unfinished file (it no longer resumes partial
files across runs); complete files stay, so the next download fetches only what is missing.
"""
from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.std import tqdm

from app.errors import EngineError, ModelUnavailable

SPEED_WINDOW_S = 5.0  # speed is measured over the last few seconds, so the ETA follows the network


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class DownloadProgress:
    done: int  # bytes on disk so far: complete files plus the part of the current one
    total: int  # bytes of all files to fetch (from the hub's file list)
    speed: float  # bytes/s over the last SPEED_WINDOW_S seconds; 0.0 until two reports exist
    eta_s: float | None  # seconds left at that speed; None while the speed is unknown
    file: str = ""  # the file being fetched


ProgressFn = Callable[[DownloadProgress], None]


def offline_message(repo_id: str, folder: Path) -> str:
    return (
        f"cannot download {repo_id}: no connection to the Hugging Face hub (offline). "
        f"Copy the model folder to this machine and pass its path with --model /path/to/folder "
        f"(or choose 'Local folder…' in the app), or put the files in {folder}."
    )


def cancelled_message(repo_id: str) -> str:
    return f"download of {repo_id} cancelled; files already downloaded are kept and the next download fetches the rest"


class _Transfer:
    """Byte counts of one snapshot download, turned into DownloadProgress reports."""

    def __init__(self, repo_id: str, total: int, progress: ProgressFn | None, cancel):
        self.repo_id, self.total, self.progress, self.cancel = repo_id, total, progress, cancel
        self.finished = 0  # bytes of files complete
        self.current = 0  # bytes of the file in flight
        self.file = ""
        self.received = 0  # bytes that came over the network in this run (speed counts only these)
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(cancelled_message(self.repo_id))

    def start_file(self, name: str) -> None:
        self.file, self.current = name, 0

    def add(self, n: int) -> None:
        """`n` more bytes of the current file (negative when a server ignored a resume range)."""
        self.current += n
        self.received += n
        self.check_cancel()
        self.report()

    def end_file(self, size: int) -> None:
        self.finished += size  # the listed size: also right for files skipped as already complete
        self.current = 0
        self.report()

    def report(self) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        self.samples.append((now, self.received))
        while len(self.samples) > 2 and now - self.samples[1][0] > SPEED_WINDOW_S:
            self.samples.popleft()
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        speed = (b1 - b0) / (t1 - t0) if t1 > t0 and b1 > b0 else 0.0
        done = min(self.finished + max(self.current, 0), self.total) if self.total else self.finished + self.current
        eta = (self.total - done) / speed if speed > 0 and self.total else None
        self.progress(DownloadProgress(done, self.total, speed, eta, self.file))


def _bar_class(transfer: _Transfer) -> type[tqdm]:
    """A tqdm class for hf_hub_download whose bars feed `transfer` instead of drawing."""

    class _Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True  # nothing is drawn; update() below does the counting
            super().__init__(*args, **kwargs)
            if kwargs.get("initial"):
                transfer.add(int(kwargs["initial"]))  # bytes a resumed transfer already has

        def update(self, n=1):
            transfer.add(int(n or 0))

        def update_transfer(self, n=1):
            pass  # network bytes of Xet transfers; update() already counts the bytes written

    return _Bar


def _abort_xet_on_cancel(cancel, finished: threading.Event) -> None:
    """Stop a Xet transfer when `cancel` is set (see the module note); plain HTTP needs no help."""
    while not finished.is_set():
        if cancel.wait(0.25):
            try:
                from huggingface_hub.utils._xet import abort_xet_session
            except ImportError:
                return
            abort_xet_session()  # process-wide, but LoRA Desk runs one model download at a time
            return


def snapshot(repo_id: str, folder: Path, progress: ProgressFn | None = None, cancel=None,
             allow_patterns=None, revision: str | None = None) -> Path:
    """Download `repo_id` (at `revision`: a branch, tag or commit; default main) into `folder`, calling
    `progress(DownloadProgress)` as bytes arrive. Every file comes from the one commit the revision
    resolves to, so a push during the download cannot mix two versions.

    Files already complete are skipped; a cancel (the `cancel` Event set) raises Cancelled within one
    chunk. Small files go first, so a cancelled download keeps the config and tokenizer.
    """
    import fnmatch

    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelUnavailable(offline_message(repo_id, folder))
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise ModelUnavailable(f"{repo_id} has no revision {revision!r} on the Hugging Face hub") from None
    except RepositoryNotFoundError:
        raise ModelUnavailable(f"{repo_id} does not exist on the Hugging Face hub (or is private)") from None
    except GatedRepoError:
        raise ModelUnavailable(
            f"{repo_id} is gated: accept its licence on huggingface.co and log in with `hf auth login`"
        ) from None
    except Exception as e:  # connection errors come in many types
        raise ModelUnavailable(offline_message(repo_id, folder) + f" ({type(e).__name__})") from None
    files = sorted((s for s in info.siblings if allow_patterns is None
                    or any(fnmatch.fnmatch(s.rfilename, p) for p in allow_patterns)),
                   key=lambda s: (s.size or 0, s.rfilename))
    transfer = _Transfer(repo_id, sum(s.size or 0 for s in files), progress, cancel)
    # With no one listening (the CLI), huggingface-hub draws its own bars on stderr.
    bar = _bar_class(transfer) if progress is not None or cancel is not None else None
    folder.mkdir(parents=True, exist_ok=True)
    transfer.report()
    finished = threading.Event()
    if cancel is not None and hasattr(cancel, "wait"):
        threading.Thread(target=_abort_xet_on_cancel, args=(cancel, finished), daemon=True).start()
    try:
        for s in files:
            transfer.check_cancel()
            transfer.start_file(s.rfilename)
            try:
                hf_hub_download(repo_id, s.rfilename, revision=info.sha, local_dir=folder, tqdm_class=bar)
            except Cancelled:
                raise
            except LocalEntryNotFoundError:
                raise ModelUnavailable(offline_message(repo_id, folder)) from None
            except Exception as e:
                transfer.check_cancel()  # an aborted Xet transfer fails with hf_xet's own error
                raise ModelUnavailable(f"download of {repo_id}/{s.rfilename} failed: {e}") from None
            transfer.end_file(s.size if s.size is not None else max(transfer.current, 0))
    finally:
        finished.set()
    return folder


class HubUnavailable(EngineError):
    """The Hub cannot be reached (offline, no connection) or refused the request."""


# -- the network edge of the Hub commands (adapters search, get, push) ------------------------------------
def check_online(what: str) -> None:
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE") == "1" or constants.HF_HUB_OFFLINE:
        raise HubUnavailable(f"{what} needs the network, and HF_HUB_OFFLINE=1 is set; unset it and try again")


def network_error(what: str, e: Exception) -> EngineError:
    """One clear line for whatever huggingface-hub or httpx raised."""
    from huggingface_hub.errors import (
        GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError,
    )

    if isinstance(e, (EngineError, ValueError, Cancelled)):
        return e
    if isinstance(e, OfflineModeIsEnabled):
        return HubUnavailable(f"{what} needs the network, and huggingface-hub is in offline mode (HF_HUB_OFFLINE)")
    if isinstance(e, RevisionNotFoundError):
        return HubUnavailable(f"{what}: no such revision on the Hugging Face hub")
    if isinstance(e, GatedRepoError):
        return HubUnavailable(f"{what}: the repo is gated; accept its licence on huggingface.co and log in "
                              "(hf auth login)")
    if isinstance(e, RepositoryNotFoundError):
        return HubUnavailable(f"{what}: the repo does not exist on the Hugging Face hub (or is private)")
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "?"
        if status in (401, 403):
            return HubUnavailable(f"{what}: the Hugging Face hub refused the request (HTTP {status}); log in with "
                                  "a token that may write there (hf auth login, or HF_TOKEN)")
        return HubUnavailable(f"{what}: the Hugging Face hub answered HTTP {status}")
    return HubUnavailable(f"{what} needs the network: cannot reach the Hugging Face hub ({type(e).__name__})")
