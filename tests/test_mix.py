"""Weighted adapter mixes on every engine: a mix is the sum of each adapter's own delta times its
weight (checked against the base weights with those deltas added by hand), one adapter at 1.0 is
that adapter exactly, and the mix exported as one PEFT adapter (concatenated ranks) is the same."""
import threading

import numpy as np
import pytest
import torch

from app.engine import create_engine, mix as mixing
from app.engine.adapter_format import read_adapter
from app.engine.adapter_write import write_peft
from app.errors import EngineError

# No digits: the tiny tokenizer's digit merges differ between HF's BPE and llama.cpp's.
TEXT = "<|im_start|>user\nWrite a short note about the sea and the sky.<|im_end|>\n<|im_start|>assistant\n"
MIX = {"math": 0.7, "code": 0.3}


def dense_reference(model_dir, adapters: dict, weights: dict, text: str) -> np.ndarray:
    """Next-token logits of the plain transformers model with sum_i w_i s_i (B_i A_i) added into each
    linear weight: the definition of the mix, with no LoRA code involved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, w in weights.items():
            for mod, m in read_adapter(adapters[name]).modules.items():
                delta = w * m.scale * (m.a.astype(np.float64) @ m.b.astype(np.float64))  # (in, out)
                mods[mod].weight += torch.tensor(delta.T, dtype=torch.float32)
        ids = tok(text, return_tensors="pt").input_ids
        return model(ids).logits[0, -1].float().numpy()


@pytest.fixture(scope="module", params=["torch", "mlx", "llamacpp"])
def loaded(request, tiny_models, tiny_adapters, tiny_ggufs):
    kind = request.param
    if kind == "mlx":
        pytest.importorskip("mlx.core")
    if kind == "llamacpp":
        pytest.importorskip("llama_cpp")
    eng = create_engine(kind)
    eng.load(tiny_ggufs["qwen2"] if kind == "llamacpp" else tiny_models["qwen2"])
    for name in ("math", "code", "summarize"):
        eng.add_adapter(name, tiny_adapters["qwen2"][name], force=True)
    return eng


def test_one_adapter_at_weight_one_is_that_adapter(loaded):
    loaded.activate("math")
    loaded.next_token_logits(TEXT)  # llama.cpp: both reads below then reuse the same cached prefix
    single = loaded.next_token_logits(TEXT)
    loaded.activate_mix({"math": 1.0})
    assert loaded.active == "mix:math=1" and loaded.mix == {"math": 1.0}
    assert np.array_equal(loaded.next_token_logits(TEXT), single)
    loaded.activate(None)
    assert not np.allclose(loaded.next_token_logits(TEXT), single, atol=1e-3)  # the adapter does change it


def test_two_adapter_mix_is_the_weighted_sum_of_deltas(loaded, tiny_models, tiny_adapters):
    ref = dense_reference(tiny_models["qwen2"], tiny_adapters["qwen2"], MIX, TEXT)
    base = dense_reference(tiny_models["qwen2"], tiny_adapters["qwen2"], {}, TEXT)
    loaded.activate(None)
    own_base = loaded.next_token_logits(TEXT)
    loaded.activate_mix(MIX)
    got = loaded.next_token_logits(TEXT)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    corr = np.corrcoef(got - own_base, ref - base)[0, 1]
    if loaded.kind == "llamacpp":  # its GGUF LoRA holds A and B in f16: the deltas agree in shape
        assert corr >= 0.999 and err < 1e-2, (corr, err)
    else:  # float32 throughout: the dense sum to float rounding
        assert err < 1e-4, err
    # ... and not with the adapters at weight 1 each (what PEFT's plain multi-adapter sum gives)
    loaded.activate_mix({"math": 1.0, "code": 1.0})
    assert np.abs(loaded.next_token_logits(TEXT) - ref).max() > 1e-2 * np.abs(ref).max()
    loaded.activate(None)


def test_mix_exported_as_one_adapter_matches_the_mix(loaded, tiny_adapters, tmp_path):
    parts = {n: (w, read_adapter(tiny_adapters["qwen2"][n])) for n, w in MIX.items()}
    merged = mixing.merge(parts)
    ranks = {m.rank for m in merged.modules.values()}
    assert ranks == {8 + 4} and {m.scale for m in merged.modules.values()} == {1.0}  # uniform: plain LoRA
    folder = write_peft(merged, tmp_path / "mixed")
    loaded.add_adapter("mixed", folder, force=True)
    loaded.activate("mixed")
    as_one = loaded.next_token_logits(TEXT)
    loaded.activate_mix(MIX)
    assert np.abs(loaded.next_token_logits(TEXT) - as_one).max() < 1e-3 * np.abs(as_one).max()
    loaded.remove_adapter("mixed")


def test_switching_mixes_never_reuses_another_mix_state(loaded):
    loaded.activate_mix(MIX)
    first = loaded.next_token_logits(TEXT)
    loaded.activate_mix({"math": 0.2, "summarize": 0.8})
    other = loaded.next_token_logits(TEXT)
    loaded.activate_mix(MIX)
    # llama.cpp keys its KV cache on the pairs: a reused cache of the other mix would land near `other`.
    # A full prefill and a cached prefix round differently by CPU kernel (1e-7 on AMX, 2e-4 with AVX2
    # repacking), so the check is relative to how far apart the two mixes are.
    again = loaded.next_token_logits(TEXT)
    apart = np.abs(first - other).max()
    assert apart > 1e-3
    assert np.abs(again - first).max() < 0.05 * apart
    loaded.activate(None)


def test_mix_errors_name_the_problem(loaded):
    loaded.activate("code")
    with pytest.raises(EngineError, match=r"'algebra', 'poetry'.*loaded adapters: math, code, summarize"):
        loaded.activate_mix({"math": 0.5, "algebra": 0.5, "poetry": 1})
    with pytest.raises(ValueError, match="finite number"):
        loaded.activate_mix({"math": float("nan")})
    with pytest.raises(ValueError, match="at most 10"):
        loaded.activate_mix({"math": 70})
    assert loaded.active == "code"  # a refused mix changes nothing
    loaded.activate_mix({"math": 0.0})  # all zero: the base model
    assert loaded.active is None and loaded.mix == {}


def test_removing_a_mixed_adapter_goes_back_to_the_base_model(loaded, tiny_adapters):
    loaded.activate(None)
    base = loaded.next_token_logits(TEXT)
    loaded.add_adapter("extra", tiny_adapters["qwen2"]["paraphrase"], force=True)
    loaded.activate_mix({"math": 0.5, "extra": 0.5})
    loaded.remove_adapter("extra")
    assert loaded.active is None
    assert np.allclose(loaded.next_token_logits(TEXT), base, atol=1e-5)


def test_a_mix_waits_for_the_running_answer(loaded):
    """A running answer finishes under its own adapter. One-at-a-time engines: activate_mix takes
    the engine's lock and waits for it. A batching engine (llama.cpp): the switch is at once, and
    the running answer keeps the adapter set it started with."""
    from app.tasks import GenerationSettings

    settings = GenerationSettings(max_tokens=8)
    loaded.activate("math")
    alone = loaded.generate(TEXT, settings)
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    pieces = []

    def answer():
        for chunk in loaded.stream_generate(TEXT, settings):
            pieces.append(chunk.text)
            started.set()
            release.wait(10)
        done.set()

    t = threading.Thread(target=answer)
    t.start()
    assert started.wait(30)
    switch = threading.Thread(target=loaded.activate_mix, args=(MIX,))
    switch.start()
    switch.join(0.3)
    if loaded.max_batch == 1:
        assert switch.is_alive() and loaded.active == "math"  # still waiting for the answer
    else:
        assert not switch.is_alive() and loaded.active == "mix:math=0.7,code=0.3"
    release.set()
    switch.join(30)
    t.join(30)
    assert done.is_set() and loaded.active == "mix:math=0.7,code=0.3"
    assert "".join(pieces) == alone != loaded.generate(TEXT, settings)
    loaded.activate(None)


@pytest.mark.parametrize("text, message", [
    ("math=0.7,code", "'code' is not NAME=WEIGHT"),
    ("math=seven", "not a number"),
    ("math=0.5,math=0.5", "appears twice"),
    ("", "is empty"),
    ("math=inf", "finite"),
])
def test_parse_refuses_bad_mixes(text, message):
    with pytest.raises(ValueError, match=message):
        mixing.parse(text)


def test_parse_reads_the_api_form_too():
    assert mixing.parse("mix:math=0.7, code=0.3") == MIX
    assert mixing.label(MIX) == "mix:math=0.7,code=0.3"


# -- command line ---------------------------------------------------------------------------------
@pytest.fixture
def stored(tiny_qwen, tiny_adapters):
    from app import store

    for task in ("math", "code"):
        store.add(task, tiny_adapters["qwen2"][task], name=f"{task}-tiny", model=str(tiny_qwen), force=True)
    return tiny_adapters["qwen2"]


def test_export_mix_is_a_plain_peft_adapter_equal_to_the_mix(stored, tiny_qwen, tmp_path, capsys):
    """PEFT's own loader on the exported folder gives the dense sum of the weighted deltas."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.cli import main

    out = tmp_path / "mixed"
    assert main(["adapters", "export-mix", "--mix", "math=0.7,code=0.3", "--out", str(out)]) == 0
    assert "rank 12 (concatenated)" in capsys.readouterr().out
    base = AutoModelForCausalLM.from_pretrained(str(tiny_qwen), dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(out)).eval()
    ids = AutoTokenizer.from_pretrained(str(tiny_qwen))(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        got = peft(ids).logits[0, -1].numpy()
    ref = dense_reference(tiny_qwen, stored, MIX, TEXT)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()
    assert main(["adapters", "export-mix", "--mix", "math=0.7", "--out", str(out)]) == 2  # never overwrites
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize("mix, message", [
    ("math=0.7,algebra=0.3", "'algebra' is not a task; the adapters are named after their tasks"),
    ("math=0.7,,", "'' is not NAME=WEIGHT"),
    ("summarize=1", "task 'summarize' has no adapter to mix"),
])
def test_export_mix_errors(stored, tmp_path, capsys, mix, message):
    from app.cli import main

    assert main(["adapters", "export-mix", "--mix", mix, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_ask_mix_answers_with_the_mix(stored, tiny_qwen, capsys):
    from app.cli import main
    from app.session import open_session
    from app.tasks import GenerationSettings, get_task

    prompt = "Add seven and five."
    assert main(["ask", "--mix", "math=0.7,code=0.3", "--engine", "torch", "--model", str(tiny_qwen),
                 "--max-tokens", "6", "--stats", prompt]) == 0
    captured = capsys.readouterr()
    assert "adapter: mix:math=0.7,code=0.3" in captured.err
    engine = open_session(str(tiny_qwen), "torch", tasks=["math", "code"], warn=False).engine
    engine.activate_mix(MIX)
    expected = engine.generate(get_task("math").messages(prompt), GenerationSettings(max_tokens=6))
    assert captured.out == expected + "\n"
    assert main(["ask", "--mix", "math=0.7,summarize=0.3", "--engine", "torch", "--model", str(tiny_qwen), prompt]) == 2
    assert "cannot mix 'summarize': not loaded" in capsys.readouterr().err
