"""The supported base models: one choice per model, with its repo in each engine's format."""
from __future__ import annotations

from dataclasses import dataclass


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


def default_model(engine: str) -> str:
    return SUPPORTED[DEFAULT_INDEX].repo_for(engine)
