"""The llama.cpp engine's decode cost of adapters: resident adapters change nothing while none is
active, and the merged copy of an active adapter set gives the answers the resident LoRA gives,
swapped in and out around switches and dropped when another adapter takes over."""
import threading

import numpy as np
import pytest

from app.engine import create_engine
from app.tasks import GenerationSettings, get_task

pytest.importorskip("llama_cpp")

GREEDY20 = GenerationSettings(max_tokens=20)
MSGS = get_task("math").messages("What is six times seven?")


@pytest.fixture
def no_auto_merge(monkeypatch):
    monkeypatch.setenv("LORADESK_MERGE", "off")


def _engine(gguf, adapters=None, names=("math", "code")):
    e = create_engine("llamacpp")
    e.load(gguf)
    for name in names if adapters else ():
        e.add_adapter(name, adapters[name])
    return e


def test_resident_adapters_leave_the_base_exactly_as_without_them(tiny_ggufs, tiny_adapters, no_auto_merge):
    bare = _engine(tiny_ggufs["qwen2"])
    resident = _engine(tiny_ggufs["qwen2"], tiny_adapters["qwen2"], names=tuple(tiny_adapters["qwen2"]))
    prompt = bare.chat_prompt(MSGS)
    assert np.array_equal(bare.next_token_logits(prompt), resident.next_token_logits(prompt))
    resident.activate("math")
    moved = resident.next_token_logits(prompt)
    resident.activate(None)  # and after an adapter was active: the base's KV slot kept the prompt,
    # so `again` reads it twice too (a cached prefix plus one token rounds differently from one pass)
    again = _engine(tiny_ggufs["qwen2"])
    again.next_token_logits(prompt)
    assert np.array_equal(again.next_token_logits(prompt), resident.next_token_logits(prompt))
    assert np.abs(moved - again.next_token_logits(prompt)).max() > 0.1


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_the_merged_copy_gives_the_resident_loras_logits_and_answers(arch, tiny_ggufs, tiny_adapters, no_auto_merge):
    """An F32 base keeps F32 merged matrices: the merge is exact up to float32 summation order
    (about 1e-3 here; a cached prefix against one pass differs as much)."""
    e = _engine(tiny_ggufs[arch], tiny_adapters[arch])
    prompt = e.chat_prompt(MSGS)
    base = e.next_token_logits(prompt)
    e.activate_mix({"math": 0.7, "code": 0.6}) if arch == "llama" else e.activate("math")
    lora, lora_text = e.next_token_logits(prompt), e.generate(MSGS, GREEDY20)
    copy = e.merge_now()
    assert copy is not None and copy.applied and e._ctx_loras == ()  # no LoRA in the graph
    assert copy.nbytes > 0 and "in use" in e.merge_status()
    merged = e.next_token_logits(prompt)
    assert np.abs(lora - base).max() > 0.1
    np.testing.assert_allclose(merged, lora, atol=1e-3, rtol=0)
    assert e.generate(MSGS, GREEDY20) == lora_text


def test_a_quantized_base_merges_to_q8_0_within_its_rounding(tiny_models, tiny_adapters, tmp_path, no_auto_merge):
    import shutil

    from app.tiny_gguf import write_tiny_gguf

    # Copies: the F16 GGUF LoRA for this base is cached beside the adapter (the shared fixture stays as it was).
    adapters = {n: shutil.copytree(tiny_adapters["qwen2"][n], tmp_path / n) for n in ("math", "code")}
    e = _engine(write_tiny_gguf(tiny_models["qwen2"], tmp_path / "q8.gguf", qtype="Q8_0"), adapters)
    prompt = e.chat_prompt(MSGS)
    base = e.next_token_logits(prompt)
    e.activate("math")
    lora = e.next_token_logits(prompt)
    e.merge_now()
    merged = e.next_token_logits(prompt)
    assert np.corrcoef(merged - base, lora - base)[0, 1] > 0.99
    assert np.abs(merged - lora).max() < 0.1 * np.abs(lora - base).max()


