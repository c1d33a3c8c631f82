"""Many answers at once on the llama.cpp engine: per-adapter KV slots (llamacpp_slots.py), answers
under one adapter set decoded together (llamacpp_batch.py), sets taking turns (batching.py)."""
import threading

import numpy as np
import pytest

from app.engine import EngineError, create_engine
from app.engine.batching import BatchConfig
from app.tasks import GenerationSettings, get_task

pytest.importorskip("llama_cpp")

GREEDY = GenerationSettings(max_tokens=16)
QUESTIONS = ["What is 6 times 7?", "Name a prime above ten.", "How many legs has a spider?", "Spell cat backwards."]
SETS = ["math", "code", None, {"math": 0.7, "code": 0.3}]


def _engine(tiny_ggufs, tiny_adapters, **kw):
    from app.engine.llamacpp_engine import LlamaCppEngine

    e = LlamaCppEngine(threads=1, **kw)  # two threads on a busy 2-core machine wait on each other at every op
    e.load(tiny_ggufs["qwen2"])
    for name in ("math", "code", "paraphrase"):
        e.add_adapter(name, tiny_adapters["qwen2"][name])
    return e


@pytest.fixture(scope="module")
def engine(tiny_ggufs, tiny_adapters):
    return _engine(tiny_ggufs, tiny_adapters)


@pytest.fixture(scope="module")
def lone(tiny_ggufs, tiny_adapters):
    """Each (adapter set, question)'s greedy answer from an engine that runs one at a time."""
    e = _engine(tiny_ggufs, tiny_adapters, batch=BatchConfig(max_batch=1, idle_slots=0))
    out = {}
    for i, adapter in enumerate(SETS):
        for q in QUESTIONS:
            out[i, q] = e.generate(get_task("math").messages(q), GREEDY, adapter=adapter)
    assert len(set(out.values())) > len(QUESTIONS)  # the sets answer differently
    return out


def _concurrently(engine, jobs):
    """Run (question, adapter index, settings, cancel) jobs in threads; their chunk lists."""
    results = [None] * len(jobs)

    def run(i, q, a, settings, cancel):
        try:
            results[i] = list(engine.stream_generate(get_task("math").messages(q), settings, cancel, adapter=SETS[a]))
        except Exception as e:  # noqa: BLE001 - the test looks at it
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _record_steps(engine, monkeypatch):
    """The number of tokens in each llama_decode call."""
    sizes = []
    real = engine._decode_batch

    def counted(batch):
        sizes.append(batch.n)
        real(batch)

    monkeypatch.setattr(engine, "_decode_batch", counted)
    return sizes


def test_answers_under_one_adapter_decode_together_and_equal_the_lone_ones(engine, lone, monkeypatch):
    sizes = _record_steps(engine, monkeypatch)
    results = _concurrently(engine, [(q, 0, GREEDY, None) for q in QUESTIONS])
    assert ["".join(c.text for c in r) for r in results] == [lone[0, q] for q in QUESTIONS]
    assert max(sizes) >= 3  # several answers' tokens went through one llama_decode
    tokens = sum(r[-1].generation_tokens for r in results)
    assert len(sizes) <= tokens / 2  # far fewer calls than one per token of each answer


def test_mixed_adapter_sets_at_once_never_share_a_cache(engine, lone):
    """Every set, every question, all at once, twice (the second time from the slots' caches):
    each answer is the one its set gives alone."""
    for _ in range(2):
        jobs = [(q, a, GREEDY, None) for a in range(len(SETS)) for q in QUESTIONS[:2]]
        results = _concurrently(engine, jobs)
        assert ["".join(c.text for c in r) for r in results] == [lone[a, q] for q, a, _, _ in jobs]


def test_logits_after_other_adapters_equal_a_fresh_engines(engine, tiny_ggufs, tiny_adapters):
    text = engine.chat_prompt(get_task("math").messages(QUESTIONS[0]))
    for adapter in SETS:  # fill slots under every set with the same prompt
        engine.generate(text, GREEDY, adapter=adapter)
    for adapter in SETS:
        engine.activate(adapter)
        tokens = engine.encode(text)
        assert engine.cached_prefix(tokens) == len(tokens) - 1  # its own cache is there ...
        fresh = _engine(tiny_ggufs, tiny_adapters)
        fresh.activate(adapter)
        got, want = engine.next_token_logits(text), fresh.next_token_logits(text)
        # A prompt read in other chunks rounds differently (about 5e-5 here); another set moves the
        # logits by a hundred times more.
        assert np.abs(got - want).max() < 1e-3, adapter
        others = [a for a in SETS if a != adapter]
        fresh.activate(others[0])
        assert np.abs(fresh.next_token_logits(text) - want).max() > 0.05
    engine.activate(None)


