"""The OpenAI-compatible server, driven by the real `openai` client over 127.0.0.1.

One tiny Qwen2 model on the torch engine, served in-process on a free port: the math and code
tasks have adapters, summarize has none (base model + the task's prompt), and `math:other` is a
second stored math adapter. Every expected answer comes from the engine itself (greedy).
"""
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
from app.tasks import GenerationSettings, get_task

TEXT = "Natalia sold clips to 48 of her friends in April."


@pytest.fixture(scope="module", autouse=True)
def loradesk_home(tmp_path_factory):
    """One home for the module (the server outlives a test): overrides conftest's per-test home."""
    home = tmp_path_factory.mktemp("serve-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORADESK_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def served(loradesk_home, tiny_qwen, tiny_adapters):
    from app.session import open_session

    ad = tiny_adapters["qwen2"]
    store.add("math", ad["paraphrase"], name="other")
    store.add("math", ad["math"], name="math")  # the last added is the one in use
    store.add("code", ad["code"], name="code")
    engine = open_session(str(tiny_qwen), "torch", warn=False).engine
    executor = SerialExecutor()
    backend = Backend(lambda: engine, executor)
    app = create_app(backend, ServeConfig(port=0, max_request_bytes=64_000, max_tokens_limit=2048))
    server = BackgroundServer(app)

    def on_engine(fn):
        """Run fn(engine) on the server's engine thread (in queue order) and return its result."""
        box, done = {}, threading.Event()

        def job():
            try:
                box["v"] = fn(engine)
            except BaseException as e:  # noqa: BLE001
                box["e"] = e
            finally:
                done.set()

        executor(job)
        assert done.wait(60)
        if "e" in box:
            raise box["e"]
        return box["v"]

    yield dict(url=server.url, engine=engine, backend=backend, queue=app.state.queue, on_engine=on_engine,
               client=openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60))
    server.stop()
    executor.close()


def engine_answer(served, adapter, messages, settings) -> str:
    def run(engine):
        engine.activate(adapter)
        return engine.generate(messages, settings)

    return served["on_engine"](run)


def chat(client, model, text, max_tokens=8, **kw) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                       max_tokens=max_tokens, temperature=0, **kw)
    return r.choices[0].message.content


def test_models_list_base_tasks_and_stored_adapters(served):
    data = {m.id: m.model_extra for m in served["client"].models.list().data}
    assert list(data) == ["base", "auto", "math", "code", "summarize", "paraphrase", "math:other"]
    assert data["base"]["adapter"] is None
    assert data["math"]["adapter"] == "math" and data["code"]["adapter"] == "code"
    assert data["summarize"]["adapter"] is None and "task's prompt" in data["summarize"]["served_by"]
    assert data["math:other"]["adapter"] == "math:other"
    health = httpx.get(served["url"] + "/health").json()
    assert health["status"] == "ok" and health["engine"] == "torch"


