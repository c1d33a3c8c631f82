"""The quality benchmark on tiny models: log-likelihood scoring against a direct computation, a whole
`bench quality` run producing the report files, resume, cancel, skips and the memory check."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from app.bench import evals, metrics
from app.bench.quality import QualityConfig, check_fits, read_results, run_quality
from app.errors import EngineError

DATA = Path(__file__).resolve().parent.parent / "resources" / "bench-sample"  # shipped: the self-test runs it too
ALL_TASKS = "gsm8k,mathqa,humaneval,hellaswag,cnn_dailymail,arxiv,paraphrase"


def _engine(kind, tiny_qwen, tiny_adapters):
    from app.engine import create_engine

    eng = create_engine(kind)
    eng.load(tiny_qwen)
    eng.add_adapter("math", tiny_adapters["qwen2"]["math"])
    return eng


@pytest.fixture(scope="module")
def engine(tiny_qwen, tiny_adapters):
    return _engine("mlx", tiny_qwen, tiny_adapters)


_torch = {}


def _torch_engine(tiny_qwen, tiny_adapters):
    if "engine" not in _torch:
        pytest.importorskip("torch")
        _torch["engine"] = _engine("torch", tiny_qwen, tiny_adapters)
    return _torch["engine"]


def _direct_loglikelihood(engine, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log-softmax(next-token logits) over the continuation's tokens, one prefix at a time."""
    ctx = engine.encode(context)
    whole = engine.encode(context + continuation)
    assert whole[: len(ctx)] == ctx  # the continuation's tokens are what encoding the whole adds
    total, greedy = 0.0, True
    for i in range(len(ctx), len(whole)):
        prefix = engine.decode(whole[:i])
        assert engine.encode(prefix) == whole[:i]  # the text round-trips to the same tokens
        logits = engine.next_token_logits(prefix).astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        total += logp[whole[i]]
        greedy &= int(np.argmax(logits)) == whole[i]
    return total, greedy


@pytest.mark.parametrize("kind", ["mlx", "torch"])
@pytest.mark.parametrize("adapter", [None, "math"])
def test_loglikelihood_equals_direct_computation(engine, tiny_qwen, tiny_adapters, kind, adapter):
    """Through the Engine interface only, so it holds for either engine."""
    engine = engine if kind == "mlx" else _torch_engine(tiny_qwen, tiny_adapters)
    engine.activate(adapter)
    try:
        for context, continuation in [("The answer is", " 72."), ("def f(x):", "\n    return x * 2\n")]:
            ll, greedy = engine.loglikelihood(context, continuation)
            want, want_greedy = _direct_loglikelihood(engine, context, continuation)
            assert ll == pytest.approx(want, abs=2e-3)
            assert greedy == want_greedy
    finally:
        engine.activate(None)


def test_multiple_choice_scoring_uses_those_loglikelihoods(engine):
    doc = json.loads((DATA / "hellaswag.jsonl").read_text().splitlines()[0])
    output, scores, _ = evals.Hellaswag().run(engine, doc, evals.EvalOptions())
    query, endings, gold = metrics.hellaswag_doc(doc)
    direct = [_direct_loglikelihood(engine, query, " " + e)[0] for e in endings]
    assert scores["loglikelihoods"] == pytest.approx(direct, abs=2e-3)
    assert scores == {**metrics.multiple_choice(direct, endings, gold), "loglikelihoods": scores["loglikelihoods"],
                      "gold": gold}
    assert output == endings[int(np.argmax(direct))]
    # The adapter changes the scores (so the `adapter` column measures something).
    engine.activate("math")
    try:
        _, with_adapter, _ = evals.Hellaswag().run(engine, doc, evals.EvalOptions())
    finally:
        engine.activate(None)
    assert with_adapter["loglikelihoods"] != pytest.approx(scores["loglikelihoods"], abs=1e-3)


def _store_adapters(tiny_adapters):
    from app import store

    for task, folder in tiny_adapters["qwen2"].items():
        store.add(task, folder)


