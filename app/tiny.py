"""Tiny random models and adapters, built locally: for tests and `loradesk self-test`.

A model folder in the Hugging Face layout (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json with a ChatML template) that both mlx-lm and transformers load. Weights are
random numpy arrays; the tokenizer is a real byte-level BPE trained with `tokenizers` on the task
examples. Needs neither torch nor mlx, so a bundle without torch can still build one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.engine.adapter_check import linear_shapes_from_config
from app.engine.adapter_write import write_mlx
from app.engine.lora import LoraModule, LoraWeights, fingerprint_of
from app.tasks import load_tasks

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ARCHS = ("qwen2", "llama", "gemma2")


def _corpus() -> list[str]:
    lines = []
    for t in load_tasks().values():
        lines += [t.system_prompt, t.user_template, t.example_input, t.example_output]
    lines += ["def f(x):\n    return x * 2\n", "The answer is 72.", "0123456789 + - * / = ( ) « »"]
    return lines


def build_tokenizer(out: Path, vocab_size: int = 512) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "model_max_length": 2048,
        "chat_template": CHATML,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2)
    )


def _config(arch: str, vocab: int, eos: int, pad: int, hidden: int, layers: int) -> dict:
    heads, kv, head_dim = 4, 2, hidden // 4
    common = {
        "model_type": arch, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "head_dim": head_dim, "vocab_size": vocab, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "eos_token_id": eos, "pad_token_id": pad,
        "bos_token_id": None, "torch_dtype": "float32", "dtype": "float32",
    }
    if arch == "qwen2":
        return {**common, "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu",
                "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": None}
    if arch == "llama":
        return {**common, "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
                "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False}
    if arch == "gemma2":
        return {**common, "architectures": ["Gemma2ForCausalLM"], "hidden_act": "gelu_pytorch_tanh",
                "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
                "query_pre_attn_scalar": head_dim, "sliding_window": 4096,
                "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                "cache_implementation": "hybrid"}
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHS}")


def _weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    arch = cfg["model_type"]
    # Gemma's RMSNorm multiplies by (1 + w): its neutral weight is 0, the others' is 1.
    norm = np.zeros if arch == "gemma2" else np.ones

    def mat(out_f, in_f):  # PyTorch layout (out, in), std ~ 1/sqrt(in) keeps activations sane
        return (rng.standard_normal((out_f, in_f)) / np.sqrt(in_f)).astype(np.float32)

    w = {"model.embed_tokens.weight": (0.1 * rng.standard_normal((v, h))).astype(np.float32),
         "model.norm.weight": norm(h, dtype=np.float32)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        w.update({
            p + "self_attn.q_proj.weight": mat(q, h), p + "self_attn.k_proj.weight": mat(kv, h),
            p + "self_attn.v_proj.weight": mat(kv, h), p + "self_attn.o_proj.weight": mat(h, q),
            p + "mlp.gate_proj.weight": mat(i, h), p + "mlp.up_proj.weight": mat(i, h),
            p + "mlp.down_proj.weight": mat(h, i),
            p + "input_layernorm.weight": norm(h, dtype=np.float32),
            p + "post_attention_layernorm.weight": norm(h, dtype=np.float32),
        })
        if arch == "qwen2":
            for k, size in (("q", q), ("k", kv), ("v", kv)):
                w[p + f"self_attn.{k}_proj.bias"] = (0.02 * rng.standard_normal(size)).astype(np.float32)
        if arch == "gemma2":
            w[p + "pre_feedforward_layernorm.weight"] = norm(h, dtype=np.float32)
            w[p + "post_feedforward_layernorm.weight"] = norm(h, dtype=np.float32)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(v, h)
    return w


def build_tiny_model(out: str | Path, arch: str = "qwen2", seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Write a tiny random model of `arch` to `out` (HF layout, float32)."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    vocab += (-vocab) % 64  # padded to a multiple of 64 so 4-bit quantization (group 64) applies
    cfg = _config(arch, vocab, tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>"), hidden, layers)
    save_file(_weights(cfg, np.random.default_rng(seed)), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": cfg["eos_token_id"], "do_sample": False}))
    return out


def random_adapter(
    model_dir: str | Path,
    seed: int = 1,
    rank: int = 8,
    scale: float = 2.0,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    layers: list[int] | None = None,
) -> LoraWeights:
    """Random non-zero LoRA weights for the model in `model_dir` (B non-zero, so it changes outputs)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return random_adapter_for(linear_shapes_from_config(cfg), fingerprint_of(cfg), str(model_dir), seed, rank,
                              scale, targets, layers)


def random_adapter_for(shapes: dict[str, tuple[int, int]], fingerprint: dict, base_model: str | None,
                       seed: int = 1, rank: int = 8, scale: float = 2.0,
                       targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"),
                       layers: list[int] | None = None) -> LoraWeights:
    """Random LoRA weights for the linear layers `shapes` ({module: (in, out)}, e.g. an engine's
    `linear_shapes()`), whatever the model's file format."""
    rng = np.random.default_rng(seed)
    modules = {}
    for name, (fin, fout) in shapes.items():  # in the given order: the draws follow it
        layer = int(name.split("layers.", 1)[1].split(".", 1)[0])
        if name.rsplit(".", 1)[-1] not in targets or (layers is not None and layer not in layers):
            continue
        a = (rng.standard_normal((fin, rank)) / np.sqrt(fin)).astype(np.float32)
        b = (rng.standard_normal((rank, fout)) / np.sqrt(rank)).astype(np.float32)
        modules[name] = LoraModule(a, b, scale)
    return LoraWeights(modules, "mlx", base_model=base_model, fingerprint=dict(fingerprint))


def write_random_adapter(model_dir, out, **kw) -> Path:
    return write_mlx(random_adapter(model_dir, **kw), out)
