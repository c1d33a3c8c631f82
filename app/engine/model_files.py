"""The files a model is loaded from, checked before an engine reads them: a Hugging Face folder
(config.json, complete *.safetensors) or a GGUF file. The engine loads what is on disk; names, the
store and downloads are app.models' (its resolver is passed to create_engine)."""
from __future__ import annotations

import fnmatch
import json
import struct
from pathlib import Path

from app.errors import EngineError

GGUF_PATTERN = "*[qQ]4_[kK]_[mM].gguf"  # the file taken from a hub repo of GGUF files


def local_model(ref: str | Path, engine: str) -> Path | None:
    """The checked local folder or file `ref` names for `engine`, or None when it names nothing on
    this machine (a registered name or a hub repo id, which app.models.resolve_model resolves)."""
    candidate = Path(str(ref)).expanduser()
    if engine == "llamacpp":
        if candidate.is_file():
            if candidate.suffix != ".gguf":
                raise EngineError(f"{candidate} is not a .gguf file; the llamacpp engine reads GGUF models")
            return candidate.resolve()
        if candidate.is_dir():
            return pick_gguf(candidate).resolve()
        return None
    if candidate.exists():
        if candidate.is_dir() and not (candidate / "config.json").exists() and any(candidate.glob("*.gguf")):
            raise EngineError(f"{candidate} holds a GGUF model: use --engine llamacpp, or import it for the "
                              f"{engine} engine: loradesk models import {candidate}/FILE.gguf --engine {engine}")
        if candidate.is_file() and candidate.suffix == ".gguf":
            raise EngineError(f"{candidate} is a GGUF file; import it first: loradesk models import {candidate}")
        check_model_folder(candidate)
        return candidate.resolve()
    return None


def files_only(ref: str | Path, engine: str) -> Path:
    """The resolver of an engine created without one: local files and folders only."""
    path = local_model(ref, engine)
    if path is None:
        raise EngineError(f"model {str(ref)!r} is not a file or folder on this machine")
    return path


def check_model_folder(folder: Path) -> None:
    if not (folder / "config.json").exists():
        raise EngineError(f"{folder} has no config.json; a model folder holds config.json, *.safetensors and tokenizer files")
    if not any(folder.glob("*.safetensors")):
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise EngineError(f"{folder} holds only pickle weights (.bin); convert them to safetensors first")
        raise EngineError(f"{folder} has no *.safetensors weights")
    for f in sorted(folder.glob("*.safetensors")):
        _check_complete(f)


def _check_complete(f: Path) -> None:
    """A safetensors file holds a JSON header (length-prefixed) whose offsets say how long the file
    must be: a shorter one is an interrupted download, caught here before an engine's own error."""
    size = f.stat().st_size
    try:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n)) if 0 < n <= size - 8 else None
        need = 8 + n + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError):
        need = None
    if need is None or size < need:
        have = f"{size} of {need} bytes" if need else "its header is unreadable"
        raise EngineError(f"{f} is truncated or damaged ({have}): the download was interrupted or the file was "
                          "cut. Download it again or copy the file anew.")


def pick_gguf(folder: Path) -> Path:
    """The GGUF model file in `folder`: its only one, else the Q4_K_M one."""
    files = sorted(p for p in Path(folder).glob("*.gguf") if not p.name.startswith("."))
    if len(files) == 1:
        return files[0]
    q4 = [p for p in files if fnmatch.fnmatch(p.name, GGUF_PATTERN)]
    if q4:
        return q4[0]
    if files:
        raise EngineError(f"{folder} holds {len(files)} GGUF files and none is Q4_K_M; pass the file itself: "
                          f"--model {files[0]}")
    if (Path(folder) / "config.json").exists():
        raise EngineError(f"{folder} is a Hugging Face model folder; the llamacpp engine reads GGUF files. "
                          "Use --engine torch (or mlx) for this folder, or pass a .gguf file")
    raise EngineError(f"{folder} holds no .gguf file")