def test_a_long_answer_does_not_hold_back_another_adapters_short_one(engine, monkeypatch):
    """Round-robin between adapter groups: once B's short answer is in, A's long one gets a step
    only between B's steps, so B ends while A runs on."""
    turns = []  # the adapter set of each llama_decode call
    real = engine._decode_batch
    monkeypatch.setattr(engine, "_decode_batch", lambda b: (turns.append(engine._applied), real(b))[1])
    msgs = get_task("math").messages(QUESTIONS[2])
    a_tokens = []
    a_started = threading.Event()

    def long_answer():
        for c in engine.stream_generate(msgs, GenerationSettings(max_tokens=120), adapter="math"):
            a_tokens.append(c.generation_tokens)
            a_started.set()

    t = threading.Thread(target=long_answer)
    t.start()
    assert a_started.wait(30)
    short = list(engine.stream_generate(msgs, GenerationSettings(max_tokens=4), adapter="code"))
    t.join(60)
    assert short[-1].finish_reason in ("stop", "length") and short[-1].generation_tokens <= 4
    assert a_tokens[-1] >= 60, "the long answer must be long for this test to say anything"
    a, b = (("math", 1.0),), (("code", 1.0),)
    first_b, last_b = turns.index(b), len(turns) - 1 - turns[::-1].index(b)
    between = turns[first_b:last_b + 1]
    assert between.count(a) <= between.count(b)  # A and B took turns, one step each ...
    assert a in turns[last_b:]  # ... and A went on after B's answer ended


def _slow_steps(engine, monkeypatch, seconds=0.01):
    """Each step takes at least `seconds`, so an answer cannot end while the test acts on it."""
    import time

    real = engine._decode_batch
    monkeypatch.setattr(engine, "_decode_batch", lambda b: (time.sleep(seconds), real(b))[1])


def test_cancel_and_leaving_mid_batch_end_only_that_answer(engine, lone, monkeypatch):
    _slow_steps(engine, monkeypatch)
    cancel = threading.Event()
    settings = GenerationSettings(max_tokens=100)
    msgs = get_task("math").messages(QUESTIONS[0])
    others = {}

    def other(q):
        others[q] = engine.generate(get_task("math").messages(q), GREEDY, adapter="math")

    threads = [threading.Thread(target=other, args=(q,)) for q in QUESTIONS[1:3]]
    stream = engine.stream_generate(msgs, settings, cancel, adapter="math")
    left = engine.stream_generate(msgs, settings, adapter="math")
    next(left)
    for t in threads:
        t.start()
    first = next(stream)
    next(left)
    left.close()  # a client disconnect: its consumer stops reading
    cancel.set()  # Stop
    rest = list(stream)
    for t in threads:
        t.join(60)
    assert rest[-1].finish_reason == "cancelled" and rest[-1].generation_tokens < settings.max_tokens
    assert first.generation_tokens >= 1
    assert others == {q: lone[0, q] for q in QUESTIONS[1:3]}
    r = engine.slots_report()
    assert r["busy"] == 0 and r["running"] == 0  # both left their slots
    assert engine.generate(msgs, GREEDY, adapter="math") == lone[0, QUESTIONS[0]]  # and the engine goes on


def test_idle_caches_are_evicted_least_recently_used_when_the_context_is_full(tiny_ggufs, tiny_adapters, lone):
    e = _engine(tiny_ggufs, tiny_adapters, n_ctx=256, batch=BatchConfig(max_batch=2, idle_slots=2))
    msgs = get_task("math").messages(QUESTIONS[0])
    tokens = e.encode(e.chat_prompt(msgs))
    assert 3 * (len(tokens) + GREEDY.max_tokens) > e.context_length  # three caches do not fit
    for adapter in SETS[:3]:
        e.generate(msgs, GREEDY, adapter=adapter)
    r = e.slots_report()
    # in the context, and parked in host memory: each at most one context's worth
    assert r["evictions"] >= 1 and r["tokens"] - r["parked_tokens"] <= e.context_length
    assert 0 < r["parked_tokens"] <= e.context_length
    assert e.cached_prefix(tokens, adapter="math") == 0  # the least recently used went first
    assert e.cached_prefix(tokens, adapter=None) == len(tokens) - 1  # the newest stays
    for a, adapter in enumerate(SETS[:3]):  # and every answer is still its own
        assert e.generate(msgs, GREEDY, adapter=adapter) == lone[a, QUESTIONS[0]]


def test_a_prompt_that_can_never_fit_is_refused_and_the_engine_goes_on(tiny_ggufs, tiny_adapters):
    e = _engine(tiny_ggufs, tiny_adapters, n_ctx=256)
    with pytest.raises(EngineError, match="does not fit|context"):
        e.generate(" ".join(["word"] * 400), GREEDY)
    assert e.generate("Hello", GenerationSettings(max_tokens=3)) is not None