def test_the_merged_copy_can_keep_the_bases_own_type(tiny_models, tiny_adapters, tmp_path, no_auto_merge,
                                                     monkeypatch):
    """LORADESK_MERGE_TYPE=base: a Q5_0 base merges to Q5_0 (fewer bytes than Q8_0, as fast as the
    base per step), and the copy still follows the LoRA, less closely than the Q8_0 one."""
    import shutil

    from app.engine import llamacpp_merge as merging
    from app.tiny_gguf import write_tiny_gguf

    adapters = {n: shutil.copytree(tiny_adapters["qwen2"][n], tmp_path / n) for n in ("math",)}
    gguf_file = write_tiny_gguf(tiny_models["qwen2"], tmp_path / "q5.gguf", qtype="Q5_0")
    results = {}
    for setting in ("q8_0", "base"):
        monkeypatch.setenv("LORADESK_MERGE_TYPE", setting)
        e = _engine(gguf_file, adapters, names=("math",))
        prompt = e.chat_prompt(MSGS)
        base = e.next_token_logits(prompt)
        e.activate("math")
        lora = e.next_token_logits(prompt)
        copy = e.merge_now()
        kinds = {merging._GgmlTensor.from_address(addr).type for addr, _ in copy.swaps}
        merged = e.next_token_logits(prompt)
        results[setting] = (kinds, copy.nbytes, float(np.corrcoef(merged - base, lora - base)[0, 1]))
        e.unload()
    (k8, bytes8, corr8), (kb, bytesb, corrb) = results["q8_0"], results["base"]
    assert k8 == {merging.Q8_0} and kb == {merging.Q5_0}
    assert bytesb < 0.7 * bytes8  # 22 bytes per 32 values against 34
    assert corr8 > 0.99 and 0.9 < corrb <= corr8
    monkeypatch.setenv("LORADESK_MERGE_TYPE", "q4")
    with pytest.raises(Exception, match="LORADESK_MERGE_TYPE takes"):
        create_engine("llamacpp")


def test_switches_around_the_merged_copy_are_instant_and_correct(tiny_ggufs, tiny_adapters, no_auto_merge):
    names = ("math", "code")
    e = _engine(tiny_ggufs["qwen2"], tiny_adapters["qwen2"])
    alone = {}
    for name in (*names, None):
        e.activate(name)
        alone[name] = e.generate(MSGS, GREEDY20)
    assert len(set(alone.values())) == 3
    e.activate("math")
    copy = e.merge_now()
    assert copy.applied
    e.activate(None)  # to the base: the copy is kept, swapped out before the next decode
    assert e.generate(MSGS, GREEDY20) == alone[None] and e._merged is copy and not copy.applied
    e.activate("math")  # back: swapped in again, no rebuild
    assert e.generate(MSGS, GREEDY20) == alone["math"] and e._merged is copy and copy.applied
    e.activate("code")  # another adapter: the copy goes
    assert e.generate(MSGS, GREEDY20) == alone["code"]
    assert e._merged is None and e._ctx_loras == (("code", 1.0),)
    e.activate("math")
    assert e.generate(MSGS, GREEDY20) == alone["math"]


def test_a_switch_while_the_copy_is_built_waits_for_nothing(tiny_ggufs, tiny_adapters, monkeypatch):
    """The build runs in a thread of its own; answers and switches go on meanwhile and stay
    correct, and a copy built for an adapter set that is no longer active is thrown away."""
    from app.engine import llamacpp_merge

    monkeypatch.setenv("LORADESK_MERGE", "0")  # build as soon as an adapter set is active
    release = threading.Event()
    real_build = llamacpp_merge.build

    def slow_build(*args, **kwargs):  # hold the build thread until the switch below has happened
        release.wait(30)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(llamacpp_merge, "build", slow_build)
    e = _engine(tiny_ggufs["qwen2"], tiny_adapters["qwen2"])
    alone = {}
    for name in ("code", "math"):
        e.activate(name)
        alone[name] = e.generate(MSGS, GREEDY20)  # the math answer starts a build
    building = e._building
    assert building is not None and building[0] == (("math", 1.0),)
    e.merge_after = None  # no build for code: the one for math is what is checked
    e.activate("code")
    assert e.generate(MSGS, GREEDY20) == alone["code"]
    release.set()
    building[2].join(30)
    e._sync()
    assert e._merged is None  # built for math, but code is active: not kept
    assert e.generate(MSGS, GREEDY20) == alone["code"]


def test_the_copy_is_dropped_when_memory_runs_low(tiny_ggufs, tiny_adapters, no_auto_merge):
    e = _engine(tiny_ggufs["qwen2"], tiny_adapters["qwen2"])
    e.activate("math")
    want = e.generate(MSGS, GREEDY20)
    assert e.merge_now() is not None
    e.merge_min_free = 1 << 60  # more memory than any machine has free: pressure
    assert e.generate(MSGS, GREEDY20) == want
    assert e._merged is None and "memory" in e.merge_status() and e._ctx_loras == (("math", 1.0),)


def test_removing_or_replacing_the_merged_adapter_drops_the_copy(tiny_ggufs, tiny_adapters, no_auto_merge):
    a = tiny_adapters["qwen2"]
    e = _engine(tiny_ggufs["qwen2"], a)
    e.activate("math")
    e.merge_now()
    e.add_adapter("math", a["code"], force=True)  # same name, other weights
    assert e._merged is None
    fresh = _engine(tiny_ggufs["qwen2"], {"math": a["code"]}, names=("math",))
    fresh.activate("math")
    assert e.generate(MSGS, GREEDY20) == fresh.generate(MSGS, GREEDY20)
    e.merge_now()
    e.remove_adapter("math")
    assert e._merged is None and e._ctx_loras == ()
    assert e.generate(MSGS, GREEDY20) == _engine(tiny_ggufs["qwen2"]).generate(MSGS, GREEDY20)
