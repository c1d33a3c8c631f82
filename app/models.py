"""Base models: the supported list, and turning a model reference into a local folder.

A reference is a local folder, a name registered in the model store (e.g. an imported GGUF), or a
Hugging Face repo id, downloaded once into the store with huggingface-hub (resumable, with
progress). Offline with no local copy, the error says how to use a local folder instead.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

from app import paths
from app.engine.base import EngineError
from app.jsonfile import JsonFile
from app.names import check_name
from app.hub import ProgressFn  # called with a hub.DownloadProgress (bytes done/total, speed, ETA)


@dataclass(frozen=True)
class ModelChoice:
    label: str
    mlx_repo: str  # 4-bit MLX conversion
    torch_repo: str  # the original weights, for transformers
    params_b: float  # parameters, billions
    approx_gb_4bit: float
    gguf_repo: str = ""  # GGUF files for llama.cpp; the Q4_K_M one is used

    def repo_for(self, engine: str) -> str:
        return {"mlx": self.mlx_repo, "llamacpp": self.gguf_repo}.get(engine) or self.torch_repo

    def size_label(self, engine: str) -> str:
        """About how much the engine's copy weighs: 4-bit for MLX and GGUF, bf16 for torch."""
        return f"~{2 * self.params_b:.1f} GB bf16" if engine == "torch" else f"~{self.approx_gb_4bit:.1f} GB 4-bit"


SUPPORTED = (
    ModelChoice("Qwen2.5 0.5B Instruct", "mlx-community/Qwen2.5-0.5B-Instruct-4bit", "Qwen/Qwen2.5-0.5B-Instruct", 0.49, 0.28,
                "Qwen/Qwen2.5-0.5B-Instruct-GGUF"),
    ModelChoice("Qwen2.5 1.5B Instruct", "mlx-community/Qwen2.5-1.5B-Instruct-4bit", "Qwen/Qwen2.5-1.5B-Instruct", 1.54, 0.87,
                "Qwen/Qwen2.5-1.5B-Instruct-GGUF"),
    ModelChoice("Qwen2.5 3B Instruct", "mlx-community/Qwen2.5-3B-Instruct-4bit", "Qwen/Qwen2.5-3B-Instruct", 3.09, 1.74,
                "Qwen/Qwen2.5-3B-Instruct-GGUF"),
    ModelChoice("Llama 3.2 1B Instruct", "mlx-community/Llama-3.2-1B-Instruct-4bit", "meta-llama/Llama-3.2-1B-Instruct", 1.24, 0.70,
                "bartowski/Llama-3.2-1B-Instruct-GGUF"),
    ModelChoice("Llama 3.2 3B Instruct", "mlx-community/Llama-3.2-3B-Instruct-4bit", "meta-llama/Llama-3.2-3B-Instruct", 3.21, 1.81,
                "bartowski/Llama-3.2-3B-Instruct-GGUF"),
    ModelChoice("Gemma 2 2B Instruct", "mlx-community/gemma-2-2b-it-4bit", "google/gemma-2-2b-it", 2.61, 1.49,
                "bartowski/gemma-2-2b-it-GGUF"),
    # The small choice: the shipped math adapter was trained on it (adapters/math.toml, [[adapter.shipped]]).
    ModelChoice("Qwen2.5 Coder 0.5B Instruct", "mlx-community/Qwen2.5-Coder-0.5B-Instruct-4bit",
                "Qwen/Qwen2.5-Coder-0.5B-Instruct", 0.49, 0.49, "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"),
)
DEFAULT_INDEX = 1  # Qwen2.5-1.5B-Instruct

# The 7B reference of the research question (benchmark only).
MISTRAL_7B = ModelChoice("Mistral 7B Instruct v0.3", "mlx-community/Mistral-7B-Instruct-v0.3-4bit",
                         "mistralai/Mistral-7B-Instruct-v0.3", 7.25, 4.08,
                         "bartowski/Mistral-7B-Instruct-v0.3-GGUF")


def shipped_tasks(choice: ModelChoice) -> list[str]:
    """The tasks that have an adapter shipped with the app for this model."""
    from app.tasks import load_tasks

    return [t.name for t in load_tasks().values()
            if any(s.base == choice.torch_repo for s, _ in t.shipped_folders())]


def default_model(engine: str) -> str:
    return SUPPORTED[DEFAULT_INDEX].repo_for(engine)


class ModelUnavailable(EngineError):
    """The model is not on this machine and cannot be downloaded now."""


def _rebuild_registry() -> dict:
    """Registered models recreated from the store: every model folder that is not a hub download
    (those are `<owner>--<name>` and found by repo id) is registered under its folder name."""
    found = {}
    for folder in sorted(paths.models_dir().iterdir()):
        if folder.is_dir() and not folder.name.startswith(".") and "--" not in folder.name \
                and ((folder / "config.json").exists() or any(folder.glob("*.gguf"))):
            found[folder.name] = str(folder)
    return found


def _registry() -> JsonFile:
    return JsonFile(paths.models_dir() / "registry.json", "the model registry", rebuild=_rebuild_registry)


def registered_models() -> dict[str, str]:
    """Names given to local models (imported GGUF files): name -> folder."""
    return {k: v for k, v in _registry().read().items() if isinstance(v, str)}


