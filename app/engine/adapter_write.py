"""Writing adapter folders in the two formats (see adapter_format), atomically: a half-written
folder never replaces a good one."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from app.engine.lora import METADATA_FILE, MLX_WEIGHTS, PEFT_WEIGHTS, LoraWeights


def atomic_folder(out: Path):
    """A temp folder beside `out`; call the returned commit() to move it into place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))

    def commit():
        if out.exists():
            old = out.with_name(out.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)

    return tmp, commit


def write_metadata(folder: Path, weights: LoraWeights) -> None:
    meta = dict(weights.metadata)
    if weights.base_model:
        meta["base_model"] = weights.base_model
    if weights.fingerprint:
        meta["fingerprint"] = weights.fingerprint
    (Path(folder) / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def write_mlx(weights: LoraWeights, out: str | Path) -> Path:
    """Write an mlx-lm adapter folder (loadable by `mlx_lm.load(..., adapter_path=out)`).

    mlx-lm has one rank and scale per adapter; modules with another scale get it folded into B,
    and lower-rank modules are zero-padded to the adapter's rank (the product is unchanged).
    mlx-lm adapts the last `num_layers` layers; modules it adapts that the file lacks keep B = 0.
    """
    from safetensors.numpy import save_file

    scale, rank = weights.scale, weights.rank
    tensors = {}
    for name, m in weights.modules.items():
        pad = rank - m.rank
        tensors[f"{name}.lora_a"] = np.pad(m.a, ((0, 0), (0, pad))).astype(np.float32)
        tensors[f"{name}.lora_b"] = np.pad(m.b * (m.scale / scale), ((0, pad), (0, 0))).astype(np.float32)
    layers = weights.layer_indices()
    total = weights.fingerprint.get("num_hidden_layers")
    config = {
        "fine_tune_type": "lora",
        "num_layers": total - layers[0] if total and layers else len(layers),
        "lora_parameters": {
            "rank": weights.rank,
            "scale": scale,
            "dropout": weights.dropout,
            "keys": sorted({k.split("layers.", 1)[-1].split(".", 1)[-1] for k in weights.modules}),
        },
    }
    if weights.base_model:
        config["model"] = weights.base_model
    tmp, commit = atomic_folder(Path(out))
    save_file(tensors, str(tmp / MLX_WEIGHTS))
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_metadata(tmp, weights)
    commit()
    return Path(out)


def _peft_targets(weights: LoraWeights) -> tuple[list[str], list[int] | None]:
    """PEFT's `target_modules` (+ `layers_to_transform`) selecting exactly the adapter's modules:
    short names when the adapter covers every listed module in each of its layers, else full names."""
    keys = {k.split(".layers.", 1)[-1].split(".", 1)[-1] for k in weights.modules}
    shorts = sorted({k.rsplit(".", 1)[-1] for k in keys})
    layers = weights.layer_indices()
    prefixes = {k.split(".layers.", 1)[0] for k in weights.modules if ".layers." in k}
    rect = {f"{p}.layers.{n}.{k}" for p in prefixes for n in layers for k in keys}
    if len(shorts) != len(keys) or len(prefixes) != 1 or rect != set(weights.modules):
        return sorted(weights.modules), None
    n_layers = weights.fingerprint.get("num_hidden_layers")
    every = n_layers is not None and layers == list(range(n_layers))
    return shorts, None if every else layers


def write_peft(weights: LoraWeights, out: str | Path, base_model_name: str | None = None) -> Path:
    """Write a PEFT LoRA folder that `PeftModel.from_pretrained(base, out)` (and vLLM/LoRAX) load
    unchanged. Modules whose rank or scale differ from the first get rank_pattern/alpha_pattern
    entries by full module name (PEFT matches them as `(.*\\.)?name$`)."""
    from safetensors.numpy import save_file

    first = next(iter(weights.modules.values()))
    r0, s0 = first.rank, first.scale
    tensors, rank_pattern, alpha_pattern = {}, {}, {}
    for name, m in weights.modules.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = np.ascontiguousarray(m.a.T, dtype=np.float32)
        tensors[f"base_model.model.{name}.lora_B.weight"] = np.ascontiguousarray(m.b.T, dtype=np.float32)
        if m.rank != r0:
            rank_pattern[name] = m.rank
        if m.rank != r0 or not math.isclose(m.scale, s0, rel_tol=1e-6):
            alpha_pattern[name] = m.scale * m.rank  # scale = alpha / r
    targets, layers = _peft_targets(weights)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name or weights.base_model,
        "r": r0,
        "lora_alpha": s0 * r0,
        "lora_dropout": weights.dropout,
        "target_modules": targets,
        "layers_to_transform": layers,
        "layers_pattern": "layers" if layers is not None else None,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    tmp, commit = atomic_folder(Path(out))
    save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_metadata(tmp, weights)
    commit()
    return Path(out)
