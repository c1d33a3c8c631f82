"""Which base model: an adapter records the model it was made for, and an engine's loaded model has
a reference (a hub repo id, a folder, a GGUF file). These names, reduced to what identifies a base
model, decide whether an adapter is used, refused or used with a warning."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from app import paths
from app.engine.lora import LoraWeights
from app.errors import AdapterError
from app.model_choices import MISTRAL_7B, SUPPORTED


def looks_like_repo_id(ref: str) -> bool:
    """`owner/name`, as the Hugging Face hub names a repo (not a relative path like ./x or ~/x)."""
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "~"))


def weights_digest(model_path: Path) -> str:
    """sha256 over each weight file's name, size, first and last MiB: identifies the base weights
    without reading gigabytes (a full hash of a 3B model takes longer than loading it)."""
    h = hashlib.sha256()
    for f in sorted(Path(model_path).glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()


# Conversions of one model published under other names: mlx-community/X-4bit, X-GGUF, X-MLX, ...
_VARIANT_SUFFIX = re.compile(r"[-_.](\d+bit|gguf|mlx|bf16|fp16|f16|f32|awq|gptq|int4|int8|q\d\w*)$")


def base_model_key(name: str | None) -> str | None:
    """A model name reduced to what identifies the base model: the hub repo ids of one model in its
    engines' formats (model_choices.SUPPORTED pairs; owner, -4bit/-GGUF/-MLX suffixes, case) agree."""
    if not name or not str(name).strip():
        return None
    s = str(name).strip().rstrip("/")
    for choice in (*SUPPORTED, MISTRAL_7B):
        repos = {v.lower() for v in vars(choice).values() if isinstance(v, str) and "/" in v}
        if s.lower() in repos:
            s = choice.torch_repo
            break
    s = s.rsplit("/", 1)[-1].lower()
    while _VARIANT_SUFFIX.search(s):
        s = _VARIANT_SUFFIX.sub("", s)
    return s or None


def repo_id_of(ref: str | None, path: Path | None = None) -> str | None:
    """The hub repo id a model reference stands for, or None for a folder, a file or a name the
    user chose (an imported GGUF) that we cannot tie to a hub model."""
    store = paths.models_dir().resolve()
    for candidate in (Path(str(p)) for p in (path, ref) if p):
        try:
            folder = candidate.expanduser().resolve()
        except (OSError, RuntimeError):
            continue
        if folder.is_file():  # a model file (GGUF) inside its download folder
            folder = folder.parent
        if folder.parent == store and "--" in folder.name:  # our download: models/<owner>--<name>
            return folder.name.replace("--", "/", 1)
        for part in folder.parts:  # the hub cache: models--<owner>--<name>/snapshots/<sha>
            if part.startswith("models--") and part.count("--") >= 2:
                return part[len("models--"):].replace("--", "/", 1)
    if ref and looks_like_repo_id(str(ref)) and not Path(str(ref)).expanduser().exists():
        return str(ref)
    for candidate in (Path(str(p)).expanduser() for p in (path, ref) if p):
        named = config_name(candidate if candidate.is_dir() else candidate.parent)
        if named:
            return named
    return None


def config_name(folder: Path) -> str | None:
    """The model name a local folder's config.json carries (`_name_or_path` when it is a repo id, or
    the GGUF's `general.name` that transformers keeps as `_model_name_or_path` in a folder made from
    a GGUF: 'Qwen2.5 Coder 0.5B Instruct' -> 'Qwen2.5-Coder-0.5B-Instruct'); a path is no name."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("_name_or_path", "_model_name_or_path"):
        value = str(cfg.get(key) or "").strip()
        if not value or value.startswith(("/", ".", "~")) or "\\" in value or ":" in value:
            continue
        if looks_like_repo_id(value) or " " in value:
            return value.replace(" ", "-")
    return None


def check_base_model(weights: LoraWeights, model, where: str, force: bool = False) -> str | None:
    """Compare the base model an adapter records with `model` (a ModelInfo, or a model reference).

    Same weights (LoRA Desk's weights hash) or the same base name: None. Both sides named and
    different: AdapterError naming both, unless `force` (then a warning). One side unnamed: a
    one-line warning saying what could not be checked. Every engine calls this after the shape check.
    A ModelInfo with `path=None` carries in `ref` a name the engine read from the model itself
    (e.g. a GGUF's general.name); a plain string is a model reference as the user gives one.
    """
    ref, path = (model.ref, model.path) if hasattr(model, "path") else (str(model), None)
    named_by_engine = hasattr(model, "path") and path is None and bool(ref)
    recorded = weights.base_model
    digest = weights.metadata.get("base_weights_sample_sha256")
    if path is not None and Path(path).is_dir():
        if digest and digest == weights_digest(Path(path)):
            return None  # the very weights it was trained on
        if recorded and Path(recorded).expanduser().exists() and Path(recorded).expanduser().resolve() == Path(path).resolve():
            return None
    adapter_name = repo_id_of(recorded)
    model_name = ref if named_by_engine else repo_id_of(ref, path)
    a, m = base_model_key(adapter_name), base_model_key(model_name)
    shown = model_name or ref
    if a and m:
        if a == m:
            return None
        if force:
            return f"adapter {where} was made for {adapter_name}, not {shown}; using it anyway (--force)"
        raise AdapterError(
            f"adapter {where} was made for {adapter_name}; the loaded model is {shown}. Load {adapter_name} "
            f"(--model {adapter_name}) or use an adapter made for {shown}; --force uses it anyway."
        )
    if not recorded:
        return f"adapter {where} does not record its base model; cannot check it was made for {shown}"
    if digest and path is not None:
        return (f"adapter {where} was made for {recorded}, whose weights differ from {shown}'s "
                "(unnamed, so it may be a converted copy); check its answers")
    return f"adapter {where} was made for {recorded}; {shown} cannot be identified to compare, so it is used unchecked"