def register_model(name: str, folder: Path) -> None:
    check_name(name, "model")
    with _registry().update() as reg:
        reg[name] = str(folder)


def _looks_like_repo_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "~"))


def local_repo_folder(repo_id: str) -> Path:
    return paths.models_dir() / repo_id.replace("/", "--")


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
    import struct

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


def resolve_model(ref: str | Path, engine: str = "mlx", progress: ProgressFn | None = None,
                  cancel=None) -> Path:
    """A local folder holding the model `ref`, downloading it first if needed: `progress` gets a
    DownloadProgress (bytes done and total, speed, ETA) as bytes arrive; setting `cancel` stops the
    download with hub.Cancelled, and the model is not marked complete."""
    if engine == "llamacpp":
        return resolve_gguf(ref, progress=progress, cancel=cancel)
    ref_s = str(ref)
    candidate = Path(ref_s).expanduser()
    if candidate.exists():
        if candidate.is_dir() and not (candidate / "config.json").exists() and any(candidate.glob("*.gguf")):
            raise EngineError(f"{candidate} holds a GGUF model: use --engine llamacpp, or import it for the "
                              f"{engine} engine: loradesk models import {candidate}/FILE.gguf --engine {engine}")
        if candidate.is_file() and candidate.suffix == ".gguf":
            raise EngineError(f"{candidate} is a GGUF file; import it first: loradesk models import {candidate}")
        check_model_folder(candidate)
        return candidate.resolve()
    reg = registered_models()
    if ref_s in reg:
        # An imported GGUF is registered twice: NAME (HF, torch) and NAME-mlx (4-bit MLX).
        folder = Path(reg.get(f"{ref_s}-mlx", reg[ref_s]) if engine == "mlx" else reg[ref_s])
        check_model_folder(folder)
        return folder
    if ref_s + GGUF_SUFFIX in reg:
        raise EngineError(f"model {ref_s!r} was imported as a GGUF only (for --engine llamacpp); to convert it for "
                          f"the {engine} engine: loradesk models import {reg[ref_s + GGUF_SUFFIX]} --name {ref_s} "
                          f"--engine {engine}")
    if not _looks_like_repo_id(ref_s):
        raise EngineError(f"model {ref_s!r} is neither a folder, a registered model nor a hub repo id (owner/name)")
    folder = local_repo_folder(ref_s)
    if (folder / ".complete").exists():
        return folder
    return download_model(ref_s, progress=progress, cancel=cancel)


def download_model(repo_id: str, progress: ProgressFn | None = None, cancel=None) -> Path:
    """Download a hub repo's model files into the store (resumable; partial files are kept)."""
    from app import hub

    folder = local_repo_folder(repo_id)
    hub.snapshot(repo_id, folder, progress=progress, cancel=cancel,
                 allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja", "*.tiktoken"])
    check_model_folder(folder)
    (folder / ".complete").touch()
    return folder


GGUF_SUFFIX = "-gguf"  # `models import` registers the GGUF itself as NAME-gguf
GGUF_PATTERN = "*[qQ]4_[kK]_[mM].gguf"  # the file taken from a hub repo of GGUF files


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


def trainable_model(ref: str | None) -> str | None:
    """The model to train adapters on for a GGUF reference: a supported model's original weights
    (Qwen/Qwen2.5-1.5B-Instruct-GGUF -> Qwen/Qwen2.5-1.5B-Instruct); None (the trainer's default)
    for a GGUF that cannot be tied to one; other references unchanged."""
    if ref is None:
        return None
    for m in (*SUPPORTED, MISTRAL_7B):
        if str(ref) == m.gguf_repo:
            return m.torch_repo
    if str(ref).lower().endswith((".gguf", "gguf")):
        return None
    return ref


def resolve_gguf(ref: str | Path, progress: ProgressFn | None = None, cancel=None) -> Path:
    """The GGUF file for `ref`: a .gguf file, a folder holding one, a registered name, or a hub repo
    of GGUF files (its Q4_K_M file is downloaded once into the store)."""
    import logging

    ref_s = str(ref)
    candidate = Path(ref_s).expanduser()
    if candidate.is_file():
        if candidate.suffix != ".gguf":
            raise EngineError(f"{candidate} is not a .gguf file; the llamacpp engine reads GGUF models")
        return candidate.resolve()
    if candidate.is_dir():
        return pick_gguf(candidate).resolve()
    reg = registered_models()
    if ref_s + GGUF_SUFFIX in reg or ref_s in reg:
        return pick_gguf(Path(reg.get(ref_s + GGUF_SUFFIX) or reg[ref_s]))
    if not _looks_like_repo_id(ref_s):
        raise EngineError(f"model {ref_s!r} is neither a .gguf file, a folder, a registered model nor a hub repo id")
    repo = ref_s
    if not repo.lower().endswith("gguf"):  # a supported model's original repo: use its GGUF repo
        repo = next((m.gguf_repo for m in (*SUPPORTED, MISTRAL_7B) if repo in (m.torch_repo, m.mlx_repo)), repo)
    folder = local_repo_folder(repo)
    if not (folder / ".complete").exists():
        from app import hub

        hub.snapshot(repo, folder, progress=progress, cancel=cancel, allow_patterns=[GGUF_PATTERN])
        (folder / ".complete").touch()
    path = pick_gguf(folder)
    logging.getLogger(__name__).info("%s: using %s", repo, path.name)
    return path
