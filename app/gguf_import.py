"""`loradesk models import FILE.gguf`: a llama.cpp GGUF model made loadable by both engines.

transformers' GGUF loader dequantizes it into an HF folder (the torch engine's format, and what
LoRA adapters are trained against); mlx-lm then quantizes that folder to 4-bit MLX. Both are built
in temp folders inside the model store and renamed into place at the end, then registered as NAME
(HF) and NAME-mlx, so `--model NAME` finds the right one for each engine.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from app import paths
from app.errors import EngineError
from app.models import GGUF_SUFFIX, register_model, registered_models
from app.names import check_name

# Architectures the product's engines, adapters and chat templates are built and tested for.
SUPPORTED_ARCHS = ("qwen2", "llama", "gemma2")
MLX_SUFFIX = "-mlx"


@dataclass
class GGUFInfo:
    path: Path
    architecture: str
    name: str | None
    file_type: int | None  # llama.cpp's general.file_type (0 F32, 1 F16, 15 Q4_K_M, ...)
    tensor_types: dict[str, int]  # quantization type name -> number of tensors
    bytes: int

    def describe(self) -> str:
        types = ", ".join(f"{n} x{c}" for n, c in sorted(self.tensor_types.items(), key=lambda kv: -kv[1]))
        return f"{self.architecture}, {sum(self.tensor_types.values())} tensors ({types}), {self.bytes / 1e6:.1f} MB"


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Read a GGUF file's header; a clear one-line EngineError naming the file when it is not a
    complete GGUF of a supported architecture."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EngineError(f"{path} does not exist")
    if not path.is_file():
        raise EngineError(f"{path} is not a file; pass a .gguf file")
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise EngineError(f"{path} is not a GGUF file (no GGUF header); pass a llama.cpp .gguf model file")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors on cut files
        raise EngineError(f"{path} is truncated or damaged ({type(e).__name__}: {e}); download it again") from None
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise EngineError(f"{path} is truncated ({size} of {end} bytes); download it again")
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise EngineError(f"{path}: GGUF architecture {arch!r} is not supported; LoRA Desk imports "
                          f"{', '.join(SUPPORTED_ARCHS)} models")
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    ft = _field(reader, "general.file_type")
    return GGUFInfo(path, arch, _field(reader, "general.name"), int(ft) if ft is not None else None, types, size)


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    if hasattr(field, "contents"):  # gguf >= 0.11
        value = field.contents()
    else:
        raw = field.parts[field.data[0]]
        value = bytes(raw).decode("utf-8") if field.types and field.types[0].name == "STRING" else raw[0]
    return value.strip() if isinstance(value, str) else value


def default_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).stem).strip("-.") or "imported"


def _mlx_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("mlx_lm") is not None
    except (ImportError, ValueError):
        return False


def keep_gguf(info: GGUFInfo, name: str, say: Callable[[str], None] = print) -> dict[str, Path]:
    """The llamacpp engine's import: the GGUF itself, as it is, placed in the store (a hard link
    where the disk allows, else a copy through a temp folder) and registered as NAME-gguf."""
    store = paths.models_dir()
    dest = store / (name + GGUF_SUFFIX)
    if dest.exists() or name + GGUF_SUFFIX in registered_models():
        raise EngineError(f"a GGUF model named {name!r} already exists in {store}; choose another --name")
    work = Path(tempfile.mkdtemp(prefix=f".import-{name}.", dir=store))  # same disk: rename is atomic
    try:
        target = work / info.path.name
        try:
            os.link(info.path, target)
            how = "linked"
        except OSError:
            shutil.copyfile(info.path, target)
            how = "copied"
        work.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    register_model(name + GGUF_SUFFIX, dest)
    say(f"{how} {info.path.name} into the store as it is (no conversion); registered {name!r}: "
        f"--model {name} --engine llamacpp")
    return {name: dest}


def import_gguf(path: str | Path, name: str | None = None, mlx: bool | None = None,
                say: Callable[[str], None] = print, engine: str | None = None) -> dict[str, Path]:
    """Import a GGUF file into the model store; returns {registered name: folder}. For the llamacpp
    engine the file is kept as it is; for torch (and MLX) it is dequantized into an HF folder."""
    from app.engine.convert import dequantize_gguf, quantize_mlx
    info = inspect_gguf(path)
    name = name or default_name(info.path)
    check_name(name, "model")
    if engine == "llamacpp":
        say(f"importing {info.path.name}: {info.describe()}")
        return keep_gguf(info, name, say)
    mlx = _mlx_available() if mlx is None else mlx
    store = paths.models_dir()
    targets = {name: store / name}
    if mlx:
        targets[name + MLX_SUFFIX] = store / (name + MLX_SUFFIX)
    taken = [n for n, folder in targets.items() if folder.exists() or n in registered_models()]
    if taken:
        raise EngineError(f"a model named {taken[0]!r} already exists in {store}; choose another --name "
                          "(or delete that folder first)")
    say(f"importing {info.path.name}: {info.describe()}")
    work = Path(tempfile.mkdtemp(prefix=f".import-{name}.", dir=store))  # same disk: rename is atomic
    try:
        t0 = time.perf_counter()
        say("[1/2] dequantizing with transformers' GGUF loader ..." if mlx else
            "[1/1] dequantizing with transformers' GGUF loader ...")
        try:
            dequantize_gguf(info.path, work / "hf", info.file_type)
        except (ValueError, KeyError, OSError, RuntimeError) as e:
            raise EngineError(f"{info.path}: transformers could not read this GGUF ({e})") from None
        say(f"      wrote an HF folder ({_folder_mb(work / 'hf'):.1f} MB) in {time.perf_counter() - t0:.1f}s")
        if mlx:
            t0 = time.perf_counter()
            say("[2/2] quantizing to 4-bit MLX with mlx-lm ...")
            try:
                quantize_mlx(work / "hf", work / "mlx")
            except (ValueError, KeyError, OSError, RuntimeError) as e:
                raise EngineError(f"{info.path}: mlx-lm could not convert the model ({e}); "
                                  "import with --no-mlx to use the torch engine only") from None
            say(f"      wrote a 4-bit MLX folder ({_folder_mb(work / 'mlx'):.1f} MB) in "
                f"{time.perf_counter() - t0:.1f}s")
        placed = {}
        try:
            for (reg_name, dest), src in zip(targets.items(), ("hf", "mlx")):
                (work / src).rename(dest)
                placed[reg_name] = dest
        except OSError as e:  # never leave half an import behind
            for dest in placed.values():
                shutil.rmtree(dest, ignore_errors=True)
            raise EngineError(f"could not move the imported model into {store}: {e}") from None
        for reg_name, dest in placed.items():
            register_model(reg_name, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"registered {name!r}" + (f" (torch) and {name + MLX_SUFFIX!r} (MLX); --model {name} picks the right "
                                  "one per engine" if mlx else f"; use --model {name}"))
    return placed


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
