"""Base models: turning a model reference into a local folder (the supported list is model_choices).

A reference is a local folder, a name registered in the model store (e.g. an imported GGUF), or a
Hugging Face repo id, downloaded once into the store with huggingface-hub (resumable, with
progress). Offline with no local copy, the error says how to use a local folder instead.
"""
from __future__ import annotations

from pathlib import Path

from app import hub, paths
from app.engine.base_model import looks_like_repo_id
from app.engine.model_files import GGUF_PATTERN, check_model_folder, local_model, pick_gguf
from app.errors import EngineError, ModelUnavailable  # noqa: F401 - raised by app.hub, caught as models.ModelUnavailable
from app.hub import ProgressFn  # called with a hub.DownloadProgress (bytes done/total, speed, ETA)
from app.jsonfile import JsonFile
from app.model_choices import DEFAULT_INDEX, MISTRAL_7B, SUPPORTED, ModelChoice, default_model  # noqa: F401
from app.names import check_name
from app.tasks import load_tasks


def shipped_tasks(choice: ModelChoice) -> list[str]:
    """The tasks that have an adapter shipped with the app for this model."""
    return [t.name for t in load_tasks().values()
            if any(s.base == choice.torch_repo for s, _ in t.shipped_folders())]


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


def local_repo_folder(repo_id: str) -> Path:
    return paths.models_dir() / repo_id.replace("/", "--")


def resolve_model(ref: str | Path, engine: str = "mlx", progress: ProgressFn | None = None,
                  cancel=None) -> Path:
    """A local folder holding the model `ref`, downloading it first if needed: `progress` gets a
    DownloadProgress (bytes done and total, speed, ETA) as bytes arrive; setting `cancel` stops the
    download with hub.Cancelled, and the model is not marked complete."""
    if engine == "llamacpp":
        return resolve_gguf(ref, progress=progress, cancel=cancel)
    local = local_model(ref, engine)
    if local is not None:
        return local
    ref_s = str(ref)
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
    if not looks_like_repo_id(ref_s):
        raise EngineError(f"model {ref_s!r} is neither a folder, a registered model nor a hub repo id (owner/name)")
    folder = local_repo_folder(ref_s)
    if (folder / ".complete").exists():
        return folder
    return download_model(ref_s, progress=progress, cancel=cancel)


def download_model(repo_id: str, progress: ProgressFn | None = None, cancel=None) -> Path:
    """Download a hub repo's model files into the store (resumable; partial files are kept)."""
    folder = local_repo_folder(repo_id)
    hub.snapshot(repo_id, folder, progress=progress, cancel=cancel,
                 allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja", "*.tiktoken"])
    check_model_folder(folder)
    (folder / ".complete").touch()
    return folder


GGUF_SUFFIX = "-gguf"  # `models import` registers the GGUF itself as NAME-gguf


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

    local = local_model(ref, "llamacpp")
    if local is not None:
        return local
    ref_s = str(ref)
    reg = registered_models()
    if ref_s + GGUF_SUFFIX in reg or ref_s in reg:
        return pick_gguf(Path(reg.get(ref_s + GGUF_SUFFIX) or reg[ref_s]))
    if not looks_like_repo_id(ref_s):
        raise EngineError(f"model {ref_s!r} is neither a .gguf file, a folder, a registered model nor a hub repo id")
    repo = ref_s
    if not repo.lower().endswith("gguf"):  # a supported model's original repo: use its GGUF repo
        repo = next((m.gguf_repo for m in (*SUPPORTED, MISTRAL_7B) if repo in (m.torch_repo, m.mlx_repo)), repo)
    folder = local_repo_folder(repo)
    if not (folder / ".complete").exists():
        hub.snapshot(repo, folder, progress=progress, cancel=cancel, allow_patterns=[GGUF_PATTERN])
        (folder / ".complete").touch()
    path = pick_gguf(folder)
    logging.getLogger(__name__).info("%s: using %s", repo, path.name)
    return path