def test_whole_run_writes_the_report_and_resumes(tiny_qwen, tiny_adapters, tmp_path):
    from app.cli import main

    _store_adapters(tiny_adapters)
    out = tmp_path / "out"
    argv = ["bench", "quality", "--engine", "mlx", "--model", str(tiny_qwen), "--tasks", ALL_TASKS,
            "--configs", "base,adapter,/nonexistent/model", "--limit", "2", "--max-tokens", "6",
            "--data-dir", str(DATA), "--out", str(out), "--no-progress", "--timeout", "5"]
    assert main(argv) == 0
    for name in ("results.json", "results.csv", "report.md", "report.html", "results.jsonl",
                 "chart_gsm8k.png", "chart_humaneval.png", "chart_hellaswag.png", "chart_speed.png"):
        assert (out / name).exists(), name
    assert (out / "chart_gsm8k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    records = read_results(out / "results.jsonl")
    # 7 tasks x 2 items under base and adapter, and Hellaswag once per task adapter (4) under adapter.
    assert len(records) == 7 * 2 + 6 * 2 + 4 * 2
    assert {r["adapter"] for r in records if r["task"] == "hellaswag" and r["config"] == "adapter"} == \
        {"math", "code", "summarize", "paraphrase"}
    assert {r["adapter"] for r in records if r["task"] == "gsm8k"} == {None, "math"}

    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["selection"] == "first 2 items in dataset order"
    runs = {(r["task"], r["config"], r["adapter"]): r for r in results["runs"]}
    assert runs[("humaneval", "base", None)]["metrics"]["pass@1"] == 0.0  # a random tiny model writes no code
    assert set(runs[("mathqa", "base", None)]["metrics"]) == {"acc", "acc_norm"}
    assert set(runs[("cnn_dailymail", "adapter", "summarize")]["metrics"]) == {"rouge1", "rouge2", "rougeL"}
    assert {"bleu", "chrf", "copy_bleu"} <= set(runs[("paraphrase", "base", None)]["metrics"])
    assert runs[("gsm8k", "adapter", "math")]["adapter_bytes"] > 0
    assert runs[("gsm8k", "base", None)]["speed"]["decode_tps"] > 0
    assert any("/nonexistent/model" in s["config"] and "not loaded" in s["reason"] for s in results["skipped"])

    csv_text = (out / "results.csv").read_text()
    for name in ("pass@1", "exact_match", "acc", "acc_norm", "rouge1", "rouge2", "rougeL", "bleu", "chrf"):
        assert f",{name}," in csv_text, name
    md = (out / "report.md").read_text()
    assert "| task | base | adapter | /nonexistent/model |" in md
    assert "Published reference figures (NOT measured here)" in md
    assert md.index("Published reference figures") > md.index("## Milestone table")
    assert "Skipped * / /nonexistent/model" in md
    assert "gsm8k / base: calculator annotations" in md
    assert "<table" in (out / "report.html").read_text()

    # --resume: nothing is run again.
    assert main(argv + ["--resume"]) == 0
    assert len(read_results(out / "results.jsonl")) == len(records)

    # A crash mid-run (last records lost, a torn line): --resume runs exactly the missing items.
    lines = (out / "results.jsonl").read_text().splitlines()
    lost = [json.loads(x) for x in lines[-3:]]
    (out / "results.jsonl").write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:20])
    assert main(argv + ["--resume"]) == 0
    again = read_results(out / "results.jsonl")
    assert len(again) == len(records)
    assert {(r["task"], r["config"], r["adapter"], r["item_id"]) for r in again} == \
        {(r["task"], r["config"], r["adapter"], r["item_id"]) for r in records}
    assert {r["item_id"] for r in again[-3:]} == {r["item_id"] for r in lost}

    # Without --resume the earlier results are kept under a new name, never overwritten.
    fresh = list(argv)
    fresh[fresh.index("--tasks") + 1] = "gsm8k"
    assert main(fresh) == 0
    assert list(out.glob("results-*.jsonl"))


def test_api_progress_cancel_and_resume(tiny_qwen, tmp_path):
    out = tmp_path / "api"
    cancel = threading.Event()
    seen = []

    def progress(p):
        seen.append(p)
        if p.done == 2:
            cancel.set()

    cfg = QualityConfig(tasks=("gsm8k", "paraphrase"), configs=("base",), model=str(tiny_qwen), engine="mlx",
                        out_dir=out, data_dir=DATA, options=evals.EvalOptions(max_tokens=4))
    results = run_quality(cfg, progress, cancel)
    assert results["meta"]["cancelled"]
    assert len(results["runs"]) == 1  # nothing after the cancel starts
    assert results["runs"][0]["n"] == 2 and results["runs"][0]["n_selected"] == 3
    assert seen[-1].total == 3 and seen[-1].metric == "exact_match" and seen[-1].eta is not None
    from app.bench.report import write_report

    paths = write_report(results, out)
    assert "2 of 3 selected items done" in paths["markdown"].read_text()

    cfg.resume = True
    seen.clear()
    results = run_quality(cfg, seen.append, threading.Event())
    assert [r["n"] for r in results["runs"]] == [3, 3] and not results["meta"]["cancelled"]
    assert seen[0].done == 2 and seen[0].message == "resumed" and seen[-1].done == 3
    assert len(read_results(out / "results.jsonl")) == 6