def test_plain_and_streamed_chat_and_usage(served):
    client = served["client"]
    settings = get_task("math").generation.replace(max_tokens=10)
    expected = engine_answer(served, "math", get_task("math").messages(TEXT), settings)
    r = client.chat.completions.create(model="math", messages=[{"role": "user", "content": TEXT}], max_tokens=10)
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason in ("stop", "length")
    assert r.object == "chat.completion" and r.model == "math"
    assert r.usage.completion_tokens <= 10 and r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    stream = client.chat.completions.create(model="math", messages=[{"role": "user", "content": TEXT}],
                                            max_tokens=10, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    with httpx.stream("POST", served["url"] + "/v1/chat/completions",
                      json={"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                            "stream": True}) as raw:
        lines = [ln for ln in raw.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"


def test_adapter_per_request_matches_ask_and_engine(served, tiny_qwen, capsys):
    from app.cli import main

    client, n = served["client"], 8
    answers = {m: chat(client, m, TEXT, max_tokens=n) for m in ("base", "math", "code", "summarize", "math:other")}
    # `loradesk ask --task math` on its own engine gives the same answer as model=math.
    assert main(["ask", "--task", "math", "--model", str(tiny_qwen), "--engine", "torch",
                 "--max-tokens", str(n), TEXT]) == 0
    assert capsys.readouterr().out == answers["math"] + "\n"
    for model, adapter in (("math", "math"), ("code", "code"), ("summarize", None), ("math:other", "math:other")):
        task = get_task(model.split(":")[0])
        assert answers[model] == engine_answer(served, adapter, task.messages(TEXT),
                                               task.generation.replace(max_tokens=n)), model
    assert answers["base"] == engine_answer(served, None, [{"role": "user", "content": TEXT}],
                                            GenerationSettings(max_tokens=n))
    assert len(set(answers.values())) == len(answers)  # each adapter (or prompt) changes the output
    # A system message of the request's own replaces the task's prompt; the adapter still applies.
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXT}]
    r = client.chat.completions.create(model="math", messages=own, max_tokens=n)
    assert r.choices[0].message.content == engine_answer(served, "math", own, get_task("math").generation.replace(max_tokens=n))
    # The engine's active adapter is as the server found it (the app's tabs rely on it).
    served["on_engine"](lambda e: e.activate("code"))
    chat(client, "math", TEXT, max_tokens=2)
    assert served["on_engine"](lambda e: e.active) == "code"


def test_completions_endpoint(served):
    r = served["client"].completions.create(model="code", prompt="def add(a, b):", max_tokens=8, temperature=0)
    settings = get_task("code").generation.replace(max_tokens=8, temperature=0.0)
    assert r.choices[0].text == engine_answer(served, "code", "def add(a, b):", settings)
    assert r.object == "text_completion" and r.usage.completion_tokens <= 8
    parts = [c.choices[0].text for c in served["client"].completions.create(
        model="code", prompt="def add(a, b):", max_tokens=8, stream=True)]
    assert "".join(parts) == r.choices[0].text


def test_concurrent_clients_alternating_adapters_equal_alone(served):
    models, prompts = ("math", "code", "base"), ("What is 7 times 8?", "Write a function.")
    alone = {(m, p): chat(served["client"], m, p, max_tokens=6) for m in models for p in prompts}
    results, errors = [], []

    def client_loop(i):
        client = openai.OpenAI(base_url=served["url"] + "/v1", api_key="x", max_retries=0, timeout=120)
        try:
            for j in range(5):
                m, p = models[(i + j) % 3], prompts[(i // 3 + j) % 2]
                results.append(((m, p), chat(client, m, p, max_tokens=6)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    queue = served["queue"]
    queue.peak_pending = 0
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 40
    assert queue.peak_pending >= 4  # the clients really waited on each other
    for key, answer in results:
        assert answer == alone[key], key


def _wait_ticket(queue, before: int, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [t for t in list(queue.history)[before:]]
        if new:
            return new[-1]
        time.sleep(0.02)
    raise AssertionError("the generation did not end")


def test_disconnect_cancels_generation(served):
    queue, client = served["queue"], served["client"]
    queue.history.clear()
    stream = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "What is 2+2?"}],
                                            max_tokens=2000, stream=True)
    it = iter(stream)
    for _ in range(4):
        next(it)
    closed = time.perf_counter()  # the queue's clock
    stream.close()
    ticket = _wait_ticket(queue, 0)
    # The engine stopped at once, far from the 2000 tokens asked (finish_reason would be "length").
    assert ticket.outcome == "cancelled" and ticket.last.finish_reason == "cancelled"
    assert ticket.ended_at - closed < 1.5 and ticket.last.generation_tokens < 2000
    # A non-streamed request whose client gives up (timeout) is cancelled too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(served["url"] + "/v1/chat/completions", timeout=1.0,
                   json={"model": "base", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 2000})
    gave_up = time.perf_counter()
    ticket = _wait_ticket(queue, 1)
    assert ticket.outcome == "cancelled" and ticket.last.finish_reason == "cancelled"
    assert ticket.ended_at - gave_up < 1.5
    assert chat(client, "code", "hello", max_tokens=3)  # the next request is served


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_bad_requests_get_openai_errors_and_server_keeps_serving(served):
    url, client = served["url"], served["client"]
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, "physics", "hi")
    assert e.value.code == "model_not_found" and "math" in e.value.message
    chat_url = url + "/v1/chat/completions"
    _error(httpx.post(chat_url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    _error(httpx.post(chat_url, json=[1, 2]), 400)
    msgs = [{"role": "user", "content": "hi"}]
    for bad, param in ((dict(temperature=-1), "temperature"), (dict(n=2), "n"), (dict(max_tokens=5000), "max_tokens"),
                       (dict(top_p=0), "top_p"), (dict(stop=["a"] * 5), "stop")):
        assert _error(httpx.post(chat_url, json={"model": "math", "messages": msgs, **bad}), 400)["param"] == param
    assert _error(httpx.post(chat_url, json={"model": "math", "messages": []}), 400)["param"] == "messages"
    assert _error(httpx.post(chat_url, json={"messages": msgs}), 400)["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="math", messages=msgs, temperature=5)
    err = _error(httpx.post(chat_url, json={"model": "math", "messages": [{"role": "user", "content": "x" * 70_000}]}), 413)
    assert err["code"] == "request_too_large"
    # A raw prompt longer than the model's context: the engine's own message, as a 400.
    long = " ".join(["clips"] * 3000)
    assert "tokens" in _error(httpx.post(url + "/v1/completions", json={"model": "base", "prompt": long,
                                                                         "max_tokens": 2}), 400)["message"]
    _error(httpx.get(url + "/v1/nothing"), 404)
    assert _error(httpx.get(url + "/v1/models", headers={"host": "evil.example:8000"}), 403)["code"] == "host_not_allowed"
    assert chat(client, "math", "still there?", max_tokens=3)


def test_api_key_and_queue_limit(served):
    backend = served["backend"]
    with pytest.raises(ValueError, match="API key"):
        ServeConfig(host="0.0.0.0")
    keyed = BackgroundServer(create_app(backend, ServeConfig(port=0, api_key="sekrit", max_pending=1)))
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert _error(httpx.get(keyed.url + "/v1/models"), 401)["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=keyed.url + "/v1", api_key="sekrit", max_retries=0, timeout=60)
        assert chat(good, "math", "hi", max_tokens=2)
        # One long answer fills this queue (max_pending=1): the next request gets 503 + Retry-After.
        stream = good.chat.completions.create(model="base", messages=[{"role": "user", "content": "Tell"}],
                                              max_tokens=2000, stream=True)
        next(iter(stream))
        r = httpx.post(keyed.url + "/v1/chat/completions", headers={"Authorization": "Bearer sekrit"},
                       json={"model": "math", "messages": [{"role": "user", "content": "hi"}]})
        assert _error(r, 503)["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1
        stream.close()
        deadline = time.monotonic() + 10
        while keyed.app.state.queue.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        assert chat(good, "math", "hi", max_tokens=2)  # served again once the queue drains
    finally:
        keyed.stop()


def test_serve_cli_refuses_public_host_without_key(capsys, monkeypatch):
    from app.cli import main

    monkeypatch.delenv("LORADESK_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "API key" in capsys.readouterr().err


def test_app_menu_serves_through_the_apps_engine_thread(qtbot, served, tiny_qwen):
    """File > Serve on localhost: API requests queue on the app's engine thread behind the app's
    own answer; neither answer is touched by the other's adapter; the status bar counts requests."""
    pytest.importorskip("pytestqt")
    from app.session import load_settings, save_settings
    from app.ui.engine_host import Run
    from app.ui.main_window import MainWindow

    save_settings({**load_settings(), "serve_port": 0})  # a free port: 8000 may be taken here
    win = MainWindow(model=str(tiny_qwen), engine="torch")
    qtbot.addWidget(win)
    win.start()
    qtbot.waitUntil(lambda: win.host.engine is not None, timeout=60_000)
    try:
        win.serve.action.trigger()
        assert win.serve.action.isChecked() and win.serve.url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=win.serve.url, api_key="x", max_retries=0, timeout=60)
        alone_api = chat(client, "code", TEXT, max_tokens=6)
        assert alone_api == chat(served["client"], "code", TEXT, max_tokens=6)  # same model, same answer

        task = get_task("math")
        run = Run(task.messages(TEXT), task.generation.replace(max_tokens=300))
        app_alone = engine_answer(served, "math", run.messages, run.settings)
        pieces, api_answer = [], {}
        worker = win.host.generate("math", [run], connect={"yielded": lambda v: pieces.append(v[1].text)})
        qtbot.waitUntil(lambda: len(pieces) >= 2, timeout=30_000)  # the app's answer is under way
        t = threading.Thread(target=lambda: api_answer.setdefault("v", chat(client, "code", TEXT, max_tokens=6)))
        t.start()
        qtbot.waitUntil(lambda: worker.done.is_set() and not t.is_alive(), timeout=60_000)
        assert "".join(pieces) == app_alone and api_answer["v"] == alone_api
        qtbot.waitUntil(lambda: "2 requests" in win.serve.label.text(), timeout=5000)
        assert not win.serve.label.isHidden() and win.serve.url in win.serve.label.text()
        url = win.serve.url
        win.serve.action.trigger()  # off
        assert not win.serve.action.isChecked() and win.serve.server is None
        qtbot.waitUntil(lambda: _refused(url), timeout=10_000)
    finally:
        win.close()


def _refused(url: str) -> bool:
    try:
        httpx.get(url + "/models", timeout=1)
    except httpx.ConnectError:
        return True
    except httpx.TimeoutException:  # a server mid-shutdown may accept and not answer: ask again
        return False
    return False
