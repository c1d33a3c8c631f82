"""Model format conversions that need torch or mlx (so they live in the engine package):
a GGUF file to an HF folder with transformers' GGUF loader, and an HF folder to 4-bit MLX.
The callers (app/gguf_import.py) handle temp folders, naming and registration.
"""
from __future__ import annotations

from pathlib import Path

# llama.cpp's general.file_type -> the dtype the dequantized weights are saved in: float files keep
# their precision; quantized ones (Q4_K_M, Q8_0, ...) become bf16, far finer than their own error.
_FILE_TYPE_DTYPE = {0: "float32", 1: "float16", 32: "bfloat16"}


def dequantize_gguf(gguf_file: Path, out: Path, file_type: int | None = None) -> Path:
    """Write the model and tokenizer of `gguf_file` to `out` (an HF folder, safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, _FILE_TYPE_DTYPE.get(file_type, "bfloat16"))
    folder, name = str(gguf_file.parent), gguf_file.name
    kwargs = {}
    try:  # transformers >= 5.2x keeps GGUF blocks packed unless asked; older releases always unpack
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(gguf_file=name, dequantize=True)
    except ImportError:
        pass
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, **kwargs)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def quantize_mlx(hf_folder: Path, out: Path, bits: int = 4, group_size: int = 64) -> Path:
    """mlx-lm's convert to a `bits`-bit MLX folder, run on the MLX thread. `out` must not exist."""
    from mlx_lm import convert

    from app.engine import mlx_thread

    mlx_thread.call(convert, str(hf_folder), mlx_path=str(out), quantize=True, q_bits=bits, q_group_size=group_size)
    return out