def test_missing_dataset_is_skipped_with_a_clear_line(tiny_qwen, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "gsm8k.jsonl").write_text((DATA / "gsm8k.jsonl").read_text())
    cfg = QualityConfig(tasks=("gsm8k", "mathqa"), configs=("base",), model=str(tiny_qwen), engine="mlx",
                        out_dir=tmp_path / "o", data_dir=data, limit=1, options=evals.EvalOptions(max_tokens=2))
    results = run_quality(cfg)
    assert [r["task"] for r in results["runs"]] == ["gsm8k"]
    (skip,) = results["skipped"]
    assert skip["task"] == "mathqa" and "no local file for allenai/math_qa" in skip["reason"]


def test_corrupt_dataset_file_names_the_file(tmp_path):
    (tmp_path / "gsm8k.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(evals.DatasetUnavailable, match=r"gsm8k.jsonl: line 2"):
        evals.GSM8K().load(tmp_path, evals.EvalOptions())


def test_model_too_big_fails_before_loading(tiny_qwen):
    check_fits(str(tiny_qwen), "mlx", available=10 ** 9)  # a few MB: fits
    with pytest.raises(EngineError, match=r"needs about 18\.9 GB \(14\.5 GB of weights\) and 8\.0 GB is available"):
        check_fits("mistralai/Mistral-7B-Instruct-v0.3", "torch", available=8 * 10 ** 9)


def test_selection_first_n_or_seeded():
    assert evals.select(10, 3, None) == [0, 1, 2]
    a = evals.select(100, 5, seed=7)
    assert a == evals.select(100, 5, seed=7) and a != [0, 1, 2, 3, 4] and a == sorted(a)
    assert evals.select(4, None, None) == [0, 1, 2, 3]


def test_offline_hub_dataset_gives_a_clear_error():
    # HF_DATASETS_OFFLINE is set for tests: the hub path must fail fast with what to do instead.
    with pytest.raises(evals.DatasetUnavailable, match=r"openai/gsm8k \(test\) cannot be fetched .*--data-dir"):
        evals.GSM8K().load(None, evals.EvalOptions())


def test_unisolated_programs_are_marked_beside_the_scores(tmp_path):
    """HumanEval items whose programs ran without OS isolation are counted and shown as "unisolated"."""
    from app.bench.quality import summarize
    from app.bench.report import write_report

    def rec(i, isolated):
        return {"task": "humaneval", "config": "base", "adapter": None, "model": "m", "item_id": str(i),
                "output": "", "scores": {"pass@1": 1.0, "status": "passed", "isolated": isolated}, "seconds": 1.0}

    meta = {"started": "now", "engine": "torch", "slm": "m", "tasks": ["humaneval"], "configs": ["base", "adapter"],
            "selection": "all"}
    run = {"task": "humaneval", "config": "base", "adapter": None, "model": "m", "n_selected": 2, "source": "s",
           "model_bytes": 1e9, "adapter_bytes": 0, "resident_bytes": 1e9, "kind": "torch"}
    for isolated, marked in ((True, False), (False, True)):
        results = summarize([rec(0, True), rec(1, isolated)], [{**run, "_ids": {"0", "1"}}], [], meta)
        assert results["runs"][0]["unisolated"] == (0 if isolated else 1)
        out = tmp_path / str(isolated)
        paths = write_report(results, out)
        md, csv_text = paths["markdown"].read_text(), paths["csv"].read_text()
        assert ("pass@1 100.0% (n=2, unisolated)" in md) is marked
        assert ("unisolated: 1 of 2 program(s)" in md) is marked
        assert csv_text.splitlines()[1].endswith(",1" if marked else ",0")


def test_items_answered_together_score_as_one_at_a_time(tiny_qwen, tiny_adapters, tmp_path):
    """`together`: the engine's answer_many (torch: one batch) gives every generating eval the same
    outputs and scores as lone answers; log-likelihood evals still run one item at a time."""
    _store_adapters(tiny_adapters)
    got = {}
    for together in (1, 3):
        cfg = QualityConfig(tasks=("gsm8k", "mathqa", "paraphrase", "cnn_dailymail"), configs=("base", "adapter"),
                            model=str(tiny_qwen), engine="torch", out_dir=tmp_path / str(together), data_dir=DATA,
                            limit=3, options=evals.EvalOptions(max_tokens=8), together=together)
        results = run_quality(cfg)
        assert results["meta"]["together"] == together
        got[together] = {(r["task"], r["config"], r["item_id"]): r for r in read_results(cfg.out_dir / "results.jsonl")}
    assert got[1].keys() == got[3].keys() and len(got[1]) == 2 * (3 + 3 + 3 + 2)  # the sample has 2 articles
    for key, lone in got[1].items():
        assert (got[3][key]["output"], got[3][key]["scores"]) == (lone["output"], lone["scores"]), key
    batched = {k[0]: r["stats"].get("batch") for k, r in got[3].items()}
    assert batched == {"gsm8k": 3, "mathqa": None, "paraphrase": 3, "cnn_dailymail": 2}
