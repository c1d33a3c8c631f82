"""The llama.cpp engine: GGUF base, adapters converted to GGUF LoRA and all resident, a switch per
answer that never reuses KV entries of another adapter, and parity with the torch engine."""
import json
import threading

import numpy as np
import pytest

from app.engine import create_engine
from app.engine.gguf_lora import CACHE_DIR
from app.errors import AdapterError, EngineError
from app.tasks import GenerationSettings, get_task

pytest.importorskip("llama_cpp")

GREEDY20 = GenerationSettings(max_tokens=20)
MSGS = get_task("math").messages("What is 6 times 7?")
# Parity prompts avoid digits: the tiny tokenizer's digit merges differ between HF's BPE and
# llama.cpp's (a tokenizer detail, not the model's); same token ids go into both engines.
PLAIN = [{"role": "system", "content": "You are a careful tutor."},
         {"role": "user", "content": "What is six times seven? Write the product."}]


def peft_adapter(model_dir, out, seed, **lora):
    """An adapter made by PEFT itself (its own config and file layout), with non-zero B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    cfg = LoraConfig(r=lora.pop("r", 8), lora_alpha=lora.pop("lora_alpha", 16), target_modules=lora.pop(
        "target_modules", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), **lora)
    peft = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    peft.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def peft_adapters(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("peft-for-llamacpp")
    out = {}
    for arch in ("qwen2", "llama"):
        out[arch] = {
            "plain": peft_adapter(tiny_models[arch], root / arch / "plain", seed=1),
            # rsLoRA and a per-module rank/alpha: strengths llama.cpp's single alpha must fold in
            "patterned": peft_adapter(tiny_models[arch], root / arch / "patterned", seed=2, r=4, lora_alpha=8,
                                      use_rslora=True, rank_pattern={"q_proj": 8}, alpha_pattern={"down_proj": 32}),
        }
    return out


def _pair(tiny_models, tiny_ggufs, arch):
    ll, th = create_engine("llamacpp"), create_engine("torch")
    ll.load(tiny_ggufs[arch])
    th.load(tiny_models[arch])
    return ll, th


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_a_peft_adapter_changes_llamacpp_as_it_changes_torch(arch, tiny_models, tiny_ggufs, peft_adapters):
    ll, th = _pair(tiny_models, tiny_ggufs, arch)
    prompt = ll.chat_prompt(PLAIN)
    assert ll.encode(prompt) == th.encode(prompt)  # same tokens in: the comparison is of the models
    base_l, base_t = ll.next_token_logits(prompt), th.next_token_logits(prompt)
    base_text = th.generate(prompt, GREEDY20)
    assert ll.generate(prompt, GREEDY20) == base_text
    for kind, folder in peft_adapters[arch].items():
        ll.add_adapter(kind, folder)
        th.add_adapter(kind, folder)
        ll.activate(kind)
        th.activate(kind)
        delta_l = ll.next_token_logits(prompt) - base_l
        delta_t = th.next_token_logits(prompt) - base_t
        assert np.abs(delta_t).max() > 0.5, "the adapter must visibly move the logits"
        assert np.corrcoef(delta_l, delta_t)[0, 1] >= 0.99, kind
        out = ll.generate(prompt, GREEDY20)
        assert out == th.generate(prompt, GREEDY20) != base_text, kind


def test_switching_never_reuses_the_cache_of_another_adapter(tiny_ggufs, tiny_adapters):
    a = tiny_adapters["qwen2"]
    e = create_engine("llamacpp")
    e.load(tiny_ggufs["qwen2"])
    for name in ("math", "code"):
        e.add_adapter(name, a[name])
    answers = {}
    for name in ("math", "code", None):
        fresh = create_engine("llamacpp")
        fresh.load(tiny_ggufs["qwen2"])
        if name:
            fresh.add_adapter(name, a[name])
        fresh.activate(name)
        answers[name] = fresh.generate(MSGS, GREEDY20)
    assert len(set(answers.values())) == 3
    # Same prompt, alternating adapters: each answer is the one that adapter gives alone (a reused
    # KV prefix from the previous adapter would change it, as in llama.cpp server #26207).
    for name in ("math", "code", "math", None, "code", None, "math"):
        e.activate(name)
        assert e.generate(MSGS, GREEDY20) == answers[name], name


def test_a_repeated_prompt_reuses_its_prefix_under_the_same_adapter(tiny_ggufs, tiny_adapters):
    e = create_engine("llamacpp")
    e.load(tiny_ggufs["qwen2"])
    e.add_adapter("math", tiny_adapters["qwen2"]["math"])
    e.activate("math")
    first = e.generate(MSGS, GREEDY20)
    tokens = e.encode(e.chat_prompt(MSGS))
    assert e.cached_prefix(tokens) == len(tokens) - 1  # all but the last prompt token kept
    assert e.generate(MSGS, GREEDY20) == first
    e.activate(None)
    assert e.cached_prefix(tokens) == 0  # another adapter set: nothing is kept


def test_a_quantized_gguf_answers_on_any_cpu(tiny_models, tiny_ggufs, tmp_path):
    """On an AMX CPU, llama.cpp's AMX weight buffer segfaults on the first Q8_0/Q4_K answer
    (llama.cpp #20824; every run on this project's Xeon VM): the engine must not use it there."""
    from app.engine.llamacpp_setup import amx_cpu, extra_buffers
    from app.tiny_gguf import write_tiny_gguf

    on, why = extra_buffers()
    assert on != amx_cpu() and ("AMX" in why) == amx_cpu()
    q8 = create_engine("llamacpp")
    q8.load(write_tiny_gguf(tiny_models["qwen2"], tmp_path / "q8.gguf", qtype="Q8_0"))
    assert "Q8_0" in q8.model_info.quantization
    f32 = create_engine("llamacpp")
    f32.load(tiny_ggufs["qwen2"])
    prompt = q8.chat_prompt(PLAIN)
    a, b = q8.next_token_logits(prompt), f32.next_token_logits(prompt)
    assert np.corrcoef(a, b)[0, 1] > 0.99  # Q8_0 rounding only
    assert q8.generate(prompt, GREEDY20)


def test_weight_repacking_can_be_forced_either_way(monkeypatch):
    from app.engine.llamacpp_setup import extra_buffers, model_params

    monkeypatch.setenv("LORADESK_LLAMACPP_REPACK", "0")
    assert extra_buffers()[0] is False and model_params().use_extra_bufts is False
    monkeypatch.setenv("LORADESK_LLAMACPP_REPACK", "1")
    assert extra_buffers() == (True, "LORADESK_LLAMACPP_REPACK=1") and model_params().use_extra_bufts is True


def test_beside_a_non_f32_base_the_gguf_lora_is_f16_and_moves_the_logits_as_torch(
        tiny_models, peft_adapters, tmp_path):
    """F16 halves what every decode step reads for the resident adapter; the effect stays torch's."""
    import gguf

    from app.tiny_gguf import write_tiny_gguf

    ll, th = create_engine("llamacpp"), create_engine("torch")
    ll.load(write_tiny_gguf(tiny_models["qwen2"], tmp_path / "f16.gguf", qtype="F16"))
    th.load(tiny_models["qwen2"])
    prompt = ll.chat_prompt(PLAIN)
    base_l, base_t = ll.next_token_logits(prompt), th.next_token_logits(prompt)
    info = ll.add_adapter("plain", peft_adapters["qwen2"]["plain"])
    th.add_adapter("plain", peft_adapters["qwen2"]["plain"])
    types = {t.tensor_type for t in gguf.GGUFReader(info.metadata["gguf_lora"]).tensors}
    assert types == {gguf.GGMLQuantizationType.F16}
    ll.activate("plain")
    th.activate("plain")
    delta_l, delta_t = ll.next_token_logits(prompt) - base_l, th.next_token_logits(prompt) - base_t
    assert np.corrcoef(delta_l, delta_t)[0, 1] >= 0.99


def test_adapters_are_converted_once_and_cached_beside_them(tiny_ggufs, tiny_adapters, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_adapters["qwen2"]["math"], tmp_path / "math")
    e = create_engine("llamacpp")
    e.load(tiny_ggufs["qwen2"])
    info = e.add_adapter("math", folder)
    cached = list((folder / CACHE_DIR).glob("*.gguf"))
    assert len(cached) == 1 and info.metadata["gguf_lora"] == str(cached[0])
    stamp = cached[0].stat().st_mtime_ns
    e.add_adapter("again", folder)
    assert cached[0].stat().st_mtime_ns == stamp and len(list((folder / CACHE_DIR).glob("*.gguf"))) == 1
    # Changed adapter, new key: the stale file is never used for it.
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["lora_parameters"]["scale"] *= 2
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    e.add_adapter("math", folder)
    assert len(list((folder / CACHE_DIR).glob("*.gguf"))) == 2


def test_a_gguf_lora_written_by_us_is_what_llamacpp_reads(tiny_models, tiny_ggufs, tmp_path):
    """The file's keys and tensor layout follow llama.cpp's converter."""
    import gguf

    from app.engine.adapter_format import read_adapter
    from app.engine.adapter_write import write_peft
    from app.engine.gguf_lora import write_gguf_lora
    from app.tiny import random_adapter

    w = random_adapter(tiny_models["llama"], seed=5, rank=4, scale=3.0)
    out = write_gguf_lora(w, tmp_path / "a.gguf", "llama", 4, 2, 2)
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.type"].contents() == "adapter"
    assert r.fields["adapter.type"].contents() == "lora"
    assert r.fields["adapter.lora.alpha"].contents() == pytest.approx(12.0)
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in r.tensors}  # ggml order: (in, out) reversed
    assert shapes["blk.0.attn_q.weight.lora_a"] == (64, 4)  # (r, in) in PEFT's numpy layout
    assert shapes["blk.0.attn_q.weight.lora_b"] == (4, 64)  # (out, r)
    assert len(shapes) == 2 * len(w.modules)
    peft = read_adapter(write_peft(w, tmp_path / "peft"))
    assert set(peft.modules) == set(w.modules)


