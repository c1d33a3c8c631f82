"""Downloads from the Hugging Face hub: the network edge (tests mock here, nowhere else)."""
from __future__ import annotations

import os
from pathlib import Path


class Cancelled(Exception):
    pass


def offline_message(repo_id: str, folder: Path) -> str:
    return (
        f"cannot download {repo_id}: no connection to the Hugging Face hub (offline). "
        f"Copy the model folder to this machine and pass its path with --model /path/to/folder "
        f"(or choose 'Local folder…' in the app), or put the files in {folder}."
    )


def snapshot(repo_id: str, folder: Path, progress=None, cancel=None, allow_patterns=None) -> Path:
    """Download `repo_id` into `folder` with a progress callback (bytes done, bytes total).

    Files already complete are skipped and partial ones resume (huggingface-hub keeps them).
    """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
    )
    import fnmatch

    from app.models import ModelUnavailable

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelUnavailable(offline_message(repo_id, folder))
    try:
        info = HfApi().model_info(repo_id, files_metadata=True)
    except RepositoryNotFoundError:
        raise ModelUnavailable(f"{repo_id} does not exist on the Hugging Face hub (or is private)") from None
    except GatedRepoError:
        raise ModelUnavailable(
            f"{repo_id} is gated: accept its licence on huggingface.co and log in with `hf auth login`"
        ) from None
    except Exception as e:  # connection errors come in many types
        raise ModelUnavailable(offline_message(repo_id, folder) + f" ({type(e).__name__})") from None
    files = [s for s in info.siblings if allow_patterns is None
             or any(fnmatch.fnmatch(s.rfilename, p) for p in allow_patterns)]
    total = sum(s.size or 0 for s in files)
    done = 0
    folder.mkdir(parents=True, exist_ok=True)
    for s in files:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"download of {repo_id} cancelled; it resumes where it stopped next time")
        try:
            hf_hub_download(repo_id, s.rfilename, local_dir=folder)
        except LocalEntryNotFoundError:
            raise ModelUnavailable(offline_message(repo_id, folder)) from None
        except Exception as e:
            raise ModelUnavailable(f"download of {repo_id}/{s.rfilename} failed: {e}") from None
        done += s.size or 0
        if progress:
            progress(done, total)
    return folder
