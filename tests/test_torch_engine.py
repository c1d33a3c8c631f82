"""The transformers + PEFT engine: resident adapters, shared-state hot swap, validation, cancel."""
import json
import shutil
import threading

import numpy as np
import pytest

from app.engine import create_engine
from app.errors import AdapterError, EngineError
from app.tasks import GenerationSettings, get_task

GREEDY = GenerationSettings(max_tokens=16)
MSGS = get_task("math").messages("What is 6 times 7?")
TASKS = ("math", "code", "summarize", "paraphrase")


def _engine(model, adapters=None):
    e = create_engine("torch")
    e.load(model)
    for name, folder in (adapters or {}).items():
        e.add_adapter(name, folder)
    return e


@pytest.fixture(scope="module")
def qwen_engine(tiny_models, tiny_adapters):
    return _engine(tiny_models["qwen2"], tiny_adapters["qwen2"])


def test_switching_changes_output_and_back_reproduces(qwen_engine):
    e = qwen_engine
    assert e.kind == "torch" and e.device == "cpu (float32)"
    e.activate(None)
    base = e.generate(MSGS, GREEDY)
    outs = {}
    for task in TASKS:
        e.activate(task)
        outs[task] = e.generate(MSGS, GREEDY)
        assert outs[task] != base, f"adapter {task} did not change the greedy output"
    assert len(set(outs.values())) == 4
    for task in ("paraphrase", "math", "code"):  # back and forth, token for token
        e.activate(task)
        assert e.generate(MSGS, GREEDY) == outs[task]
    e.activate(None)
    assert e.generate(MSGS, GREEDY) == base


