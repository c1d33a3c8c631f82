"""The MLX engine: resident adapters, hot swap, validation, cancel (tiny models, real MLX)."""
import json
import shutil
import threading

import pytest

from app.engine import create_engine
from app.errors import AdapterError, EngineError
from app.tasks import GenerationSettings, get_task

GREEDY = GenerationSettings(max_tokens=16)
MSGS = get_task("math").messages("What is 6 times 7?")


def _engine(model, adapters=None):
    e = create_engine("mlx")
    e.load(model)
    for name, folder in (adapters or {}).items():
        e.add_adapter(name, folder)
    return e


@pytest.fixture(scope="module")
def qwen_engine(tiny_models, tiny_adapters):
    return _engine(tiny_models["qwen2"], tiny_adapters["qwen2"])


def test_switching_changes_output_and_back_reproduces(qwen_engine):
    e = qwen_engine
    e.activate(None)
    base = e.generate(MSGS, GREEDY)
    outs = {}
    for task in ("math", "code", "summarize", "paraphrase"):
        e.activate(task)
        outs[task] = e.generate(MSGS, GREEDY)
        assert outs[task] != base, f"adapter {task} did not change the greedy output"
    assert len(set(outs.values())) == 4
    for task in ("paraphrase", "math", "code"):  # back and forth, token for token
        e.activate(task)
        assert e.generate(MSGS, GREEDY) == outs[task]
    e.activate(None)
    assert e.generate(MSGS, GREEDY) == base


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_other_architectures(tiny_models, tiny_adapters, arch):
    e = _engine(tiny_models[arch], {"math": tiny_adapters[arch]["math"]})
    base = e.generate(MSGS, GREEDY)
    e.activate("math")
    assert e.generate(MSGS, GREEDY) != base
    e.activate(None)
    assert e.generate(MSGS, GREEDY) == base


def test_quantized_base_with_adapters(tiny_qwen_4bit, tiny_adapters):
    e = _engine(tiny_qwen_4bit, tiny_adapters["qwen2"])
    assert e.model_info.quantization == "4-bit (group 64)"
    base = e.generate(MSGS, GREEDY)
    e.activate("math")
    with_math = e.generate(MSGS, GREEDY)
    assert with_math != base
    e.activate("code")
    e.activate("math")
    assert e.generate(MSGS, GREEDY) == with_math


def test_adapter_matches_mlx_lm_reference(tiny_qwen, tiny_adapters):
    """Our resident LoRA pairs compute what mlx-lm's own LoRA layers compute for one adapter."""
    import mlx_lm

    from app.engine import mlx_thread

    e = _engine(tiny_qwen, {"math": tiny_adapters["qwen2"]["math"]})
    e.activate("math")
    prompt = e.chat_prompt(MSGS)
    ours = e.generate(prompt, GREEDY)

    def reference():
        model, tok = mlx_lm.load(str(tiny_qwen), adapter_path=str(tiny_adapters["qwen2"]["math"]))
        return "".join(r.text for r in mlx_lm.stream_generate(model, tok, e.encode(prompt), max_tokens=16))

    assert mlx_thread.call(reference) == ours


def test_thousand_switches_do_not_grow_memory(qwen_engine):
    e = qwen_engine
    e.activate("math")
    e.generate(MSGS, GenerationSettings(max_tokens=2))
    before = e.memory_bytes()
    for i in range(1000):
        e.activate(("math", "code", "summarize", "paraphrase", None)[i % 5])
    assert e.memory_bytes() <= before
    assert e.active is None


def test_unknown_adapter_name(qwen_engine):
    with pytest.raises(EngineError, match="Adapter 'poetry' not found"):
        qwen_engine.activate("poetry")


def test_cancel_stops_generation(qwen_engine):
    e = qwen_engine
    e.activate(None)
    cancel = threading.Event()
    chunks = []
    for chunk in e.stream_generate(MSGS, GenerationSettings(max_tokens=200), cancel):
        chunks.append(chunk)
        if len(chunks) == 3:
            cancel.set()
    assert chunks[-1].finish_reason == "cancelled"
    assert chunks[-1].generation_tokens < 10
    assert e.generate(MSGS, GREEDY)  # still works


