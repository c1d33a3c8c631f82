"""`loradesk adapters export`: PEFT folders load unchanged with PeftModel.from_pretrained (what vLLM
and LoRAX serve) and compute what the engines compute; MLX folders load with mlx-lm."""
import json
import warnings

import numpy as np
import pytest

from app.cli import main
from app.engine import create_engine
from app.engine.adapter_format import read_adapter
from app.engine.adapter_write import write_peft
from app.engine.lora import LoraModule, LoraWeights
from app.tasks import get_task
from app.tiny import random_adapter
from tests.test_parity import write_real_peft_adapter

ATOL = 1e-4


def _prompt_ids(engine):
    prompt = engine.chat_prompt(get_task("code").messages("Write a function that doubles a number."))
    return prompt, engine.encode(prompt)


def _peft_logits(model_dir, adapter_dir, ids):
    """Plain PEFT, no LoRA Desk code: logits and the number of LoRA layers it created."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(adapter_dir))
    problems = [str(w.message) for w in caught if "missing" in str(w.message).lower()
                or "unexpected" in str(w.message).lower()]
    assert not problems, problems
    layers = sum(isinstance(m, LoraLayer) for m in model.modules())
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy(), layers


@pytest.mark.parametrize("task", ["math", "summarize", "code"])
def test_cli_export_mlx_adapter_to_peft(tiny_qwen, tiny_adapters, tmp_path, capsys, task):
    source = tiny_adapters["qwen2"][task]  # math: all layers; summarize: MLP of layer 1; code: q/v rank 4
    assert main(["adapters", "add", task, str(source)]) == 0
    assert "found a MLX adapter" in capsys.readouterr().out
    out = tmp_path / "exported"
    assert main(["adapters", "export", task, "--format", "peft", "--out", str(out),
                 "--base-model", "Qwen/Qwen2.5-0.5B-Instruct"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (out / "adapter_model.safetensors").exists()
    if task == "summarize":
        assert config["layers_to_transform"] == [1] and config["target_modules"] == ["down_proj", "gate_proj", "up_proj"]

    mlx = create_engine("mlx")
    mlx.load(tiny_qwen)
    mlx.add_adapter(task, source)
    mlx.activate(task)
    prompt, ids = _prompt_ids(mlx)
    expected = mlx.next_token_logits(prompt)
    got, layers = _peft_logits(tiny_qwen, out, ids)
    assert layers == len(read_adapter(source).modules)  # exactly the adapter's modules, no extras
    assert float(np.abs(got - expected).max()) < ATOL


def test_cli_export_peft_adapter_to_mlx_loads_in_mlx_lm(tiny_qwen, tmp_path, capsys):
    import mlx.core as mx
    import mlx_lm

    from app.engine import mlx_thread

    source = write_real_peft_adapter(tiny_qwen, tmp_path / "peft-src", seed=3)
    assert main(["adapters", "add", "paraphrase", str(source)]) == 0
    assert "found a PEFT adapter" in capsys.readouterr().out
    out = tmp_path / "as-mlx"
    assert main(["adapters", "export", "paraphrase", "--format", "mlx", "--out", str(out)]) == 0
    torch_ = create_engine("torch")
    torch_.load(tiny_qwen)
    torch_.add_adapter("p", source)
    torch_.activate("p")
    prompt, ids = _prompt_ids(torch_)

    def mlx_lm_logits():
        model, _ = mlx_lm.load(str(tiny_qwen), adapter_path=str(out))
        return np.array(model(mx.array(ids)[None])[0, -1].astype(mx.float32))

    assert float(np.abs(mlx_thread.call(mlx_lm_logits) - torch_.next_token_logits(prompt)).max()) < ATOL


def test_write_peft_mixed_ranks_scales_and_layers(tiny_qwen, tmp_path):
    """Per-module ranks and scales and a ragged module set: full names + rank/alpha patterns."""
    a = random_adapter(tiny_qwen, seed=5, rank=8, scale=2.0, targets=("q_proj", "v_proj"))
    b = random_adapter(tiny_qwen, seed=6, rank=4, scale=0.5, targets=("down_proj",), layers=[0])
    modules = {**a.modules, **b.modules}
    modules.pop("model.layers.1.self_attn.v_proj")
    m = modules["model.layers.0.self_attn.q_proj"]
    modules["model.layers.0.self_attn.q_proj"] = LoraModule(m.a, m.b, 3.0)
    weights = LoraWeights(modules, "mlx", base_model=str(tiny_qwen), fingerprint=a.fingerprint)
    out = write_peft(weights, tmp_path / "mixed")
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(modules) and config["layers_to_transform"] is None
    assert config["rank_pattern"] == {"model.layers.0.mlp.down_proj": 4}

    back = read_adapter(out)  # our reader: the same weights and scales
    assert set(back.modules) == set(modules)
    for name, mod in modules.items():
        np.testing.assert_array_equal(back.modules[name].a, mod.a)
        np.testing.assert_array_equal(back.modules[name].b, mod.b)
        assert back.modules[name].scale == pytest.approx(mod.scale)

    torch_ = create_engine("torch")
    torch_.load(tiny_qwen)
    torch_.add_weights("mixed", weights)
    torch_.activate("mixed")
    prompt, ids = _prompt_ids(torch_)
    got, layers = _peft_logits(tiny_qwen, out, ids)  # PEFT applies the same per-module scales
    assert layers == len(modules)
    assert float(np.abs(got - torch_.next_token_logits(prompt)).max()) < ATOL


def test_export_refuses_to_overwrite_and_needs_an_adapter(tiny_adapters, tmp_path, capsys):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    assert main(["adapters", "export", "math", "--format", "peft", "--out", str(occupied)]) == 2
    assert "no adapter to export" in capsys.readouterr().err
    assert main(["adapters", "add", "math", str(tiny_adapters["qwen2"]["math"])]) == 0
    assert main(["adapters", "export", "math", "--format", "peft", "--out", str(occupied)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and str(occupied) in err
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
