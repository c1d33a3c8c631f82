"""The math-gsm8k recipe: the packaged-data split, rows seen, statistics, and a whole tiny run; the
shipped adapter registered for its base model only."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from app.bench import stats
from training import recipe
from training.data import parse_ranges, row_ranges
from training.sources import DataError


WORDS = ("apple pear crate truck farmer market basket coin shelf garden river bridge ticket cookie "
         "pencil marble sticker window candle bucket blanket wagon ladder kettle").split()


def gsm8k_rows(n: int) -> list[dict]:
    """Rows in the real GSM8K schema (`<<a=b>>` annotations, '#### N'); questions share no 13-word
    run, as real ones do not (the decontamination compares word n-grams)."""
    import random

    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = 3 + i, 2 + i % 7
        words = " ".join(rng.choice(WORDS) for _ in range(8))
        rows.append({"question": f"{words} {a} times {b}?",
                     "answer": f"It is {a} * {b} = <<{a}*{b}={a * b}>>{a * b}.\n#### {a * b}"})
    return rows


@pytest.fixture
def package_file(tmp_path):
    path = tmp_path / "pkg" / "test.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows(1319)))
    return path


def test_split_holds_out_the_last_319_rows_and_says_so(tmp_path, package_file):
    info = recipe.write_split(tmp_path / "out", package_file=package_file)
    folder = tmp_path / "out" / "data" / "gsm8k"
    train = [json.loads(x) for x in (folder / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (folder / "test.jsonl").read_text().splitlines()]
    rows = gsm8k_rows(1319)
    assert train == rows[:1000] and test == rows[1000:]
    assert info["n_train_rows"] == 1000 and info["n_heldout"] == 319
    assert info["heldout"] == "rows 1000-1318"
    assert json.loads((tmp_path / "out" / "split.json").read_text())["file_sha256"] == info["file_sha256"]


def test_a_short_file_and_a_missing_package_are_clear_errors(tmp_path, package_file, monkeypatch):
    short = tmp_path / "short.jsonl"
    short.write_text("".join(package_file.read_text().splitlines(True)[:500]))
    with pytest.raises(DataError, match="500 rows"):
        recipe.write_split(tmp_path / "out", package_file=short)
    monkeypatch.setattr(recipe.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'loradesk\[recipes\]'"):
        recipe.packaged_gsm8k()


def test_the_packaged_file_is_found_when_the_package_is_installed():
    pytest.importorskip(recipe.PACKAGE)
    path = recipe.packaged_gsm8k()
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) >= {"question", "answer"} and "####" in first["answer"]


def test_row_ranges_round_trip():
    rows = [0, 1, 2, 5, 7, 8, 9, 12]
    assert row_ranges(rows) == "0-2,5,7-9,12"
    assert parse_ranges(row_ranges(rows)) == rows
    assert row_ranges([]) == "" and parse_ranges("") == []


def test_wilson_interval_and_mcnemar_exact():
    lo, hi = stats.wilson(0, 10)
    assert lo == 0.0 and math.isclose(hi, 0.2775, abs_tol=1e-3)
    lo, hi = stats.wilson(50, 100)
    assert math.isclose(lo, 0.4038, abs_tol=1e-3) and math.isclose(hi, 0.5962, abs_tol=1e-3)
    # 10 items only the adapter gets right, 2 only the base: two-sided exact binomial p = 0.0386
    base = {str(i): 1.0 if i < 2 else 0.0 for i in range(40)}
    adapter = {str(i): 1.0 if 2 <= i < 12 else 0.0 for i in range(40)}
    p = stats.paired(base, adapter)
    assert (p.only_a, p.only_b, p.n) == (2, 10, 40)
    assert math.isclose(p.p_value, 0.03857, abs_tol=1e-4)
    assert math.isclose(p.diff, 0.2) and p.diff_low < 0.2 < p.diff_high
    assert stats.paired(base, base).p_value == 1.0


def test_the_recipe_trains_records_rows_and_reports(tiny_qwen, tmp_path, package_file, monkeypatch):
    """The whole loop on a tiny model: split, train (torch), evaluate base and adapter, report."""
    monkeypatch.setattr(recipe, "packaged_gsm8k", lambda: package_file)
    cfg = recipe.RecipeConfig(out=tmp_path / "run", model=str(tiny_qwen), engines=("torch",), limit=3,
                              train={"iters": 2, "batch_size": 2, "rank": 4, "max_seq_length": 256},
                              ship_to=tmp_path / "shipped" / "math-tiny", ship_base="tiny/qwen2")
    said = []
    summary = recipe.run_recipe(cfg, said.append)
    adapter = tmp_path / "run"
    meta = json.loads((recipe.Path(summary["adapter"]) / "loradesk.json").read_text())
    seen = meta["recipe"]["rows_seen"]
    trained = parse_ranges(seen["train"]) + parse_ranges(seen["valid"])
    assert trained and max(trained) < 1000  # never a held-out row
    assert len(parse_ranges(seen["train"])) == 4  # 2 steps x batch 2: the rows its batches held
    assert meta["recipe"]["heldout"] == "rows 1000-1318"
    # decontamination compared against exactly the 319 held-out items
    assert meta["eval_items"]["checked"]["openai/gsm8k:test"] == 319
    row = summary["engines"]["torch"]
    assert row["base"]["n"] == 3 and row["adapter"]["n"] == 3
    assert 0.0 <= row["base"]["ci95"][0] <= row["base"]["exact_match"] <= row["base"]["ci95"][1] <= 1.0
    assert row["paired"]["n"] == 3
    report = (adapter / "report.md").read_text()
    assert "| torch | adapter | 3 |" in report and "McNemar" in report
    # the shipped copy names the base by repo id, keeps the weights hash, and reads back
    from app.engine.adapter_format import read_adapter

    shipped = read_adapter(tmp_path / "shipped" / "math-tiny")
    assert shipped.base_model == "tiny/qwen2" and shipped.metadata["base_weights_sample_sha256"]
    assert str(tiny_qwen) not in (tmp_path / "shipped" / "math-tiny" / "adapter_config.json").read_text()
    # a rerun of the same folder resumes: nothing is evaluated twice
    lines = (adapter / "bench-torch" / "results.jsonl").read_text().splitlines()
    # (llama.cpp cannot load a transformers folder: the log says so rather than reporting base only)
    cfg2 = recipe.RecipeConfig(out=tmp_path / "run", model=str(tiny_qwen), engines=("torch", "llamacpp"), limit=3,
                               adapter=recipe.Path(summary["adapter"]))
    said.clear()
    recipe.run_recipe(cfg2, said.append)
    assert (adapter / "bench-torch" / "results.jsonl").read_text().splitlines() == lines
    assert not any("not evaluated on torch" in s for s in said)
    assert any(s.startswith("  not evaluated on llamacpp: * adapter: model") for s in said), said


def test_shipped_adapter_serves_its_base_model_only(tiny_qwen, tiny_adapters, tmp_path, monkeypatch):
    """A shipped adapter is used when the loaded model is its base (weights hash), not for another
    model of the same architecture; a user's own adapter takes precedence."""
    from app import store
    from app.engine import create_engine
    from app.engine.base_model import weights_digest
    from app.tasks import ShippedAdapter, get_task

    shipped = tmp_path / "records" / "shipped" / "math-tiny"
    shutil.copytree(tiny_adapters["qwen2"]["math"], shipped)
    meta_file = shipped / "loradesk.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    meta.update(base_model="tiny/qwen2-shipped", base_weights_sample_sha256=weights_digest(tiny_qwen))
    meta_file.write_text(json.dumps(meta))
    import dataclasses

    task = dataclasses.replace(get_task("math"), record_path=tmp_path / "records" / "math.toml",
                               shipped=(ShippedAdapter(base="tiny/qwen2-shipped", path="shipped/math-tiny"),))
    monkeypatch.setattr(store, "get_task", lambda name: task if name == "math" else get_task(name))

    eng = create_engine("torch")
    eng.load(str(tiny_qwen))
    assert store.load_task_adapters(eng, ["math"]) == {}
    assert "math" in eng.adapters and eng.adapters["math"].path == shipped

    other = tmp_path / "other-qwen"
    from app.tiny import build_tiny_model

    build_tiny_model(other, "qwen2", seed=7)  # same architecture, other weights, no name
    eng2 = create_engine("torch")
    eng2.load(str(other))
    problems = store.load_task_adapters(eng2, ["math"])
    assert "math" in problems and "math" not in eng2.adapters

    store.add("math", tiny_adapters["qwen2"]["code"], name="mine")
    eng3 = create_engine("torch")
    eng3.load(str(tiny_qwen))
    store.load_task_adapters(eng3, ["math"])
    assert eng3.adapters["math"].path.name == "mine"