def test_the_slots_report_their_memory(engine):
    import llama_cpp

    engine.generate(get_task("math").messages(QUESTIONS[3]), GREEDY, adapter="code")
    r = engine.slots_report()
    assert r["slots"] == engine.batch.sequences and r["by_adapter_set"]["code"] > 0
    assert r["bytes"] == (r["tokens"] - r["parked_tokens"]) * engine._slots.bytes_per_token
    # bytes_per_token is what llama.cpp itself stores per token of a sequence
    engine.generate(get_task("summarize").messages(" ".join(QUESTIONS)), GREEDY, adapter="paraphrase")
    held = {len(s.tokens): len(s.parked) if s.parked is not None else llama_cpp.llama_state_seq_get_size(engine.ctx, s.seq)
            for s in engine._slots.slots if s.tokens}
    r = engine.slots_report()
    assert r["parked"] >= 1 and r["parked_bytes"] == sum(len(s.parked) for s in engine._slots.slots if s.parked)
    (n1, b1), (n2, b2) = min(held.items()), max(held.items())
    # (the saved state also writes each cell's position, sequence count and sequence id: 12 bytes)
    assert n2 > n1 and b2 - b1 == (n2 - n1) * (engine._slots.bytes_per_token + 12)
    assert "KV slots" in engine.scheduling() and "answers per step" in engine.scheduling()
    assert engine.batch_status().startswith("0 answering · KV slots ")


def test_unloading_ends_running_answers_with_a_clear_error(tiny_ggufs, tiny_adapters, monkeypatch):
    e = _engine(tiny_ggufs, tiny_adapters)
    _slow_steps(e, monkeypatch)
    stream = e.stream_generate(get_task("math").messages(QUESTIONS[0]), GenerationSettings(max_tokens=200))
    next(stream)
    e.unload()
    with pytest.raises(EngineError, match="unloaded"):
        list(stream)


def test_replacing_an_adapter_ends_its_running_answer_and_the_waiting_one_uses_the_new_weights(
        tiny_ggufs, tiny_adapters, lone, monkeypatch):
    import time

    e = _engine(tiny_ggufs, tiny_adapters, batch=BatchConfig(max_batch=1, idle_slots=0))
    _slow_steps(e, monkeypatch)
    running = e.stream_generate(get_task("math").messages(QUESTIONS[0]), GenerationSettings(max_tokens=200),
                                adapter="math")
    next(running)
    queued = {}
    t = threading.Thread(target=lambda: queued.update(
        answer=e.generate(get_task("math").messages(QUESTIONS[1]), GREEDY, adapter="math")))
    t.start()
    deadline = time.time() + 30
    while e._scheduler.waiting() == 0 and time.time() < deadline:  # one answer at a time: it queues
        time.sleep(0.01)
    assert e._scheduler.waiting() == 1
    e.add_adapter("math", tiny_adapters["qwen2"]["math"])  # the user adds the adapter again
    with pytest.raises(EngineError, match="'math' was replaced during the answer"):
        list(running)
    t.join(60)
    assert queued["answer"] == lone[0, QUESTIONS[1]]  # not failed: it started on the new (same) weights
    # removing it ends a waiting answer too, with a clear error
    running = e.stream_generate(get_task("math").messages(QUESTIONS[0]), GenerationSettings(max_tokens=200),
                                adapter="math")
    next(running)
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(EngineError, e.generate,
                                                                    get_task("math").messages(QUESTIONS[1]),
                                                                    GREEDY, adapter="math")))
    t.start()
    while e._scheduler.waiting() == 0 and time.time() < deadline:
        time.sleep(0.01)
    e.remove_adapter("math")
    t.join(60)
    assert "removed" in str(errors[0].value)
    with pytest.raises(EngineError, match="removed during the answer"):
        list(running)


def test_idle_caches_are_parked_out_of_the_context_and_come_back_exactly(tiny_ggufs, tiny_adapters, lone, monkeypatch):
    """Another adapter set's cache leaves the context while it is idle (each step attends over
    every cell in use), and comes back when that set answers again: its prefix is reused and the
    answer is the lone one. When it cannot come back, the prompt is read again, still right."""
    import llama_cpp

    e = _engine(tiny_ggufs, tiny_adapters)
    msgs = get_task("math").messages(QUESTIONS[0])
    tokens = e.encode(e.chat_prompt(msgs))
    e.generate(msgs, GREEDY, adapter="math")
    e.generate(msgs, GREEDY, adapter="code")
    slots = {s.key: s for s in e._slots.slots if s.tokens}
    math, code = slots[(("math", 1.0),)], slots[(("code", 1.0),)]
    mem = llama_cpp.llama_get_memory(e.ctx)
    assert math.parked is not None and llama_cpp.llama_memory_seq_pos_max(mem, math.seq) == -1  # out
    assert code.parked is None and llama_cpp.llama_memory_seq_pos_max(mem, code.seq) == len(code.tokens) - 1
    assert e.cached_prefix(tokens, adapter="math") == len(tokens) - 1  # still offered
    assert e.generate(msgs, GREEDY, adapter="math") == lone[0, QUESTIONS[0]]
    assert math.parked is None and code.parked is not None  # and the other way round now
    assert llama_cpp.llama_memory_seq_pos_max(mem, math.seq) == len(math.tokens) - 1
    # a parked cache that cannot be copied back: dropped, the prompt read again
    monkeypatch.setattr(llama_cpp, "llama_state_seq_set_data", lambda *a: 0)
    assert e.generate(msgs, GREEDY, adapter="code") == lone[1, QUESTIONS[0]]
    assert e.generate(msgs, GREEDY, adapter="math") == lone[0, QUESTIONS[0]]
