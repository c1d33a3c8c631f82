"""Several answers decoded as one batch on the torch engine (`answer_many`): each equals its lone answer."""
import threading

import pytest

from app.engine import create_engine
from app.errors import EngineError
from app.tasks import GenerationSettings

QUESTIONS = ["What is 6 times 7?", "Name a prime.", "Count to five, please, slowly and with care.",
             "Why is the sky blue? Answer in one long sentence.", "Hi"]


def _msgs(q):
    return [{"role": "user", "content": q}]


@pytest.fixture(scope="module", params=["qwen2", "llama", "gemma2"])
def engine(request, tiny_models, tiny_adapters):
    e = create_engine("torch")
    e.load(tiny_models[request.param])
    e.add_adapter("math", tiny_adapters[request.param]["math"])
    return e


def _lone(engine, settings):
    return [engine.generate(_msgs(q), settings) for q in QUESTIONS]


@pytest.mark.parametrize("settings", [GenerationSettings(max_tokens=20),
                                      GenerationSettings(max_tokens=20, temperature=0.9, top_p=0.9, seed=3)],
                         ids=["greedy", "sampled"])
def test_batched_answers_equal_lone_ones_under_an_adapter(engine, settings):
    engine.activate("math")
    try:
        lone = _lone(engine, settings)
        many = engine.answer_many([_msgs(q) for q in QUESTIONS], settings, together=3)
    finally:
        engine.activate(None)
    assert [text for text, _ in many] == lone
    assert all(s["finish_reason"] == "length" and s["generation_tokens"] == 20 for _, s in many)
    assert [s["batch"] for _, s in many] == [3, 3, 3, 2, 2]
    base = engine.answer_many([_msgs(q) for q in QUESTIONS[:2]], settings)
    assert [t for t, _ in base] != lone[:2]  # the adapter was in the batch, not the base model


def test_rows_that_end_early_leave_the_batch_and_the_rest_stay_exact(engine, monkeypatch):
    """An end-of-sequence token and a stop string end rows at different steps; the others go on."""
    settings = GenerationSettings(max_tokens=24)
    ids = [engine.encode(a) for a in _lone(engine, settings)]
    eos = ids[1][4]  # a token row 1 makes at its 5th step: it (and any row making it) ends there
    monkeypatch.setattr(engine, "_eos", engine._eos | {eos})
    stop = engine.decode(ids[3][8:10])
    settings = GenerationSettings(max_tokens=24, stop=[stop])
    lone = [list(engine.stream_generate(_msgs(q), settings)) for q in QUESTIONS]
    many = engine.answer_many([_msgs(q) for q in QUESTIONS], settings, together=5)
    assert [t for t, _ in many] == ["".join(c.text for c in chunks) for chunks in lone]
    assert [s["finish_reason"] for _, s in many] == [chunks[-1].finish_reason for chunks in lone]
    assert [s["generation_tokens"] for _, s in many] == [chunks[-1].generation_tokens for chunks in lone]
    assert {"stop"} <= {s["finish_reason"] for _, s in many}
    assert len({s["generation_tokens"] for _, s in many}) > 1


def test_a_prompt_that_cannot_fit_fails_alone(engine):
    settings = GenerationSettings(max_tokens=8)
    prompts = [_msgs("Hi"), "word " * (engine.context_length + 10), _msgs("Name a prime.")]
    out = engine.answer_many(prompts, settings)
    assert isinstance(out[1], EngineError) and "prompt" in str(out[1])
    assert out[0][0] == engine.generate(prompts[0], settings) and out[2][1]["generation_tokens"] == 8


def test_cancel_ends_every_row(engine):
    cancel = threading.Event()
    cancel.set()
    out = engine.answer_many([_msgs(q) for q in QUESTIONS], GenerationSettings(max_tokens=50), cancel)
    assert all(t == "" and s["finish_reason"] == "cancelled" for t, s in out)


def test_default_engine_answers_many_one_after_another(tiny_ggufs):
    """The interface's own answer_many (llama.cpp: concurrent requests to its batch scheduler)."""
    e = create_engine("llamacpp")
    e.load(tiny_ggufs["qwen2"])
    settings = GenerationSettings(max_tokens=12)
    lone = _lone(e, settings)
    many = e.answer_many([_msgs(q) for q in QUESTIONS], settings)
    assert [t for t, _ in many] == lone
    assert all(s["finish_reason"] in ("length", "stop") and s["seconds"] > 0 for _, s in many)