def test_bad_models_and_adapters_get_clear_errors(tiny_models, tiny_ggufs, tiny_adapters, tmp_path):
    e = create_engine("llamacpp")
    with pytest.raises(EngineError, match="Hugging Face model folder.*--engine torch"):
        e.load(tiny_models["qwen2"])
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_ggufs["qwen2"].read_bytes()[:5000])
    with pytest.raises(EngineError, match="could not load"):
        e.load(cut)
    e.load(tiny_ggufs["qwen2"])
    with pytest.raises(AdapterError, match="does not fit|trained for"):
        e.add_adapter("wrong", tiny_adapters["llama"]["math"])  # llama adapter, qwen2 model
    assert e.adapters == {} and e.generate(MSGS, GenerationSettings(max_tokens=4)) is not None
    two = tmp_path / "two"
    two.mkdir()
    for name in ("m-f32.gguf", "m-Q4_K_M.gguf"):
        (two / name).write_bytes(tiny_ggufs["qwen2"].read_bytes())
    e.load(two)
    assert e.model_info.path.name == "m-Q4_K_M.gguf"


def test_cancel_during_the_prefill_stops_before_the_prompt_is_read(tiny_ggufs):
    e = create_engine("llamacpp")
    e.load(tiny_ggufs["qwen2"])
    calls = []
    real = e._decode_batch

    def counted(batch):
        calls.append(batch.n)
        if len(calls) == 2:
            cancel.set()  # as if Stop was pressed while the prompt is being read
        real(batch)

    e._decode_batch = counted
    e.prefill_step_size = 8
    cancel = threading.Event()
    prompt = " ".join(["word"] * 300)
    chunks = list(e.stream_generate(prompt, GenerationSettings(max_tokens=5), cancel))
    assert chunks[-1].finish_reason == "cancelled" and len(calls) == 2
    assert sum(calls) < len(e.encode(prompt))


