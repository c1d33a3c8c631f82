from app.tasks import tomllib  # tomli on Python 3.10

import pytest

from app.tasks import get_task, load_tasks, parse_record


def test_four_tasks_in_order_with_examples():
    tasks = load_tasks()
    assert list(tasks) == ["math", "code", "summarize", "paraphrase"]
    assert "Natalia sold clips" in tasks["math"].example_input
    assert "«48/2=24»24" in tasks["math"].example_output
    assert tasks["summarize"].example_input.startswith("LONDON, England (Reuters)")
    assert tasks["paraphrase"].example_input.startswith("Sunsets paint the sky")
    assert "Python" in tasks["code"].example_input


def test_datasets_named_by_the_proposal():
    ids = {t.name: [d.id for d in t.datasets] for t in load_tasks().values()}
    assert ids["math"] == ["openai/gsm8k", "allenai/math_qa"]
    assert ids["code"] == ["lucasmccabe-lmi/CodeAlpaca-20k", "flytech/python-codes-25k"]
    assert ids["summarize"] == ["ccdv/cnn_dailymail", "ccdv/arxiv-summarization"]
    assert len(ids["paraphrase"]) == 1


def test_messages_fill_template_and_options():
    s = get_task("summarize")
    short = s.messages("TEXT", length="short")
    assert short[0]["role"] == "system" and short[1]["content"].endswith("TEXT")
    assert "one sentence" in short[1]["content"]
    assert "two or three" in s.user_message("TEXT")  # default is the first choice
    with pytest.raises(ValueError, match="length must be one of"):
        s.user_message("TEXT", length="huge")
    full = get_task("math").messages("Q", response="A")
    assert [m["role"] for m in full] == ["system", "user", "assistant"]


def test_bad_record_gives_clear_error():
    with pytest.raises(ValueError, match="missing field 'metric'"):
        parse_record({"name": "x", "label": "X", "system_prompt": "", "user_template": "{input}", "example_input": ""})
    data = tomllib.loads((get_task("math").record_path).read_text())
    data["user_template"] = "{input} {nope}"
    with pytest.raises(ValueError, match="unknown placeholders"):
        parse_record(data)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'poetry'"):
        get_task("poetry")
