"""Model downloads with byte-level progress and cancel, against a local fake hub (tests/fake_hub.py):
huggingface-hub's real download code runs; only the server is ours."""
from __future__ import annotations

import os
import threading

import pytest

from app import hub, models
from app.hub import DownloadProgress
from app.format import progress_text
from fake_hub import BLOCK, FakeHub

REPO = "someorg/tiny-model"


def _files() -> dict[str, bytes]:
    import numpy as np
    from safetensors.numpy import save

    # A real safetensors file (the store checks its header against its size) of random weights.
    weights = save({"w": np.frombuffer(os.urandom(10 * BLOCK + 123), dtype=np.uint8)})
    return {"config.json": b'{"model_type": "qwen2"}', "tokenizer.json": b"{}" * 100,
            "model.safetensors": weights, "README.md": b"not fetched"}


def test_download_reports_bytes_as_they_arrive(monkeypatch):
    files = _files()
    total = sum(len(c) for n, c in files.items() if n != "README.md")
    seen: list[DownloadProgress] = []
    with FakeHub({REPO: files}).use(monkeypatch) as fake:
        folder = models.resolve_model(REPO, engine="torch", progress=seen.append)
    assert folder == models.local_repo_folder(REPO) and (folder / ".complete").exists()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (folder / name).read_bytes() == files[name]
    assert not (folder / "README.md").exists()  # not in the model's file patterns
    assert all(p.total == total for p in seen)
    done = [p.done for p in seen]
    assert done == sorted(done) and done[0] == 0 and done[-1] == total
    weights = [p.done for p in seen if p.file == "model.safetensors"]
    assert len(set(weights)) >= 10  # one report per 64 KiB block, not one per file
    assert any(p.speed > 0 and p.eta_s is not None for p in seen if p.done < total)
    assert seen[-1].eta_s == 0
    # Small files first: a cancelled download keeps the config and tokenizer.
    gets = [path.rsplit("/", 1)[1] for method, path in fake.requests if method == "GET" and "/resolve/" in path]
    assert gets == ["config.json", "tokenizer.json", "model.safetensors"]
    fake.requests.clear()
    assert models.resolve_model(REPO, engine="torch") == folder and fake.requests == []  # complete: no network


def test_cancel_stops_mid_file_and_the_next_download_fetches_the_rest(monkeypatch):
    files = _files()
    cancel = threading.Event()
    seen: list[DownloadProgress] = []

    def progress(p):
        seen.append(p)
        if p.file == "model.safetensors" and p.done > 3 * BLOCK:
            cancel.set()  # what the Cancel button does, from the UI thread

    with FakeHub({REPO: files}).use(monkeypatch) as fake:
        with pytest.raises(hub.Cancelled, match=f"download of {REPO} cancelled; files already downloaded are kept"):
            models.resolve_model(REPO, engine="torch", progress=progress, cancel=cancel)
        folder = models.local_repo_folder(REPO)
        assert not (folder / ".complete").exists()
        assert not (folder / "model.safetensors").exists()  # never a truncated weights file
        assert (folder / "config.json").read_bytes() == files["config.json"]
        stopped_at = seen[-1].done
        assert stopped_at < sum(len(c) for c in files.values()) - 5 * BLOCK  # stopped within a block or so
        assert models.registered_models() == {}
        with pytest.raises(models.EngineError):
            models.check_model_folder(folder)

        # Again, without cancel: only the missing file comes over the network.
        fake.requests.clear()
        assert models.resolve_model(REPO, engine="torch") == folder
        gets = [path for method, path in fake.requests if method == "GET" and "/resolve/" in path]
        assert [g.rsplit("/", 1)[1] for g in gets] == ["model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_a_missing_repo_is_a_clear_error(monkeypatch):
    with FakeHub({}).use(monkeypatch):
        with pytest.raises(models.ModelUnavailable, match="someorg/nothing-here does not exist on the Hugging Face hub"):
            models.resolve_model("someorg/nothing-here")


@pytest.mark.parametrize("p, text", [
    (DownloadProgress(312 * 2**20, 2**30, 8.4 * 2**20, 82.4), "312.0 MB / 1.0 GB · 8.4 MB/s · ETA 1:22"),
    (DownloadProgress(2**20, 2**34, 2**20, 3723), "1.0 MB / 16.0 GB · 1.0 MB/s · ETA 1:02:03"),
    (DownloadProgress(0, 2**30, 0.0, None), "0 B / 1.0 GB"),  # before the speed is known
    (DownloadProgress(2**30, 2**30, 5 * 2**20, 0.0), "1.0 GB / 1.0 GB · 5.0 MB/s"),
])
def test_progress_text(p, text):
    assert progress_text(p) == text