def test_loglikelihood_matches_torch(tiny_models, tiny_ggufs, tiny_adapters):
    ll, th = _pair(tiny_models, tiny_ggufs, "llama")
    for e in (ll, th):
        e.add_adapter("math", tiny_adapters["llama"]["math"])
        e.activate("math")
    for ctx, cont in (("The answer is", " yes"), ("Question: what is six times seven? Answer:", " it is forty two")):
        a, ga = ll.loglikelihood(ctx, cont)
        b, gb = th.loglikelihood(ctx, cont)
        assert a == pytest.approx(b, abs=2e-2) and ga == gb


def test_a_hub_repo_of_gguf_files_downloads_only_its_q4_k_m_file(monkeypatch, tiny_ggufs):
    from app import models
    from fake_hub import FakeHub

    data = tiny_ggufs["qwen2"].read_bytes()
    files = {"tiny-f16.gguf": data + b"unused", "tiny-q4_k_m.gguf": data, "README.md": b"card"}
    with FakeHub({"someorg/tiny-GGUF": files}).use(monkeypatch) as fake:
        path = models.resolve_model("someorg/tiny-GGUF", engine="llamacpp")
        assert path.name == "tiny-q4_k_m.gguf" and path.read_bytes() == data
        assert not (path.parent / "tiny-f16.gguf").exists()  # the other quantization is never fetched
        e = create_engine("llamacpp", resolve=models.resolve_model)
        assert e.load("someorg/tiny-GGUF").path == path  # a second time: from the store, no download
    assert not [p for _, p in fake.requests if "f16" in p]


def test_unload_frees_the_model_and_the_engine_loads_again(tiny_ggufs, tiny_adapters):
    import psutil

    e = create_engine("llamacpp")
    e.load(tiny_ggufs["qwen2"])
    e.add_adapter("math", tiny_adapters["qwen2"]["math"])
    e.activate("math")
    e.generate(MSGS, GenerationSettings(max_tokens=4))
    e.unload()
    assert e.model is None and e.ctx is None and e._lora == {} and e.model_info is None and e.active is None
    with pytest.raises(EngineError, match="no model is loaded"):
        e.generate(MSGS, GenerationSettings(max_tokens=4))
    rss = psutil.Process().memory_info().rss
    for _ in range(3):  # load and unload again: the memory does not pile up
        e.load(tiny_ggufs["llama"])
        assert e.generate(MSGS, GenerationSettings(max_tokens=4)) is not None
        e.unload()
    assert psutil.Process().memory_info().rss - rss < 200e6