def test_a_folder_made_from_a_gguf_or_mlx_copy_is_named_by_its_config(tmp_path):
    """transformers keeps a GGUF's general.name as `_model_name_or_path` (mlx-lm's convert keeps it
    too): such a folder is identified as its hub model; a path in `_name_or_path` names nothing."""
    from app.engine.base_model import base_model_key, config_name

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_model_name_or_path": "Qwen2.5 Coder 0.5B Instruct AWQ"}))
    assert base_model_key(config_name(folder)) == base_model_key("Qwen/Qwen2.5-Coder-0.5B-Instruct")
    assert base_model_key(config_name(folder)) != base_model_key("Qwen/Qwen2.5-0.5B-Instruct")
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "/home/me/models/x"}))
    assert config_name(folder) is None
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-Coder-0.5B-Instruct"}))
    assert config_name(folder) == "Qwen/Qwen2.5-Coder-0.5B-Instruct"


def test_the_shipped_math_adapter_is_listed_and_offered_with_its_model(capsys):
    """The repository's own shipped adapter: a readable PEFT folder made for Qwen2.5-Coder-0.5B, shown
    by `adapters list` and `models list` (nothing is loaded)."""
    from app.cli import main
    from app.engine.adapter_format import read_adapter
    from app.tasks import get_task

    [(shipped, folder)] = get_task("math").shipped_folders()
    w = read_adapter(folder)
    assert w.format == "peft" and w.base_model == shipped.base == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    meta = w.metadata
    assert meta["recipe"]["heldout"] == "rows 1000-1318" and meta["recipe"]["rows_seen"]["train"]
    assert main(["adapters", "list"]) == 0
    out = capsys.readouterr().out
    assert "shipped with LoRA Desk (used when Qwen/Qwen2.5-Coder-0.5B-Instruct is loaded)" in out
    assert main(["models", "list", "--engine", "llamacpp"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "Coder 0.5B" in x)
    assert "adapters shipped: math" in line and "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF" in line
