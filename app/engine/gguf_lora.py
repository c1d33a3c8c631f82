"""LoRA adapters as llama.cpp GGUF LoRA files, following llama.cpp's `convert_lora_to_gguf.py`.

- `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` (float32), and the base
  model's `general.architecture`;
- tensors `blk.N.<name>.weight.lora_a` (r, in) and `.lora_b` (out, r): PEFT's layout, names from the
  `gguf` package's tensor name map;
- llama.cpp scales each pair by alpha / r (r read from that tensor), so per-module strengths (rsLoRA,
  rank and alpha patterns, MLX scales) are folded into B: one alpha, every module exact;
- tensors in F16, as the converter writes them by default (half the memory and bandwidth of F32,
  which a decode step on CPU pays for every resident token), or F32 for an F32 base model;
- the llama architecture's q/k weights are stored permuted for llama.cpp's rope layout (its
  converter's `permute`), so the rows of those modules' B are permuted the same way.

The `gguf` package is pure Python: this module imports no engine library.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from app.engine.lora import LoraWeights
from app.engine.base import AdapterError

FORMAT_VERSION = 2  # bump when the written file changes for the same input (invalidates caches)
CACHE_DIR = "gguf-cache"  # beside the adapter's own files (no leading dot: the store reads those as temp folders)
PERMUTED_ARCHS = ("llama",)  # architectures whose q/k rows llama.cpp's converter permutes


def permute_rows(m: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter `permute` on the out (first) axis: per head, the two rope halves
    interleave. The converter passes n_head_kv for k_proj."""
    return m.reshape(n_head, 2, m.shape[0] // n_head // 2, *m.shape[1:]).swapaxes(1, 2).reshape(m.shape)


def write_gguf_lora(weights: LoraWeights, out: str | Path, arch: str, n_head: int, n_head_kv: int,
                    n_layers: int, dtype=np.float16) -> Path:
    """Write `weights` as a GGUF LoRA for a base model of `arch` (temp file, then renamed)."""
    import gguf

    arch_enum = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), None)
    if arch_enum is None:
        raise AdapterError(f"llama.cpp has no architecture {arch!r}; cannot convert the adapter")
    names = gguf.get_tensor_name_map(arch_enum, n_layers)
    first = next(iter(weights.modules.values()))
    alpha = float(first.scale * first.rank)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(str(tmp), arch)
    try:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        if weights.base_model:
            w.add_string("general.base_model.0.name", str(weights.base_model))
        problems = []
        for module, m in sorted(weights.modules.items()):
            name = names.get_name(module, try_suffixes=(".weight",))
            if name is None:
                problems.append(module)
                continue
            a = np.ascontiguousarray(m.a.T, dtype=np.float32)  # (r, in)
            # llama.cpp multiplies by alpha / r: fold the module's own scale in relative to that.
            b = np.ascontiguousarray(m.b.T * (m.scale * m.rank / alpha), dtype=np.float32)  # (out, r)
            if arch in PERMUTED_ARCHS:
                short = module.rsplit(".", 1)[-1]
                if short == "q_proj":
                    b = permute_rows(b, n_head)
                elif short == "k_proj":
                    b = permute_rows(b, n_head_kv)
            w.add_tensor(f"{name}.weight.lora_a", a.astype(dtype))
            w.add_tensor(f"{name}.weight.lora_b", np.ascontiguousarray(b).astype(dtype))
        if problems:
            raise AdapterError(f"llama.cpp's {arch} model has no layer for {', '.join(problems[:5])}"
                               + (f" and {len(problems) - 5} more" if len(problems) > 5 else ""))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(out)
    finally:
        w.close()
        tmp.unlink(missing_ok=True)
    return out


def content_hash(folder: Path) -> str:
    """sha256 of the adapter folder's config, weights and metadata: the conversion cache key."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and (p.suffix in (".json", ".safetensors")):
            h.update(p.name.encode() + b"\0")
            with p.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


def lora_dtype(base_file_type: int | None):
    """The tensor type of a GGUF LoRA for a base of llama.cpp `general.file_type`: F32 beside an
    all-F32 base (exact, as the parity tests need), else F16."""
    return np.float32 if base_file_type == 0 else np.float16


def cached_gguf_lora(folder: str | Path, weights: LoraWeights, arch: str, n_head: int, n_head_kv: int,
                     n_layers: int, fallback_dir: Path, dtype=np.float16) -> tuple[Path, bool]:
    """The GGUF LoRA for the adapter folder, converted once: cached beside it (in `gguf-cache/`), or in
    `fallback_dir` when that folder is not writable. Key: the folder's content hash and the base's
    architecture facts. Returns (file, whether it was converted now)."""
    folder = Path(folder)
    key = hashlib.sha256(json.dumps(
        [content_hash(folder), arch, n_head, n_head_kv, n_layers, np.dtype(dtype).name, FORMAT_VERSION]).encode()).hexdigest()[:24]
    candidates = [folder / CACHE_DIR / f"{key}.gguf", Path(fallback_dir) / f"{key}.gguf"]
    for path in candidates:
        if path.exists():
            return path, False
    last = None
    for path in candidates:
        try:
            return write_gguf_lora(weights, path, arch, n_head, n_head_kv, n_layers, dtype), True
        except OSError as e:  # read-only adapter folder: try the cache folder
            last = e
    raise AdapterError(f"could not write the GGUF form of adapter {folder}: {last}")

