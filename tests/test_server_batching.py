"""The server over the llama.cpp engine, which batches: requests run side by side, each under its
own adapter; a disconnect ends only its own answer; the queue limit and 503 mean what they did."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from app import store
from app.serve.api import Backend, ServeConfig, create_app
from app.serve.queue import SerialExecutor
from app.serve.runner import BackgroundServer

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module", autouse=True)
def loradesk_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("serve-batch-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORADESK_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def served(loradesk_home, tiny_ggufs, tiny_adapters):
    from app.session import open_session

    ad = tiny_adapters["qwen2"]
    store.add("math", ad["math"], name="math")
    store.add("code", ad["code"], name="code")
    engine = open_session(str(tiny_ggufs["qwen2"]), "llamacpp", warn=False).engine
    assert engine.max_batch > 1
    executor = SerialExecutor()
    app = create_app(Backend(lambda: engine, executor), ServeConfig(port=0, max_pending=12))
    server = BackgroundServer(app)
    yield dict(url=server.url, engine=engine, queue=app.state.queue,
               client=openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60))
    server.stop()
    executor.close()


def chat(client, model, text, max_tokens=8) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                       max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content


def test_concurrent_clients_on_mixed_adapters_are_batched_and_equal_alone(served, monkeypatch):
    engine = served["engine"]
    models, prompts = ("math", "code", "base"), ("What is 7 times 8?", "Write a function.")
    alone = {(m, p): chat(served["client"], m, p) for m in models for p in prompts}
    engine.activate("code")  # the tabs' adapter: requests never change it, nor use it
    sizes = []
    real = engine._decode_batch
    monkeypatch.setattr(engine, "_decode_batch", lambda b: (sizes.append(b.n), real(b))[1])
    results, errors = [], []

    def client_loop(i):
        client = openai.OpenAI(base_url=served["url"] + "/v1", api_key="x", max_retries=0, timeout=120)
        try:
            for j in range(3):
                m, p = models[(i + j) % 3], prompts[(i // 3 + j) % 2]
                results.append(((m, p), chat(client, m, p)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 18
    for key, answer in results:
        assert answer == alone[key], key
    assert max(sizes) >= 2  # requests shared llama_decode calls
    assert engine.active == "code"
    engine.activate(None)


def test_a_disconnect_mid_batch_ends_only_that_answer(served):
    queue, client = served["queue"], served["client"]
    expected = chat(client, "math", "What is 2+2?", max_tokens=12)
    queue.history.clear()
    stream = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "Tell a story"}],
                                            max_tokens=2000, stream=True)
    it = iter(stream)
    next(it)
    other = {}
    t = threading.Thread(target=lambda: other.setdefault("a", chat(client, "math", "What is 2+2?", max_tokens=12)))
    t.start()
    for _ in range(3):
        next(it)
    closed = time.perf_counter()
    stream.close()
    t.join(60)
    assert other["a"] == expected
    deadline = time.monotonic() + 10
    while queue.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    left = [tk for tk in queue.history if tk.label == "base"]
    assert left and left[-1].outcome == "cancelled" and left[-1].last.finish_reason == "cancelled"
    assert left[-1].ended_at - closed < 1.5 and left[-1].last.generation_tokens < 2000
    assert served["engine"].slots_report()["busy"] == 0


def test_the_queue_limit_counts_running_answers_too(served):
    engine = served["engine"]
    keyed = BackgroundServer(create_app(Backend(lambda: engine, SerialExecutor()), ServeConfig(port=0, max_pending=2)))
    try:
        client = openai.OpenAI(base_url=keyed.url + "/v1", api_key="x", max_retries=0, timeout=60)
        streams = [client.chat.completions.create(model=m, messages=[{"role": "user", "content": "Tell"}],
                                                  max_tokens=900, stream=True) for m in ("base", "math")]
        for s in streams:
            next(iter(s))
        # both answer at once (each reserves its prompt and 900 tokens of the 2048-token context) ...
        assert engine.slots_report()["running"] == 2
        r = httpx.post(keyed.url + "/v1/chat/completions",
                       json={"model": "code", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"  # ... and fill the queue
        assert int(r.headers["retry-after"]) >= 1
        for s in streams:
            s.close()
        deadline = time.monotonic() + 10
        while keyed.app.state.queue.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        assert chat(client, "code", "hi", max_tokens=2)
    finally:
        keyed.stop()
