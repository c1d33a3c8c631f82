"""A tiny HF model (app/tiny.py) written as a GGUF file the way llama.cpp's converter writes it:
tensor names from the `gguf` package's map, the llama architecture's q/k rows permuted, the BPE
vocabulary padded to the model's vocab size. For tests and `loradesk self-test` (no download)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.engine.gguf_lora import PERMUTED_ARCHS, permute_rows


def write_tiny_gguf(model_dir: str | Path, out: str | Path, qtype: str = "F32") -> Path:
    """Write the tiny qwen2 or llama model in `model_dir` to `out` (F32, or F16, Q8_0 or Q5_0 matrices)."""
    import gguf
    from safetensors.numpy import load_file

    model_dir, out = Path(model_dir), Path(out)
    cfg = json.loads((model_dir / "config.json").read_text())
    arch = cfg["model_type"]
    if arch not in ("qwen2", "llama"):
        raise ValueError(f"tiny GGUF files are written for qwen2 and llama, not {arch!r}")
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if arch == "llama":
        w.add_rope_dimension_count(cfg["head_dim"])
        w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                     "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0}[qtype])
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    by_id = {i: t for t, i in {**tok["model"]["vocab"], **added}.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(cfg["vocab_size"])]  # vocab padded like llama.cpp
    types = [gguf.TokenType.CONTROL if t in added else gguf.TokenType.NORMAL if i in by_id
             else gguf.TokenType.UNUSED for i, t in enumerate(tokens)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # the tiny tokenizer's pre-tokenizer is GPT-2's byte-level regex
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token(False)
    w.add_chat_template(json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"])
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    names = gguf.get_tensor_name_map(arch_enum, cfg["num_hidden_layers"])
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for key, arr in load_file(str(model_dir / "model.safetensors")).items():
        if arch in PERMUTED_ARCHS and key.endswith("q_proj.weight"):
            arr = permute_rows(arr, heads)
        elif arch in PERMUTED_ARCHS and key.endswith("k_proj.weight"):
            arr = permute_rows(arr, kv_heads)
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if qtype in ("Q8_0", "Q5_0") and arr.ndim == 2:
            kind = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(name, gguf.quants.quantize(arr, kind), raw_dtype=kind)
        elif qtype == "F16" and arr.ndim == 2:
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float16))
        else:
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
