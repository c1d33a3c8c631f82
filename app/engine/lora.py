"""A LoRA adapter in the engine-neutral form every format is read into: per module, A (in, r),
B (r, out) and a scale, so that y = W x + scale * (x A) B. Module names are the model's own
(`model.layers.3.self_attn.q_proj`), the same in mlx-lm and transformers for Qwen2, Llama and Gemma2.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METADATA_FILE = "loradesk.json"  # our own facts (base model, fingerprint, training run); optional
MLX_WEIGHTS = "adapters.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Architecture facts that must agree between an adapter's base model and the loaded one.
FINGERPRINT_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
    "num_attention_heads", "num_key_value_heads", "vocab_size",
)


@dataclass
class LoraModule:
    a: np.ndarray  # (in, r)
    b: np.ndarray  # (r, out)
    scale: float

    @property
    def rank(self) -> int:
        return self.a.shape[1]


@dataclass
class LoraWeights:
    modules: dict[str, LoraModule]
    format: str  # the format it was read from
    base_model: str | None = None
    fingerprint: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)  # the loradesk.json contents, if any
    dropout: float = 0.0

    @property
    def rank(self) -> int:
        return max((m.rank for m in self.modules.values()), default=0)

    @property
    def scale(self) -> float:
        return next(iter(self.modules.values())).scale if self.modules else 0.0

    def nbytes(self) -> int:
        return sum(m.a.nbytes + m.b.nbytes for m in self.modules.values())

    def target_modules(self) -> list[str]:
        return sorted({k.rsplit(".", 1)[-1] for k in self.modules})

    def layer_indices(self) -> list[int]:
        out = set()
        for k in self.modules:
            parts = k.split(".")
            if "layers" in parts:
                out.add(int(parts[parts.index("layers") + 1]))
        return sorted(out)


def fingerprint_of(config: dict) -> dict:
    """The architecture facts of a model's config.json (text_config for multimodal wrappers)."""
    cfg = config.get("text_config", config)
    fp = {k: cfg.get(k) for k in FINGERPRINT_KEYS if cfg.get(k) is not None}
    if "num_key_value_heads" not in fp and "num_attention_heads" in fp:
        fp["num_key_value_heads"] = fp["num_attention_heads"]
    return fp

