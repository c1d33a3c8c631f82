"""Self-distilled targets for the math recipe (training/self_targets.py): the base answers the training
rows (batched on llama.cpp, resumable, cancellable); right, finished answers become the targets; the
adapter's rows_seen names the source rows the kept lines came from."""
from __future__ import annotations

import json
import threading

import pytest

from app.bench.evals import EvalOptions
from training import recipe, self_targets
from training.sources import DataError

SHORT = EvalOptions(max_tokens=8)


def rows(n: int, reference: int = 987654321) -> list[dict]:
    return [{"question": f"A farmer has {3 + i} crates of {2 + i} apples. How many apples?",
             "answer": f"He has {3 + i}*{2 + i} = <<{3 + i}*{2 + i}={(3 + i) * (2 + i)}>>.\n#### {reference + i}"}
            for i in range(n)]


def test_keep_takes_right_finished_answers_and_ends_them_with_the_answer_line():
    qs = rows(4)
    records = [
        {"row": 0, "output": "3*2 is 6, so the answer is \\boxed{6}.", "reference": "6", "right": True,
         "finish_reason": "stop"},
        {"row": 1, "output": "It is 12.\n#### 12", "reference": "12", "right": True, "finish_reason": "stop"},
        {"row": 2, "output": "It is 20 and then", "reference": "20", "right": True, "finish_reason": "length"},
        {"row": 3, "output": "It is 31.", "reference": "30", "right": False, "finish_reason": "stop"},
    ]
    kept, index = self_targets.keep(records, qs)
    assert index == [0, 1]  # a cut answer is not kept even when its last number is right
    assert kept[0] == {"question": qs[0]["question"], "answer": "3*2 is 6, so the answer is \\boxed{6}.\n#### 6"}
    assert kept[1]["answer"] == "It is 12.\n#### 12"  # already ends with the line: left as is


@pytest.fixture(scope="module")
def engine(tiny_ggufs):
    pytest.importorskip("llama_cpp")
    from app.engine.llamacpp_engine import LlamaCppEngine

    e = LlamaCppEngine(threads=1)
    e.load(tiny_ggufs["qwen2"])
    return e


def test_answers_are_batched_recorded_in_order_and_not_asked_again(engine, tmp_path):
    qs = rows(5)
    together = self_targets.answer_rows(engine, qs, tmp_path / "a", SHORT, workers=4)
    alone = self_targets.answer_rows(engine, qs, tmp_path / "b", SHORT, workers=1)
    assert [r["row"] for r in together] == list(range(5))
    # a batched greedy answer is the same as a lone one
    assert [r["output"] for r in together] == [r["output"] for r in alone]
    assert all(r["reference"] == str(987654321 + r["row"]) and r["right"] is False for r in together)
    file = tmp_path / "a" / self_targets.RESULTS
    before = file.read_text()
    assert len(before.splitlines()) == 5
    # a rerun reads the answers back (a torn last line from a crash is skipped and asked again)
    file.write_text(before + '{"row": 4, "outp')
    again = self_targets.answer_rows(engine, qs, tmp_path / "a", SHORT, workers=4)
    assert again == together
    assert file.read_text() == before + '{"row": 4, "outp\n'


def test_a_cancelled_run_keeps_what_it_answered(engine, tmp_path):
    qs = rows(6)
    cancel = threading.Event()
    seen = []

    def progress(done, total, right):
        seen.append(done)
        if done == 2:
            cancel.set()

    got = self_targets.answer_rows(engine, qs, tmp_path, SHORT, workers=1, progress=progress, cancel=cancel)
    assert len(got) == 2 and seen == [1, 2]
    rest = self_targets.answer_rows(engine, qs, tmp_path, SHORT, workers=2)
    assert [r["row"] for r in rest] == list(range(6)) and rest[:2] == got


def test_rows_seen_names_the_source_rows_of_the_kept_lines():
    split = {"train_row_offset": 0, "train_rows": [3, 7, 9, 12]}
    meta = {"rows_seen": {"train": {"/x/data/gsm8k/train.jsonl": "1-2,4"}, "valid": {"/x/data/gsm8k/train.jsonl": "3"}}}
    assert recipe.source_rows_seen(meta, split) == {"train": "3,7,12", "valid": "9"}
    assert recipe.source_rows_seen(meta, {"train_row_offset": 100}) == {"train": "100-101,103", "valid": "102"}


def test_self_targets_with_no_right_answer_is_a_clear_error(tiny_ggufs, tiny_qwen, tmp_path, monkeypatch):
    """The whole recipe up to training: the tiny base answers none right, so there is nothing to train on."""
    pytest.importorskip("llama_cpp")
    package = tmp_path / "pkg.jsonl"
    package.write_text("".join(json.dumps(r) + "\n" for r in rows(1319)))
    monkeypatch.setattr(recipe, "packaged_gsm8k", lambda: package)
    monkeypatch.setenv("LORADESK_THREADS", "1")
    cfg = recipe.RecipeConfig(out=tmp_path / "run", model=str(tiny_qwen), gguf=str(tiny_ggufs["qwen2"]),
                              engines=(), targets="self", self_rows=2)
    said = []
    with pytest.raises(DataError, match="answered no training question right"):
        recipe.run_recipe(cfg, said.append)
    assert "the base (llamacpp" in said[1] and "answers the 2 training questions" in said[1]
    assert len((tmp_path / "run" / "self-targets" / self_targets.RESULTS).read_text().splitlines()) == 2


def test_the_report_and_the_model_card_say_the_targets_were_the_base_own_answers():
    from app.hub_push import model_card

    targets = "self: the base's right, finished answers to 70 of 600 training rows"
    split = {"source": "pkg", "train": "rows 0-999", "heldout": "rows 1000-1318", "n_heldout": 319, "targets": targets}
    assert f"Targets: {targets}." in recipe.report_markdown({"engines": {}}, split, None)
    meta = {"training": {"rank": 16}, "recipe": {"name": "math-gsm8k", "source": "pkg", "train": "rows 0-999",
                                                 "heldout": "rows 1000-1318", "targets": targets,
                                                 "rows_seen": {"train": "3,7", "valid": "9"}}}
    card = model_card("math", "me/math", "Qwen/Qwen2.5-Coder-0.5B-Instruct", meta)
    assert "rows seen: train 3,7, validation 9; targets: self: the base's right, finished answers" in card
