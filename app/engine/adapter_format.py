"""LoRA adapter folders in the two formats LoRA Desk speaks, read into one engine-neutral form.

- MLX (mlx-lm's trainer): `adapter_config.json` with `lora_parameters` {rank, scale, keys} and
  `adapters.safetensors` with `<module>.lora_a` (in, r) and `<module>.lora_b` (r, out).
- PEFT: `adapter_config.json` with `r`, `lora_alpha`, `target_modules` and
  `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight` (r, in) and
  `...lora_B.weight` (out, r); scale = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA).

Both become `LoraWeights`: per module, A (in, r), B (r, out) and a scale, so that
y = W x + scale * (x A) B. Module names are the model's own (`model.layers.3.self_attn.q_proj`),
the same in mlx-lm and transformers for Qwen2, Llama and Gemma2.
Pickle files (`.bin`, `.pt`) are refused, never opened.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from app.engine.lora import METADATA_FILE, MLX_WEIGHTS, PEFT_WEIGHTS, PICKLE_SUFFIXES, LoraModule, LoraWeights
from app.errors import AdapterError


def detect_format(folder: Path) -> str:
    """'mlx' or 'peft', or an AdapterError saying what is wrong with the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise AdapterError(f"adapter folder {folder} does not exist")
    if not folder.is_dir():
        raise AdapterError(f"{folder} is not a folder; an adapter is a folder with adapter_config.json and safetensors")
    names = {p.name for p in folder.iterdir()}
    if MLX_WEIGHTS in names:
        return "mlx"
    if PEFT_WEIGHTS in names:
        return "peft"
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise AdapterError(
            f"{folder / pickles[0]} is a pickle file; LoRA Desk never unpickles (it can run code). "
            "Convert it to safetensors where you trust it: PeftModel.from_pretrained(base, folder)"
            ".save_pretrained(out, safe_serialization=True), then add that folder."
        )
    if "adapter_config.json" not in names:
        raise AdapterError(f"{folder} has no adapter_config.json; it is not an adapter folder")
    raise AdapterError(f"{folder} has adapter_config.json but no {MLX_WEIGHTS} or {PEFT_WEIGHTS}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path} is not valid JSON ({e}); the adapter folder is corrupt") from None


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{path} is not a readable safetensors file ({e}); the adapter is corrupt") from None
    # bf16 has no numpy dtype: safetensors.numpy refuses it; such files are read via torch or mlx.
    return tensors


def _load_tensors_any(path: Path) -> dict[str, np.ndarray]:
    try:
        return _read_tensors(path)
    except AdapterError as first:
        if "bf16" not in str(first).lower() and "bfloat16" not in str(first).lower():
            raise
    try:  # bf16 weights (mlx-lm and PEFT both write them): upcast to float32 via mlx
        import mlx.core as mx

        return {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(path)).items()}
    except ImportError:
        from safetensors.torch import load_file

        return {k: v.float().numpy() for k, v in load_file(str(path)).items()}


def read_adapter(folder: str | Path) -> LoraWeights:
    """Read and sanity-check an adapter folder of either format (not yet against a model)."""
    folder = Path(folder)
    fmt = detect_format(folder)
    config = _read_json(folder / "adapter_config.json")
    meta = _read_json(folder / METADATA_FILE) if (folder / METADATA_FILE).exists() else {}
    if fmt == "mlx":
        weights = _read_mlx(folder, config)
    else:
        weights = _read_peft(folder, config)
    weights.metadata = meta
    weights.base_model = meta.get("base_model") or weights.base_model
    weights.fingerprint = meta.get("fingerprint", {})
    if not weights.modules:
        raise AdapterError(f"{folder} holds no LoRA weights")
    return weights


def _read_mlx(folder: Path, config: dict) -> LoraWeights:
    kind = config.get("fine_tune_type", "lora")
    if kind != "lora":
        raise AdapterError(
            f"{folder}: fine_tune_type {kind!r} cannot be hot-swapped; only LoRA adapters can "
            "(fuse it into a model with mlx_lm.fuse instead)"
        )
    params = config.get("lora_parameters")
    if not params or "scale" not in params:
        raise AdapterError(f"{folder}/adapter_config.json has no lora_parameters.scale; not an mlx-lm LoRA config")
    tensors = _load_tensors_any(folder / MLX_WEIGHTS)
    modules, problems = {}, []
    for key in sorted(tensors):
        if key.endswith(".lora_a"):
            name = key[: -len(".lora_a")]
            b = tensors.get(name + ".lora_b")
            a = tensors[key]
            if b is None:
                problems.append(f"{name}: lora_a without lora_b")
                continue
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
                problems.append(f"{name}: lora_a {a.shape} and lora_b {b.shape} do not chain")
                continue
            modules[name] = LoraModule(a.astype(np.float32), b.astype(np.float32), float(params["scale"]))
        elif not key.endswith(".lora_b"):
            problems.append(f"{key}: not a LoRA tensor (only lora_a/lora_b are supported)")
    if problems:
        raise AdapterError(f"{folder / MLX_WEIGHTS}: " + "; ".join(problems))
    return LoraWeights(modules, "mlx", base_model=config.get("model"), dropout=float(params.get("dropout", 0.0)))


def _peft_scale(config: dict, short: str, rank: int) -> float:
    alpha = config.get("lora_alpha", rank)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", short):  # PEFT's get_pattern_key: first match wins
            alpha = value
            break
    root = math.sqrt(rank) if config.get("use_rslora") else rank
    return float(alpha) / root


def _read_peft(folder: Path, config: dict) -> LoraWeights:
    if config.get("peft_type", "LORA").upper() != "LORA":
        raise AdapterError(f"{folder}: peft_type {config.get('peft_type')!r} is not LoRA")
    if config.get("use_dora"):
        raise AdapterError(f"{folder}: DoRA adapters cannot be hot-swapped; merge it into the model instead")
    # Options that change the computation in ways LoraModule cannot hold: refuse, never half-apply.
    unsupported = [k for k in ("lora_bias", "fan_in_fan_out", "layer_replication") if config.get(k)]
    if unsupported:
        raise AdapterError(f"{folder}/adapter_config.json uses {', '.join(unsupported)}, which LoRA Desk cannot "
                           "apply; merge the adapter into the model instead")
    tensors = _load_tensors_any(folder / PEFT_WEIGHTS)
    modules, problems = {}, []
    for key in sorted(tensors):
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                problems.append(f"{key}: not a LoRA A/B tensor (modules_to_save, embeddings and biases are not supported)")
            continue
        prefix = key.split(".lora_A.")[0]
        b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        a = tensors[key]
        if b is None:
            problems.append(f"{prefix}: lora_A without lora_B")
            continue
        name = prefix.removeprefix("base_model.model.")
        rank = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != rank:
            problems.append(f"{name}: lora_A {a.shape} and lora_B {b.shape} do not chain")
            continue
        modules[name] = LoraModule(
            np.ascontiguousarray(a.T.astype(np.float32)),
            np.ascontiguousarray(b.T.astype(np.float32)),
            _peft_scale(config, name, rank),
        )
    if problems:
        raise AdapterError(f"{folder / PEFT_WEIGHTS}: " + "; ".join(problems))
    return LoraWeights(
        modules, "peft", base_model=config.get("base_model_name_or_path"),
        dropout=float(config.get("lora_dropout", 0.0)),
    )
