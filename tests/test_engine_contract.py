"""What both engines promise through the shared Engine.activate / remove_adapter."""
import pytest

from app.engine import create_engine
from app.errors import EngineError
from app.tasks import GenerationSettings, get_task

GREEDY = GenerationSettings(max_tokens=12)
MSGS = get_task("math").messages("What is 6 times 7?")


def _model(kind, hf_folder, tmp_path_factory):
    """The tiny model in the form the engine reads (llama.cpp: the same weights as a GGUF file)."""
    if kind != "llamacpp":
        return hf_folder
    pytest.importorskip("llama_cpp")
    from app.tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(hf_folder, tmp_path_factory.mktemp("gguf") / "model.gguf")


@pytest.mark.parametrize("kind", ["mlx", "torch", "llamacpp"])
def test_replacing_the_active_adapter_keeps_it_active_with_the_new_weights(kind, tiny_models, tiny_adapters,
                                                                          tmp_path_factory):
    a = tiny_adapters["qwen2"]
    e = create_engine(kind)
    e.load(_model(kind, tiny_models["qwen2"], tmp_path_factory))
    e.add_adapter("math", a["math"])
    e.add_adapter("other", a["paraphrase"])
    e.activate("other")
    paraphrase_out = e.generate(MSGS, GREEDY)
    e.activate("math")
    first = e.generate(MSGS, GREEDY)
    e.add_adapter("math", a["paraphrase"])  # same name, the paraphrase weights, while active
    assert e.active == "math"
    assert e.generate(MSGS, GREEDY) == paraphrase_out != first
    e.remove_adapter("math")
    assert e.active is None and "math" not in e.adapters
    e.activate(None)
    base = e.generate(MSGS, GREEDY)
    assert base not in (first, paraphrase_out)
    with pytest.raises(EngineError, match="not found"):
        e.remove_adapter("math")
    e.activate("other")
    assert e.generate(MSGS, GREEDY) == paraphrase_out


@pytest.fixture(scope="module")
def short_context_model(tiny_qwen, tmp_path_factory):
    """The tiny Qwen2 model with a 256-token context, so an article overflows it."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("short-context") / "qwen2-256"
    shutil.copytree(tiny_qwen, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 256}))
    return folder


ARTICLE = " ".join(f"Sentence {i} of a long article about the harbour." for i in range(400))


@pytest.mark.parametrize("kind", ["mlx", "torch", "llamacpp"])
def test_a_long_input_is_cut_to_leave_room_for_the_answer(kind, short_context_model, tmp_path_factory):
    from app.engine.text import truncate

    e = create_engine(kind)
    e.load(_model(kind, short_context_model, tmp_path_factory))
    settings = GenerationSettings(max_tokens=20)
    msgs = get_task("summarize").messages(ARTICLE)
    chunks = list(e.stream_generate(msgs, settings))
    last = chunks[-1]
    n_article = len(e.encode(ARTICLE))
    assert n_article > 1000 and last.finish_reason in ("stop", "length")
    assert last.prompt_tokens + settings.max_tokens <= e.context_length == 256
    assert 0 < n_article - last.truncated_tokens < 256
    assert all(c.truncated_tokens == last.truncated_tokens for c in chunks)
    # The prompt it ran is the task's prompt for the article's start, cut by the benchmark's rule.
    kept = truncate(e, ARTICLE, n_article - last.truncated_tokens)
    assert ARTICLE.startswith(kept[:200]) and len(kept) < len(ARTICLE)
    tokens, cut = e.fit_prompt(msgs, settings.max_tokens)
    assert (cut, len(tokens)) == (last.truncated_tokens, last.prompt_tokens)
    assert tokens == e.encode(e.chat_prompt(get_task("summarize").messages(kept)))
    assert "".join(c.text for c in chunks) == e.generate(e.decode(tokens), settings)
    # A short input is not touched.
    assert list(e.stream_generate(MSGS, settings))[-1].truncated_tokens == 0
    # Refused, clearly: no room left for the prompt; a raw prompt string (never cut) too long.
    with pytest.raises(EngineError, match="leaves no room for the prompt"):
        e.generate(msgs, GenerationSettings(max_tokens=256))
    with pytest.raises(EngineError, match="Shorten the input"):
        e.generate(e.chat_prompt(msgs), settings)
    with pytest.raises(EngineError, match="Ask for a shorter answer"):
        e.generate(msgs, GenerationSettings(max_tokens=240))  # the instructions alone do not fit


def _count_forward_calls(e, on_call):
    """Calls `on_call(n)` before the model's n-th forward call (instrumentation, not a mock)."""
    calls = []
    if e.kind == "torch":
        e.model.register_forward_pre_hook(lambda *_: (calls.append(1), on_call(len(calls))) and None)
    else:
        model = e.model

        class Counting:  # mlx.nn.Module has no hooks: wrap the model, forward everything else
            def __call__(self, *args, **kwargs):
                calls.append(1)
                on_call(len(calls))
                return model(*args, **kwargs)

            def __getattr__(self, name):
                return getattr(model, name)

        e.model = Counting()
    return calls


