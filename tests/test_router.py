"""The Auto router: held-out accuracy (general chat among the prompts), its cost, the rebuild of its
shipped weights, and where it shows: `loradesk route`, `ask --task auto`, the API's `auto` and mixes."""
import json
import time

import httpx
import numpy as np
import pytest

from app.cli import main
from app.router import NONE, WEIGHTS, Router, default_router, features
from app.tasks import GenerationSettings, get_task, task_names

WORD_PROBLEM = "Keiko bakes 14 pies and sells 9 of them at 6 dollars each. How much money does she make?"


def test_labels_are_the_tasks_plus_general_chat():
    assert default_router().labels == task_names() + [NONE]


def test_heldout_accuracy_with_general_chat_among_the_prompts():
    from app.router import accuracy, heldout

    items = heldout()
    assert {it["task"] for it in items} == set(task_names()) | {NONE}
    assert sum(it["task"] == NONE for it in items) >= 40
    assert {"gsm8k", "math_qa", "code_alpaca", "cnn_dailymail", "arxiv", "paws"} <= {it.get("source") for it in items}
    acc, confusion, labels = accuracy(default_router(), items)
    assert acc >= 0.95, confusion
    recall = np.diag(confusion) / confusion.sum(axis=1)
    assert recall.min() >= 0.9, dict(zip(labels, recall))


def test_heldout_prompts_are_not_training_prompts():
    from app.router import heldout
    from training.router_data import training_prompts

    train = {t for t, _ in training_prompts()}
    assert not train & {it["prompt"] for it in heldout()}


@pytest.mark.parametrize("text, task", [
    ("hey, how's it going?", NONE),
    ("Write a haiku about rain on a tin roof.", NONE),
    ("What is 17% of 240?", "math"),
    ("Give me a Python function that merges two dictionaries.", "code"),
    ("Reword this: The train was late because of the snow.", "paraphrase"),
])
def test_obvious_prompts(text, task):
    r = default_router().route(text)
    assert r.task == task and r.confidence > 0.5
    assert abs(sum(r.scores.values()) - 1) < 1e-5 and list(r.scores)[0] == task


def test_routing_costs_well_under_fifty_ms_for_a_200_token_prompt():
    router = default_router()
    prompt = " ".join(["the committee reviewed the budget and the plan for the new library"] * 17)
    assert 180 <= len(prompt.split()) <= 220
    best = min(_timed(router.route, prompt) for _ in range(5))
    assert best < 0.05, best


def _timed(fn, *a):
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


def test_features_do_not_depend_on_the_process_hash_seed():
    idx, val = features("Same text, same buckets.")
    # fixed by crc32 and integer hashing, not Python's per-process salted hash()
    assert idx.tolist() == features("Same text, same buckets.")[0].tolist() and np.all(val > 0)
    import subprocess
    import sys

    code = "from app.router import features; print(features('Same text, same buckets.')[0].tolist())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=str(WEIGHTS.parents[2]))
    assert json.loads(out.stdout) == idx.tolist()


def test_training_rebuilds_the_shipped_weights(tmp_path):
    from training.router import build

    out = build(tmp_path / "router.npz")
    with np.load(out) as new, np.load(WEIGHTS) as shipped:
        assert np.array_equal(new["w"], shipped["w"]) and np.array_equal(new["b"], shipped["b"])
    assert WEIGHTS.stat().st_size < 400_000  # small enough to ship in the repo


def test_damaged_weights_are_a_clear_error(tmp_path):
    bad = tmp_path / "router.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="python -m training.router"):
        Router.load(bad)


# -- command line ----------------------------------------------------------------------------------
def test_route_prints_task_and_confidence(capsys):
    assert main(["route", WORD_PROBLEM]) == 0
    task, conf = capsys.readouterr().out.split()
    assert task == "math" and 0.5 < float(conf) <= 1