def test_stop_strings_end_the_answer(qwen_engine):
    e = qwen_engine
    e.activate(None)
    full = e.generate(MSGS, GenerationSettings(max_tokens=24))
    stop = full[5:8]
    cut = e.generate(MSGS, GenerationSettings(max_tokens=24, stop=(stop,)))
    assert cut == full[: full.index(stop)]


def test_stream_reports_stats(qwen_engine):
    chunks = list(qwen_engine.stream_generate(MSGS, GenerationSettings(max_tokens=8)))
    last = chunks[-1]
    assert last.finish_reason in ("length", "stop")
    assert last.prompt_tokens > 10 and last.generation_tokens >= 1
    assert last.generation_tps > 0 and last.time_to_first_token > 0


def test_huge_prompt_is_refused(qwen_engine):
    # A raw prompt string is never cut; with room kept for the answer it must fit the 2048 context.
    with pytest.raises(EngineError, match=f"reads at most {2048 - GREEDY.max_tokens} .*Shorten the input"):
        qwen_engine.generate("word " * 5000, GREEDY)
    assert qwen_engine.generate(MSGS, GREEDY)


def test_loglikelihood_matches_next_token_logits(qwen_engine):
    import numpy as np

    e = qwen_engine
    e.activate("math")
    ctx, cont = "Natalia sold clips", " to friends"
    ll, greedy = e.loglikelihood(ctx, cont)
    ctx_ids, full = e.encode(ctx), e.encode(ctx + cont)
    total = 0.0
    for i in range(len(ctx_ids), len(full)):
        logits = e.next_token_logits(e.decode(full[:i]))
        logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        total += logp[full[i]]
    assert ll == pytest.approx(total, abs=1e-3)
    assert isinstance(greedy, bool)


# -- bad adapters: each a clear error, and the engine keeps serving ------------------------

def _still_works(e, expected):
    e.activate("math")
    assert e.generate(MSGS, GREEDY) == expected


@pytest.fixture()
def fresh(tiny_qwen, tiny_adapters):
    e = _engine(tiny_qwen, {"math": tiny_adapters["qwen2"]["math"]})
    e.activate("math")
    return e, e.generate(MSGS, GREEDY)


def test_wrong_base_adapter(fresh, tiny_adapters):
    e, expected = fresh
    with pytest.raises(AdapterError, match="was trained for .*model_type=llama.*has model_type=qwen2"):
        e.add_adapter("llama", tiny_adapters["llama"]["math"])
    assert "llama" not in e.adapters
    _still_works(e, expected)


def test_wrong_shape_reports_all_mismatches(fresh, tmp_path):
    from app.tiny import build_tiny_model, write_random_adapter

    e, expected = fresh
    wider = build_tiny_model(tmp_path / "wider", "qwen2", hidden=128)
    bad = write_random_adapter(wider, tmp_path / "bad")
    (bad / "loradesk.json").unlink()  # no fingerprint: the shape check must catch it
    with pytest.raises(AdapterError) as err:
        e.add_adapter("bad", bad)
    msg = str(err.value)
    assert "mismatches" in msg and "q_proj" in msg and "down_proj" in msg
    _still_works(e, expected)


def test_corrupt_adapter(fresh, tiny_adapters, tmp_path):
    e, expected = fresh
    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_adapters["qwen2"]["code"], bad)
    data = (bad / "adapters.safetensors").read_bytes()
    (bad / "adapters.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(AdapterError, match="corrupt"):
        e.add_adapter("code", bad)
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        e.add_adapter("code", bad)
    _still_works(e, expected)


def test_missing_and_pickle_adapters(fresh, tmp_path):
    e, expected = fresh
    with pytest.raises(AdapterError, match="does not exist"):
        e.add_adapter("x", tmp_path / "nope")
    pick = tmp_path / "pickled"
    pick.mkdir()
    (pick / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (pick / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(AdapterError, match="never unpickles"):
        e.add_adapter("x", pick)
    _still_works(e, expected)


def test_replacing_an_adapter_keeps_the_others(fresh, tiny_adapters):
    e, expected = fresh
    e.add_adapter("code", tiny_adapters["qwen2"]["code"])
    e.activate("code")
    code_out = e.generate(MSGS, GREEDY)
    e.add_adapter("code", tiny_adapters["qwen2"]["paraphrase"])  # same name, new weights
    e.activate("code")
    assert e.generate(MSGS, GREEDY) != code_out
    _still_works(e, expected)
    e.remove_adapter("math")
    assert e.active is None and "math" not in e.adapters