@pytest.mark.parametrize("kind", ["mlx", "torch"])
def test_cancel_during_the_prefill_stops_it_between_chunks(kind, tiny_qwen):
    import threading
    import time

    e = create_engine(kind)
    e.load(tiny_qwen)
    e.prefill_step_size = 8  # a long prefill in many calls
    msgs = get_task("summarize").messages(ARTICLE[:6000])
    n_prompt = len(e.fit_prompt(msgs, 16)[0])
    assert n_prompt > 20 * 8
    cancel = threading.Event()
    calls = _count_forward_calls(e, lambda n: cancel.set() if n == 3 else None)  # Stop in the 3rd call
    t0 = time.perf_counter()
    chunks = list(e.stream_generate(msgs, GenerationSettings(max_tokens=16), cancel))
    assert time.perf_counter() - t0 < 30  # generous: what matters is the number of calls
    assert len(calls) == 3, f"{len(calls)} forward calls after a Stop in the 3rd of ~{n_prompt // 8}"
    assert [c.finish_reason for c in chunks] == ["cancelled"] and chunks[0].generation_tokens == 0
    assert chunks[0].text == "" and chunks[0].prompt_tokens == n_prompt
    # Without a Stop the same prompt is read in full and answered.
    cancel.clear()
    calls.clear()
    e.prefill_step_size = 2048
    done = list(e.stream_generate(msgs, GenerationSettings(max_tokens=4), threading.Event()))
    assert done[-1].finish_reason in ("stop", "length") and len(calls) >= 2


def test_prefill_calls_are_paced_to_a_fraction_of_a_second():
    """On a slow model each prefill call still ends well within a second, so a Stop is seen in time."""
    import time

    from app.engine.rates import PREFILL_SECONDS, prefill_spans

    per_token = 0.004  # a 250 tokens/s prefill: a 1.5B model on a laptop CPU
    durations, spans = [], []
    for lo, hi in prefill_spans(600, most=2048):
        t = time.perf_counter()
        time.sleep((hi - lo) * per_token)  # the forward call's work
        durations.append(time.perf_counter() - t)
        spans.append((lo, hi))
    assert spans[0] == (0, 32) and spans[-1][1] == 600
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # every token once, in order
    assert PREFILL_SECONDS <= 0.5 and max(durations) < 0.8  # a Stop waits for at most one call
    assert max(hi - lo for lo, hi in spans) > 32  # and it grows past the first guess


@pytest.mark.parametrize("kind", ["mlx", "torch"])
def test_unload_gives_the_model_back(kind, tiny_models, tiny_adapters):
    import gc
    import weakref

    e = create_engine(kind)
    e.load(tiny_models["qwen2"])
    e.add_adapter("math", tiny_adapters["qwen2"]["math"])
    e.activate("math")
    e.generate(MSGS, GREEDY)
    model = weakref.ref(e.model)
    e.unload()
    gc.collect()
    assert model() is None, "something still holds the unloaded model"
    assert e.model_info is None and e.adapters == {} and e.active is None
    with pytest.raises(EngineError, match="no model is loaded"):
        e.generate(MSGS, GREEDY)
    e.load(tiny_models["llama"])  # the same engine loads again
    assert e.generate(MSGS, GREEDY)
