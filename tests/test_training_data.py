"""Dataset preparation: preparers per source (real schemas in tests/fixtures/data), bad input,
fitting to the context, seeded splits, mixing, and keeping benchmark items out of training."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from app.tasks import get_task
from training import decontam
from training.config import TrainConfig
from training.data import TokenCounter, prepare
from training.preparers import mathqa_options
from training.sources import DataError, read_file

DATA = Path(__file__).parent / "fixtures" / "data"


def prep(task, *paths, **kw):
    kw.setdefault("max_seq_length", 512)
    return prepare(TrainConfig.for_task(task, data=tuple(str(DATA / p) for p in paths), **kw))


def by_where(prepared, fragment):
    found = [e for e in prepared.train + prepared.valid + prepared.test if fragment in e.where]
    assert found, f"no example from {fragment}"
    return found


# --- preparers -------------------------------------------------------------------------------

def test_gsm8k_keeps_annotations_and_final_line():
    p = prep("math", "gsm8k/main")
    natalia = [e for e in p.pool if e.text.startswith("Natalia")][0]
    assert natalia.response == ("Natalia sold 48/2 = «48/2=24»24 clips in May.\n"
                                "Natalia sold 48+24 = «48+24=72»72 clips altogether in April and May.\n#### 72")
    # the hub's <<a=b>> spelling becomes the «a=b» the task record asks for
    assert all("<<" not in e.response and e.response.rsplit("\n", 1)[-1].startswith("#### ") for e in p.train)


def test_mathqa_options_rationale_and_answer():
    assert mathqa_options("a ) rs . 400 , b ) rs . 300 , c ) 1 / 2 , d ) 27.675 , e ) none of these") == {
        "a": "rs . 400", "b": "rs . 300", "c": "1 / 2", "d": "27.675", "e": "none of these"}
    p = prep("math", "math_qa/train.parquet")
    banker = [e for e in p.pool if e.text.startswith("the banker")][0]
    assert "Options: a) rs . 400, b) rs . 300" in banker.text
    assert banker.response.endswith("pw = 1200 / 3 = rs . 400\nThe answer is (a) rs . 400.\n#### 400")
    assert "answer : option a" not in banker.response and not banker.response.startswith('"')
    ratio = [e for e in p.pool if "ratio of girls" in e.text][0]
    assert ratio.response.endswith("#### 1/2")


def test_code_sources_keep_python_only_in_one_block():
    p = prep("code", "code_alpaca", "python_codes_25k")
    alpaca = p.report["sources"]["lucasmccabe-lmi/CodeAlpaca-20k"]
    assert alpaca["skipped"] == {"not Python": 2}  # the JavaScript answer and the prose formula
    assert p.report["sources"]["flytech/python-codes-25k"]["files"] == [str(DATA / "python_codes_25k/train.jsonl")]
    everything = p.pool
    arr = [e for e in everything if e.text.startswith("Create an array")][0]
    assert arr.response == "```python\narr = [2, 4, 6, 8, 10]\n```"
    unique = [e for e in everything if "unique characters" in e.text][0]
    assert unique.text.endswith('string = "Programming"')  # CodeAlpaca's input is part of the request
    todo = [e for e in everything if "to-do list" in e.text][0]
    assert todo.text == "Help me set up my daily to-do list!"  # python-codes' status line is dropped
    assert todo.response.startswith("```python\ntasks = []")
    rev = [e for e in everything if e.text.startswith("Fix the code")][0]
    assert "print(reverse('abc'))" in rev.text  # real input (code) is kept
    assert all("```python" in e.response and "function isFibonacci" not in e.response for e in everything)


def test_summarize_sources_join_highlights_and_pick_length():
    p = prep("summarize", "cnn_dailymail", "arxiv", max_seq_length=2048)
    rad = [e for e in p.pool if e.text.startswith("LONDON")][0]
    assert rad.response.startswith("Harry Potter star Daniel Radcliffe gets £20M fortune as he turns 18 Monday . Young actor")
    assert rad.options == {"length": "medium"}  # three highlights
    task = get_task("summarize")
    assert rad.messages(task)[1]["content"].startswith("Summarize the following text in two or three sentences.\n\nLONDON")
    cluster = [e for e in p.pool if e.text.startswith("the study of galaxy")][0]
    assert cluster.options == {"length": "long"}  # a four-sentence abstract


def test_paws_uses_true_paraphrases_only():
    p = prep("paraphrase", "paws/labeled_final/train.csv")
    src = p.report["sources"]["google-research-datasets/paws"]
    assert src["skipped"] == {"not a paraphrase (label 0)": 2} and src["examples"] == 5
    nba = [e for e in p.pool if "NBA season" in e.text][0]
    assert nba.response == "The 1975 -- 76 season of the National Basketball Association was the 30th season of the NBA ."


def test_messages_come_from_the_task_record():
    for task_name, path in (("math", "gsm8k/main"), ("code", "code_alpaca"), ("paraphrase", "paws")):
        task = get_task(task_name)
        e = prep(task_name, path).train[0]
        msgs = e.messages(task)
        assert msgs == task.messages(e.text, response=e.response, **e.options)
        assert msgs[0] == {"role": "system", "content": task.system_prompt}
        assert msgs[-1] == {"role": "assistant", "content": e.response}


# --- bad input -------------------------------------------------------------------------------

def test_missing_field_names_file_and_row(tmp_path):
    f = tmp_path / "gsm8k_train.jsonl"
    f.write_text(json.dumps({"question": "q1", "answer": "a\n#### 1"}) + "\n" + json.dumps({"question": "q2"}) + "\n")
    with pytest.raises(DataError, match=r"gsm8k_train.jsonl row 2: missing field 'answer'"):
        prepare(TrainConfig.for_task("math", data=(f"openai/gsm8k={f}",)))


def test_empty_required_csv_cell_is_an_error(tmp_path):
    f = tmp_path / "paws.csv"
    f.write_text("id,sentence1,sentence2,label\n1,A sentence .,,1\n")
    with pytest.raises(DataError, match=r"paws.csv row 1: field 'sentence2' is empty"):
        prepare(TrainConfig.for_task("paraphrase", data=(str(f),)))


def test_empty_dataset_unknown_format_and_bad_json(tmp_path):
    empty = tmp_path / "train.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"train.jsonl has no rows \(empty dataset\)"):
        read_file(empty)
    txt = tmp_path / "data.txt"
    txt.write_text("hello")
    with pytest.raises(DataError, match=r"data.txt: unknown data format '.txt'; use one of .jsonl"):
        prepare(TrainConfig.for_task("math", data=(str(txt),)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(DataError, match=r"broken.jsonl line 2: not valid JSON"):
        read_file(broken)
    with pytest.raises(DataError, match="does not exist"):
        read_file(tmp_path / "missing.parquet")


def test_columns_matching_no_source(tmp_path):
    f = tmp_path / "other.jsonl"
    f.write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    with pytest.raises(DataError, match=r"columns \['completion', 'prompt'\] match no math dataset"):
        prepare(TrainConfig.for_task("math", data=(str(f),)))


def test_too_long_examples_are_dropped_with_a_counted_warning(tmp_path, caplog):
    rows = [{"question": f"Short question {i}?", "answer": f"{i}+1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"} for i in range(4)]
    rows.append({"question": "Long question " + "with many words " * 300 + "?", "answer": "#### 1"})
    f = tmp_path / "gsm8k_train.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.INFO):
        p = prepare(TrainConfig.for_task("math", data=(str(f),), max_seq_length=256))
    assert p.report["sources"]["openai/gsm8k"]["too_long"] == 1
    msg = [w for w in p.warnings if "longer than max_seq_length" in w][0]
    assert msg.startswith("openai/gsm8k: 1 of 5 examples are longer than max_seq_length 256") and "row 5" in msg
    assert any("longer than max_seq_length" in r.message for r in caplog.records)  # also in the log file
    assert all("Long question" not in e.text for e in p.pool)


def test_long_articles_are_cut_keeping_the_start(tiny_qwen):
    counter = TokenCounter(tokenizer_json=tiny_qwen / "tokenizer.json")
    config = TrainConfig.for_task("summarize", data=(str(DATA / "cnn_dailymail"), str(DATA / "arxiv")), max_seq_length=1500)
    p = prepare(config, counter)
    task = get_task("summarize")
    cut = [e for e in p.pool if e.cut_tokens]
    assert len(cut) == 2 and p.report["sources"]["ccdv/cnn_dailymail"]["cut"] == 1
    assert p.report["sources"]["ccdv/arxiv-summarization"]["cut_tokens"] == [e for e in cut if "arxiv" in e.where][0].cut_tokens
    bridge = [e for e in cut if "Paragraph 1 " in e.text][0]
    assert bridge.text.startswith("NEW YORK (CNN) -- Paragraph 1 of the council report")
    assert bridge.text.endswith(".")  # cut at a sentence end
    assert counter.chat(bridge.messages(task)) <= 1500
    assert any("articles were cut to fit 1500 tokens" in w and "tokens cut in all" in w for w in p.warnings)


# --- splits, mixing and benchmark items --------------------------------------------------------

def test_splits_are_deterministic_and_disjoint():
    a = prep("math", "gsm8k/main", "math_qa", valid_fraction=0.2, test_fraction=0.2)
    b = prep("math", "gsm8k/main", "math_qa", valid_fraction=0.2, test_fraction=0.2)
    for name in ("train", "valid", "test"):
        assert [e.where for e in getattr(a, name)] == [e.where for e in getattr(b, name)]
    assert a.fingerprint() == b.fingerprint()
    keys = [{e.where for e in s} for s in (a.train, a.valid, a.test)]
    assert keys[0].isdisjoint(keys[1]) and keys[0].isdisjoint(keys[2]) and keys[1].isdisjoint(keys[2])
    assert len(a.test) >= 2 and len(a.valid) >= 2
    c = prep("math", "gsm8k/main", "math_qa", valid_fraction=0.2, test_fraction=0.2, seed=7)
    assert {e.where for e in c.test} != {e.where for e in a.test} or [e.where for e in c.train] != [e.where for e in a.train]


def test_benchmark_items_never_reach_training():
    p = prep("math", "gsm8k/main", "math_qa", "hellaswag")
    r = p.report
    assert r["sources"]["openai/gsm8k"]["eval_overlap"] == 1  # Janet's ducks, a GSM8K test item
    assert r["sources"]["allenai/math_qa"]["eval_overlap"] == 1  # the shopkeeper, a MathQA test item
    checked = r["eval_items"]["checked"]
    assert checked["openai/gsm8k:test"] == 3 and checked["allenai/math_qa:test"] == 2
    assert checked["openai_humaneval"] >= 164 * 2 and checked["hellaswag"] == 10
    texts = [e.text for e in p.pool]
    assert not any("Janet" in t or "shopkeeper" in t for t in texts)
    code = prep("code", "code_alpaca")  # HumanEval/0 pasted into a CodeAlpaca row
    assert code.report["sources"]["lucasmccabe-lmi/CodeAlpaca-20k"]["eval_overlap"] == 1
    assert not any("has_close_elements" in e.text for e in code.pool)
    # the final guard itself: a contaminated split is refused
    items = decontam.EvalItems()
    items.add("gsm8k", ["Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning."])
    leaked = p.train[0].__class__("JANET's ducks lay 16 eggs per day; she eats three for breakfast every morning",
                                  "#### 18", "openai/gsm8k", "x row 1", key="")
    with pytest.raises(AssertionError, match="overlap benchmark evaluation items"):
        decontam.assert_clean({"train": p.train + [leaked]}, items)
    decontam.assert_clean({"train": p.train, "valid": p.valid, "test": p.test}, items)


def test_mixing_follows_the_weights():
    even = prep("math", "gsm8k/main", "math_qa", mix={"openai/gsm8k": 1, "allenai/math_qa": 1})
    counts = {k: v["train"] for k, v in even.report["sources"].items()}
    assert counts["openai/gsm8k"] == counts["allenai/math_qa"] == 4  # limited by the smaller pool
    only = prep("math", "gsm8k/main", "math_qa", mix={"allenai/math_qa": 0})
    assert {e.source for e in only.train} == {"openai/gsm8k"}
    capped = prep("math", "gsm8k/main", "math_qa", max_examples=4)
    assert len(capped.train) == 4
    first = prep("math", "gsm8k/main", max_source_rows=3)  # the first rows of each training file
    assert first.report["sources"]["openai/gsm8k"]["rows"] == 3
    assert first.report["eval_items"]["checked"]["openai/gsm8k:test"] == 3  # evaluation items are never capped


def test_hub_loading_offline_says_what_to_do():
    with pytest.raises(DataError, match=r"cannot load openai/gsm8k \(main\) split 'train' from the hub.*--data openai/gsm8k=PATH"):
        prepare(TrainConfig.for_task("math"))


def test_config_validation():
    with pytest.raises(ValueError, match="rank must be >= 1.*batch_size must be >= 1"):
        TrainConfig.for_task("math", rank=0, batch_size=0)
    with pytest.raises(ValueError, match="unknown task"):
        TrainConfig(task="poetry")
    c = TrainConfig.for_task("summarize")
    assert (c.max_seq_length, c.learning_rate, c.batch_size) == (2048, 1e-4, 2)  # the record's [training]


def test_data_preview_cli(capsys):
    from app.cli import main

    code = main(["data", "preview", "--task", "math", "--data", str(DATA / "gsm8k"), str(DATA / "math_qa"), "-n", "2",
                 "--model", str(DATA / "no-such-model")])
    out = capsys.readouterr()
    assert code == 0
    assert out.out.startswith("task math: train 7, valid 2, test 0 examples (max 768 tokens, estimated counts)")
    assert "openai/gsm8k: 7 rows -> 7 examples" in out.out and "benchmark overlap 1" in out.out
    assert "benchmark items excluded from training: openai/gsm8k:test (3), allenai/math_qa:test (2)" in out.out
    assert out.out.count("[system]\nYou are a careful math tutor.") == 2
    assert "match benchmark evaluation items" in out.err