def test_route_jsonl_writes_one_line_per_prompt(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": WORD_PROBLEM}) + "\n\n" + json.dumps({"prompt": "good night!"}) + "\n")
    assert main(["route", "--jsonl", str(src)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["prompt"], r["task"]) for r in rows] == [(WORD_PROBLEM, "math"), ("good night!", NONE)]
    assert all(0 < r["confidence"] <= 1 for r in rows)


@pytest.mark.parametrize("lines, message", [
    ('{"prompt": 3}\n', "in.jsonl:1: expected an object with a string 'prompt'"),
    ('{"prompt": "ok"}\nnot json\n', "in.jsonl:2: not JSON"),
])
def test_route_jsonl_bad_lines_are_errors_not_tracebacks(tmp_path, capsys, lines, message):
    src = tmp_path / "in.jsonl"
    src.write_text(lines)
    assert main(["route", "--jsonl", str(src)]) == 2
    assert message in capsys.readouterr().err


def test_bench_route_without_a_model(capsys):
    assert main(["bench", "route", "--no-ttft", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["accuracy"] >= 0.95 and r["route_ms_200_tokens"] < 50
    assert np.array(r["confusion"]).sum() == r["items"]


def test_ask_auto_routes_then_answers_with_the_task_prompt(tiny_qwen, tiny_adapters, capsys):
    from app import store

    store.add("math", tiny_adapters["qwen2"]["math"], name="math", model=str(tiny_qwen), force=True)
    assert main(["ask", "--task", "auto", "--engine", "torch", "--model", str(tiny_qwen), "--max-tokens", "6",
                 "--stats", WORD_PROBLEM]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("auto: math (") and "adapter: math" in captured.err
    from app.session import open_session

    engine = open_session(str(tiny_qwen), "torch", tasks=["math"], warn=False).engine
    engine.activate("math")
    expected = engine.generate(get_task("math").messages(WORD_PROBLEM), GenerationSettings(max_tokens=6))
    assert captured.out == expected + "\n"


# -- the local API ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(tiny_qwen, tiny_adapters):
    from app.engine import create_engine
    from app.serve.api import Backend, ServeConfig, create_app
    from app.serve.queue import SerialExecutor
    from app.serve.runner import BackgroundServer

    engine = create_engine("torch")
    engine.load(tiny_qwen)
    for name in ("math", "code"):
        engine.add_adapter(name, tiny_adapters["qwen2"][name], force=True)
    executor = SerialExecutor()
    server = BackgroundServer(create_app(Backend(lambda: engine, executor), ServeConfig(port=0)))
    yield engine, server.url
    server.stop()
    executor.close()


def _chat(url, model, text):
    return httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": model, "max_tokens": 6, "messages": [{"role": "user", "content": text}]})


def test_api_auto_routes_each_request(api):
    engine, url = api
    r = _chat(url, "auto", WORD_PROBLEM)
    assert r.status_code == 200 and r.json()["model"] == "math"
    engine.activate("math")
    expected = engine.generate(get_task("math").messages(WORD_PROBLEM), GenerationSettings(max_tokens=6))
    assert r.json()["choices"][0]["message"]["content"] == expected
    chat = _chat(url, "auto", "hello! how are you today?")
    assert chat.status_code == 200 and chat.json()["model"] == "base"
    assert "auto" in [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]


def test_api_mix_answers_with_the_weighted_adapters(api):
    engine, url = api
    r = _chat(url, "mix:math=0.7,code=0.3", WORD_PROBLEM)
    assert r.status_code == 200 and r.json()["model"] == "mix:math=0.7,code=0.3"
    engine.activate_mix({"math": 0.7, "code": 0.3})
    expected = engine.generate(get_task("math").messages(WORD_PROBLEM), GenerationSettings(max_tokens=6))
    assert r.json()["choices"][0]["message"]["content"] == expected
    bad = _chat(url, "mix:math=seven", WORD_PROBLEM)
    assert bad.status_code == 400 and "not a number" in bad.json()["error"]["message"]
    unknown = _chat(url, "mix:math=0.5,poetry=0.5", WORD_PROBLEM)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


# -- the app's Auto tab -----------------------------------------------------------------------------
def test_auto_tab_routes_shows_its_choice_overrides_and_mixes(qtbot, tiny_qwen, tiny_adapters):
    pytest.importorskip("pytestqt")
    from app import store
    from app.ui.main_window import MainWindow

    for task in ("math", "code"):
        store.add(task, tiny_adapters["qwen2"][task], name=f"{task}-tiny", model=str(tiny_qwen), force=True)
    win = MainWindow(model=str(tiny_qwen), engine="torch")
    qtbot.addWidget(win)
    win.show()
    win.start()
    qtbot.waitUntil(lambda: win.host.engine is not None, timeout=60_000)
    engine = win.host.engine
    tab = win.task_tabs["auto"]
    assert win.tabs.widget(0) is tab and win.tabs.tabText(0) == "Auto"
    tab.runs = lambda text: [type(r)(r.messages, r.settings.replace(max_tokens=6))
                             for r in type(tab).runs(tab, text)]

    def answer(click):
        with qtbot.waitSignal(tab.generation_finished, timeout=60_000):
            click()

    tab.input.setPlainText(WORD_PROBLEM)
    answer(tab.generate)
    assert tab.adapter_used == "math" and "Auto chose <b>Math</b>" in tab.choice_label.text()
    assert "%" in tab.choice_label.text() and not tab.other_buttons["math"].isVisible()
    engine.activate("math")
    assert tab.texts[0] == engine.generate(get_task("math").messages(WORD_PROBLEM), GenerationSettings(max_tokens=6))

    answer(tab.other_buttons["code"].click)  # one click: the same input as Code
    assert tab.adapter_used == "code" and "You chose <b>Code</b>" in tab.choice_label.text()
    engine.activate("code")
    assert tab.texts[0] == engine.generate(get_task("code").messages(WORD_PROBLEM), GenerationSettings(max_tokens=6))

    tab.mix_box.setChecked(True)
    tab.mix_edit.setText("math=0.7,code=0.3")
    answer(tab.generate)
    assert engine.active == "mix:math=0.7,code=0.3" and "mix:math=0.7,code=0.3" in tab.status.text()
    engine.activate_mix({"math": 0.7, "code": 0.3})
    assert tab.texts[0] == engine.generate(get_task("math").messages(WORD_PROBLEM), GenerationSettings(max_tokens=6))

    tab.mix_edit.setText("math=0.7,summarize=0.3")  # no summarize adapter loaded
    tab.generate()
    assert "cannot mix summarize" in tab.message.text() and not tab.busy
    tab.mix_edit.setText("math=lots")
    tab.generate()
    assert "not a number" in tab.message.text()
    win.close()
