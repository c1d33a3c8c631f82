"""Parity of the two engines, measured: one tiny unquantized model, adapters in each format, loaded
into both engines; next-token logits agree and greedy answers are identical, for the base model and
for each adapter, in both directions of conversion (PEFT -> MLX engine, MLX format -> torch engine).
"""
import numpy as np
import pytest

from app.engine import create_engine
from app.tasks import GenerationSettings, get_task

ATOL = 1e-4  # float32 both sides; measured differences are ~1e-6
GREEDY20 = GenerationSettings(max_tokens=20)


def write_real_peft_adapter(model_dir, out, seed=0, **options):
    """An adapter saved by PEFT itself: per-module ranks and alphas, non-zero lora_B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    options = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
               "rank_pattern": {"up_proj": 4}, "alpha_pattern": {"down_proj": 32.0}, "lora_dropout": 0.0, **options}
    config = LoraConfig(**options)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir)), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)  # PEFT initialises B to zero: an untrained adapter has no effect
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def peft_adapter(tiny_qwen, tmp_path_factory):
    return write_real_peft_adapter(tiny_qwen, tmp_path_factory.mktemp("peft") / "peft-lora")


@pytest.fixture(scope="module")
def engines(tiny_qwen, tiny_adapters, peft_adapter):
    mlx_adapter = tiny_adapters["qwen2"]["summarize"]  # rank 16, MLP only, layer 1 only
    out = {}
    for kind in ("mlx", "torch"):
        e = create_engine(kind)
        e.load(tiny_qwen)
        e.add_adapter("from_peft", peft_adapter)
        e.add_adapter("from_mlx", mlx_adapter)
        out[kind] = e
    return out


def _prompt(engine):
    return engine.chat_prompt(get_task("code").messages("Write a function that doubles a number."))


@pytest.mark.parametrize("adapter", [None, "from_peft", "from_mlx"])
def test_next_token_logits_and_greedy_answers_agree(engines, adapter):
    mlx, torch_ = engines["mlx"], engines["torch"]
    assert mlx.adapters["from_peft"].format == torch_.adapters["from_peft"].format == "peft"
    assert mlx.adapters["from_mlx"].format == torch_.adapters["from_mlx"].format == "mlx"
    prompt = _prompt(mlx)
    assert prompt == _prompt(torch_)
    assert mlx.encode(prompt) == torch_.encode(prompt)
    for e in (mlx, torch_):
        e.activate(adapter)
    a, b = mlx.next_token_logits(prompt), torch_.next_token_logits(prompt)
    diff = float(np.abs(a - b).max())
    assert diff < ATOL, f"max |logit diff| {diff:.2e} for adapter {adapter}"
    assert int(a.argmax()) == int(b.argmax())
    # 20 positions, not just one: each engine's own greedy answer.
    answers = {}
    for e in (mlx, torch_):
        chunks = list(e.stream_generate(prompt, GREEDY20))
        answers[e.kind] = ("".join(c.text for c in chunks), chunks[-1].generation_tokens, chunks[-1].finish_reason)
    assert answers["mlx"] == answers["torch"]
    assert answers["torch"][1:] == (20, "length")  # the seeded tiny model never says EOS this early
    for e in (mlx, torch_):
        e.activate(None)


@pytest.mark.parametrize("adapter", ["from_peft", "from_mlx"])
def test_each_adapter_really_changes_the_model(engines, adapter):
    """Guards against the classic conversion failure: an adapter that loads but has no effect."""
    for e in engines.values():
        prompt = _prompt(e)
        e.activate(None)
        base = e.next_token_logits(prompt)
        e.activate(adapter)
        assert float(np.abs(e.next_token_logits(prompt) - base).max()) > 0.05, f"{e.kind}: {adapter} has no effect"
        e.activate(None)


def test_engines_match_plain_peft_on_the_original_folder(engines, tiny_qwen, peft_adapter):
    """The reference: PeftModel.from_pretrained on the adapter exactly as PEFT saved it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_qwen)), str(peft_adapter))
    prompt = _prompt(engines["torch"])
    with torch.no_grad():
        expected = ref(torch.tensor([engines["torch"].encode(prompt)])).logits[0, -1].numpy()
    for e in engines.values():
        e.activate("from_peft")
        assert float(np.abs(e.next_token_logits(prompt) - expected).max()) < ATOL, e.kind
        e.activate(None)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_other_architectures_agree(tiny_models, tiny_adapters, arch):
    """Llama (untied head) and Gemma2 (soft-capping, (1 + w) norms): base and an MLX-format adapter."""
    pair = []
    for kind in ("mlx", "torch"):
        e = create_engine(kind)
        e.load(tiny_models[arch])
        e.add_adapter("math", tiny_adapters[arch]["math"])
        pair.append(e)
    prompt = _prompt(pair[0])
    for adapter in (None, "math"):
        for e in pair:
            e.activate(adapter)
        a, b = (e.next_token_logits(prompt) for e in pair)
        assert float(np.abs(a - b).max()) < ATOL and a.argmax() == b.argmax(), (arch, adapter)
        assert pair[0].generate(prompt, GREEDY20) == pair[1].generate(prompt, GREEDY20), (arch, adapter)


def test_rslora_regex_patterns_and_layer_subset(tiny_qwen, tmp_path):
    """PEFT options that change the scale per module: rsLoRA (alpha / sqrt r), regex alpha/rank
    patterns (PEFT matches `(.*\\.)?pattern$`, first match wins), layers_to_transform."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = write_real_peft_adapter(
        tiny_qwen, tmp_path / "rslora", seed=4, use_rslora=True, layers_to_transform=[1], layers_pattern="layers",
        target_modules=["q_proj", "k_proj", "gate_proj"], rank_pattern={"k_proj": 2},
        alpha_pattern={r"layers\.1\.self_attn\.(q|k)_proj": 40.0, "q_proj": 1.0})
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_qwen)), str(folder))
    mlx = create_engine("mlx")
    mlx.load(tiny_qwen)
    mlx.add_adapter("r", folder)
    assert mlx.adapters["r"].modules == 3  # layer 1 only
    mlx.activate("r")
    prompt = _prompt(mlx)
    with torch.no_grad():
        expected = ref(torch.tensor([mlx.encode(prompt)])).logits[0, -1].numpy()
    with ref.disable_adapter(), torch.no_grad():
        base = ref(torch.tensor([mlx.encode(prompt)])).logits[0, -1].numpy()
    got = mlx.next_token_logits(prompt)
    assert float(np.abs(got - base).max()) > 0.05
    assert float(np.abs(got - expected).max()) < ATOL