def test_every_lora_layer_reads_the_one_shared_state(qwen_engine):
    from peft.tuners.lora import LoraLayer

    e = qwen_engine
    layers = [m for m in e.model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 14  # 2 layers x 7 projections: adapters with other targets share wrappers
    for name in ("code", None, "summarize"):
        e.activate(name)
        assert all(layer.active_adapters == ([name] if name else []) for layer in layers)
    # PEFT's own set_adapter writes a field the layers no longer read: it cannot desynchronise them.
    e.peft_model.base_model.set_adapter("math")
    assert all(layer.active_adapters == ["summarize"] for layer in layers)


def test_matches_peft_set_adapter_and_disable_adapter(tiny_qwen, tiny_adapters, qwen_engine):
    """Our shared-state switch computes what PEFT's own set_adapter / disable_adapter compute."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from app.engine.adapter_format import read_adapter
    from app.engine.adapter_write import write_peft

    e = qwen_engine
    prompt = e.chat_prompt(MSGS)
    ids = torch.tensor([e.encode(prompt)])
    ref = None
    for i, task in enumerate(TASKS):
        folder = write_peft(read_adapter(tiny_adapters["qwen2"][task]), e.model_info.path.parent / f"peft-{task}")
        if ref is None:
            ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_qwen)), str(folder),
                                            adapter_name=task)
        else:
            ref.load_adapter(str(folder), adapter_name=task)
    with torch.no_grad():
        for task in TASKS:
            ref.set_adapter(task)
            e.activate(task)
            np.testing.assert_allclose(e.next_token_logits(prompt), ref(ids).logits[0, -1].numpy(), atol=1e-5)
        e.activate(None)
        with ref.disable_adapter():
            np.testing.assert_allclose(e.next_token_logits(prompt), ref(ids).logits[0, -1].numpy(), atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_other_architectures(tiny_models, tiny_adapters, arch):
    e = _engine(tiny_models[arch], {"math": tiny_adapters[arch]["math"]})
    base = e.generate(MSGS, GREEDY)
    e.activate("math")
    assert e.generate(MSGS, GREEDY) != base
    e.activate(None)
    assert e.generate(MSGS, GREEDY) == base


def test_remove_and_readd_adapter(tiny_qwen, tiny_adapters):
    a = tiny_adapters["qwen2"]
    e = _engine(tiny_qwen, {"math": a["math"], "code": a["code"]})
    e.activate("code")
    with_code = e.generate(MSGS, GREEDY)
    e.remove_adapter("code")
    assert e.active is None and "code" not in e.adapters
    with pytest.raises(EngineError, match="not found"):
        e.activate("code")
    e.activate("math")
    e.generate(MSGS, GREEDY)
    e.add_adapter("code", a["code"])
    e.activate("code")
    assert e.generate(MSGS, GREEDY) == with_code


def _bad_adapters(tmp_path, tiny_models, tiny_adapters) -> dict:
    good = tiny_adapters["qwen2"]["math"]
    bad = {}
    bad["wrong base"] = tiny_adapters["llama"]["math"]
    shape = tmp_path / "wrong-shape"
    from app.engine.adapter_format import read_adapter
    from app.engine.adapter_write import write_mlx, write_peft

    w = read_adapter(good)
    name = next(iter(w.modules))
    w.modules[name].a = np.ones((w.modules[name].a.shape[0] + 8, w.modules[name].rank), np.float32)
    w.fingerprint = {}
    write_mlx(w, shape)
    bad["wrong shape"] = shape
    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    data = (corrupt / "adapters.safetensors").read_bytes()
    (corrupt / "adapters.safetensors").write_bytes(data[: len(data) // 2])
    bad["corrupt safetensors"] = corrupt
    bad["missing folder"] = tmp_path / "does-not-exist"
    pickle = tmp_path / "pickle"
    pickle.mkdir()
    (pickle / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (pickle / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    bad["pickle .bin"] = pickle
    unknown = tmp_path / "unknown-target"
    w = read_adapter(good)
    w.modules["model.layers.0.self_attn.qkv_fused"] = w.modules.pop(name)
    write_mlx(w, unknown)
    bad["unknown target module"] = unknown
    biased = write_peft(read_adapter(good), tmp_path / "peft-lora-bias")
    config = json.loads((biased / "adapter_config.json").read_text())
    (biased / "adapter_config.json").write_text(json.dumps({**config, "lora_bias": True}))
    bad["unsupported PEFT option"] = biased
    return bad


def test_bad_adapters_give_clear_errors_and_engine_keeps_working(tmp_path, tiny_models, tiny_adapters):
    e = _engine(tiny_models["qwen2"], {"code": tiny_adapters["qwen2"]["code"]})
    base = e.generate(MSGS, GREEDY)
    e.activate("code")
    with_code = e.generate(MSGS, GREEDY)
    expected = {
        "wrong base": "trained for", "wrong shape": "does not fit", "corrupt safetensors": "corrupt",
        "missing folder": "does not exist", "pickle .bin": "never unpickles",
        "unknown target module": "no such linear layer", "unsupported PEFT option": "lora_bias",
    }
    for what, folder in _bad_adapters(tmp_path, tiny_models, tiny_adapters).items():
        with pytest.raises(AdapterError) as err:
            e.add_adapter("bad", folder)
        assert expected[what] in str(err.value), what
        assert str(folder.name) in str(err.value), f"{what}: the error does not name the folder"
        assert "bad" not in e.adapters and "bad" not in (e.peft_model.peft_config if e.peft_model else {})
        assert e.active == "code" and e.generate(MSGS, GREEDY) == with_code, what
    e.activate(None)
    assert e.generate(MSGS, GREEDY) == base


def test_mlx_quantized_folder_is_refused(tiny_qwen_4bit):
    with pytest.raises(EngineError, match="MLX-quantized"):
        create_engine("torch").load(tiny_qwen_4bit)


def test_cancel_stops_generation(qwen_engine):
    cancel = threading.Event()
    chunks = []
    for chunk in qwen_engine.stream_generate(MSGS, GenerationSettings(max_tokens=200), cancel):
        chunks.append(chunk)
        if len(chunks) == 3:
            cancel.set()
    assert chunks[-1].finish_reason == "cancelled"
    # The loop sees the Stop before its next forward call: no 4th token is computed.
    assert len(chunks) == 4 and chunks[-1].generation_tokens == 3


def test_stream_stats_and_length_limit(qwen_engine):
    qwen_engine.activate("math")
    chunks = list(qwen_engine.stream_generate(MSGS, GenerationSettings(max_tokens=5)))
    last = chunks[-1]
    assert last.finish_reason in ("length", "stop") and last.generation_tokens <= 5
    assert last.prompt_tokens == len(qwen_engine.encode(qwen_engine.chat_prompt(MSGS)))
    assert last.generation_tps > 0 and last.peak_memory > 0


def test_loglikelihood_agrees_with_greedy_output(qwen_engine):
    e = qwen_engine
    e.activate("paraphrase")
    prompt = e.chat_prompt(MSGS)
    tokens = e.encode(prompt)
    logits = e.next_token_logits(prompt)
    best = int(np.argmax(logits))
    cont = e.decode([best])
    ll, greedy = e.loglikelihood(prompt, cont)
    if e.encode(prompt + cont)[len(tokens):] == [best]:  # the text re-encodes to the same token
        expected = logits[best] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        assert ll == pytest.approx(float(expected), abs=1e-4)
        assert greedy
    ll2, greedy2 = e.loglikelihood(prompt, cont + " and then some more words")
    assert ll2 < ll and not greedy2


def test_memory_counts_resident_adapters_once(tiny_qwen, tiny_adapters):
    e = _engine(tiny_qwen)
    base = e.memory_bytes()
    e.add_adapter("math", tiny_adapters["qwen2"]["math"])
    added = e.memory_bytes() - base
    from app.engine.adapter_format import read_adapter

    assert added == read_adapter(tiny_adapters["qwen2"]["math"]).nbytes()  # float32, one copy
    for i in range(1000):
        e.activate("math" if i % 2 else None)
    assert e.memory_bytes() == base + added


def test_info_reports_torch_device(tiny_qwen, capsys):
    from app.cli import main

    assert main(["info", "--engine", "torch", "--model", str(tiny_qwen)]) == 0
    out = capsys.readouterr().out
    assert "engine:   torch" in out and "device:   cpu (float32)" in out


def test_fast_lora_forward_equals_peft_forward(tiny_qwen, tiny_adapters):
    """The engine's short LoRA forward computes exactly what PEFT's own forward does."""
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    e = _engine(tiny_qwen, {"math": tiny_adapters["qwen2"]["math"], "code": tiny_adapters["qwen2"]["code"]})
    layers = [m for m in e.model.modules() if isinstance(m, LoraLinear)]
    assert layers and all(type(m).forward is not LoraLinear.forward for m in layers)
    torch.manual_seed(0)
    for name in ("math", "code", None):
        e.activate(name)
        changed = 0
        for layer in layers:
            x = torch.randn(2, 3, layer.in_features, dtype=layer.base_layer.weight.dtype)
            fast = layer(x)
            assert torch.equal(fast, LoraLinear.forward(layer, x))
            changed += not torch.equal(fast, layer.base_layer(x))
        assert (changed > 0) == (name is not None)  # the adapter is applied where it has weights
