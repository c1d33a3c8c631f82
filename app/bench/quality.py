"""The quality benchmark runner: tasks x configurations, resumable, with progress and cancel.

Configurations: `mistral-7b` (the 7B reference; app.models.MISTRAL_7B per engine), `base` (the SLM
alone), `adapter` (the SLM with the task's adapter from the store), or any model reference. `base`
and `adapter` share one loaded SLM (activate(None) / activate(task)). Every configuration gets the
same prompts and decoding. Each finished item is appended to `results.jsonl` at once (output,
scores, speed), so a crash or cancel loses nothing and `resume=True` skips the items already done.
Only the Engine interface is used; no mlx or torch here.
"""
from __future__ import annotations

import gc
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from app.bench.evals import EVALS, DatasetUnavailable, Eval, EvalOptions, get_eval, select
from app.errors import EngineError
from app.memory import memory_check
from app.model_choices import MISTRAL_7B, SUPPORTED
from app.models import local_repo_folder, registered_models
from app.session import Session, choose_engine, choose_model, new_engine, open_session
from app.tasks import task_names

CONFIGS = ("mistral-7b", "base", "adapter")
DEFAULT_TASKS = tuple(EVALS)
RESULTS_FILE = "results.jsonl"


@dataclass
class QualityConfig:
    """What to run. Fields:
    tasks: eval names (see evals.EVALS); configs: "mistral-7b", "base", "adapter" or model refs;
    model/engine: the SLM and the engine kind (None: the app's current ones);
    limit: first N items in dataset order; seed: with it, a seeded random subset (of size limit);
    out_dir: where results.jsonl and the report go; resume: skip items already in results.jsonl;
    data_dir: read datasets from local files instead of the hub; options: per-eval knobs;
    together: answers generated at once (None: the engine's batch, 8 by default). 1 keeps the speed
    figures those of lone answers; more finishes sooner where the engine batches (llama.cpp, torch).
    """

    tasks: tuple[str, ...] = DEFAULT_TASKS
    configs: tuple[str, ...] = CONFIGS
    model: str | None = None
    engine: str | None = None
    limit: int | None = None
    seed: int | None = None
    out_dir: Path = Path("bench-out")
    resume: bool = False
    data_dir: Path | None = None
    options: EvalOptions = field(default_factory=EvalOptions)
    together: int | None = 1

    def __post_init__(self):
        self.tasks = tuple(self.tasks)
        self.configs = tuple(dict.fromkeys(self.configs))
        if not self.tasks or not self.configs:
            raise ValueError("give at least one task and one configuration")
        for t in self.tasks:
            get_eval(t)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        self.out_dir = Path(self.out_dir)
        if self.data_dir is not None:
            self.data_dir = Path(self.data_dir)
            if not self.data_dir.is_dir():
                raise ValueError(f"--data-dir {self.data_dir} is not a folder")

    def selection(self) -> str:
        if self.seed is not None:
            return f"seeded random subset (seed {self.seed}" + (f", {self.limit} items)" if self.limit else ", all items)")
        return f"first {self.limit} items in dataset order" if self.limit else "all items"


@dataclass
class Progress:
    """One progress report (the CLI's bar and the GUI's panel read these)."""

    task: str
    config: str
    done: int
    total: int
    metric: str
    score: float | None  # running mean of the headline metric
    elapsed: float
    eta: float | None  # seconds left for this task x configuration
    message: str = ""


class Cancelled(Exception):
    pass


# -- models and memory ---------------------------------------------------------------------------
def model_ref_for(config: str, slm: str, kind: str) -> str:
    if config in ("base", "adapter"):
        return slm
    if config == "mistral-7b":
        return MISTRAL_7B.repo_for(kind)
    return config


def weights_bytes(ref: str, kind: str) -> int | None:
    """Bytes of a model's weights without loading (or downloading) it; None when unknown."""
    folder = Path(ref).expanduser()
    if folder.is_file():
        return folder.stat().st_size  # a GGUF file
    if not folder.is_dir():
        reg = registered_models()
        folder = Path(reg.get(ref + "-gguf" if kind == "llamacpp" else ref, reg.get(ref))
                      or (local_repo_folder(ref) if "/" in ref else ""))
    weights = "*.gguf" if kind == "llamacpp" else "*.safetensors"
    if folder.is_dir() and any(folder.glob(weights)):
        return max(p.stat().st_size for p in folder.glob(weights)) if kind == "llamacpp" else \
            sum(p.stat().st_size for p in folder.glob(weights))
    for m in (*SUPPORTED, MISTRAL_7B):
        if ref in (m.mlx_repo, m.gguf_repo):
            return int(m.approx_gb_4bit * 1e9)
        if ref == m.torch_repo:
            return int(m.params_b * 2e9)  # bf16
    return None


def check_fits(ref: str, kind: str, available: int | None = None) -> None:
    """Refuse, before loading, a model whose weights alone exceed the available memory."""
    need = weights_bytes(ref, kind)
    if need is None:
        return
    problem = memory_check(ref, need, 0, available=available)
    if problem:
        raise EngineError(problem)


# -- results file ---------------------------------------------------------------------------------
def _key(rec: dict) -> tuple:
    return rec["task"], rec["config"], rec.get("adapter"), rec["model"], str(rec["item_id"])


def read_results(path: Path) -> list[dict]:
    """Records of a results file; a torn last line (crash mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class Appender:
    """Appends JSON records, one per line, from many threads; each is on disk when write returns."""

    def __init__(self, path: Path):
        torn = False
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        self.f = open(path, "a", encoding="utf-8")
        if torn:  # a crash mid-line: end that line so the next record stands alone
            self.f.write("\n")
        self.lock = threading.Lock()

    def write(self, rec: dict) -> None:
        with self.lock:
            self.f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.f.flush()
            os.fsync(self.f.fileno())

    def close(self):
        self.f.close()


# -- the run --------------------------------------------------------------------------------------
def _open(config_names: list[str], ref: str, cfg: QualityConfig, kind: str, adapter_tasks: list[str]):
    check_fits(ref, kind)
    if any(c in ("base", "adapter") for c in config_names):
        return open_session(ref, kind, tasks=adapter_tasks, with_adapters="adapter" in config_names, warn=False)
    eng = new_engine(kind)
    eng.load(ref)

    return Session(eng, {})


def _units(ev, config: str, engine, problems: dict) -> list[tuple[str | None, str | None]]:
    """(adapter, skip reason) runs of one eval under one configuration. Hellaswag under `adapter`
    runs once per loaded adapter: the cost of each adapter outside its task."""
    if config != "adapter":
        return [(None, None)]
    if ev.task is None:
        names = sorted(engine.adapters)
        return [(n, None) for n in names] or [(None, "no task adapter is loaded")]
    if ev.task in engine.adapters:
        return [(ev.task, None)]
    return [(None, problems.get(ev.task) or f"no adapter for task {ev.task!r}")]


def run_quality(cfg: QualityConfig, progress: Callable[[Progress], None] | None = None,
                cancel: threading.Event | None = None) -> dict:
    """Run the benchmark; returns the results dict that report.write_report renders."""
    cancel = cancel or threading.Event()
    kind = choose_engine(cfg.engine)
    slm = choose_model(cfg.model, kind)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    results_path = cfg.out_dir / RESULTS_FILE
    if results_path.exists() and not cfg.resume and results_path.stat().st_size:
        # Keep the earlier run's results: renamed, never overwritten.
        results_path.rename(cfg.out_dir / f"results-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    prior = read_results(results_path) if cfg.resume else []
    done = {_key(r) for r in prior}
    started = time.time()
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)), "engine": kind, "slm": slm,
            "tasks": list(cfg.tasks), "configs": list(cfg.configs), "selection": cfg.selection(),
            "limit": cfg.limit, "seed": cfg.seed, "resume": cfg.resume,
            "options": asdict(cfg.options), "together": cfg.together, "data_dir": str(cfg.data_dir) if cfg.data_dir else None}
    skipped, runs, sources = [], [], {}

    data = {}
    for t in cfg.tasks:
        ev = get_eval(t)
        try:
            items, sources[t] = ev.load(cfg.data_dir, cfg.options)
        except DatasetUnavailable as e:
            skipped.append({"task": t, "config": "*", "reason": f"dataset unavailable: {e}"})
            continue
        idx = select(len(items), cfg.limit, cfg.seed)
        data[t] = [(str(items[i].get("task_id", i)), items[i]) for i in idx]

    groups: dict[str, list[str]] = {}
    for c in cfg.configs:
        groups.setdefault(model_ref_for(c, slm, kind), []).append(c)
    adapter_tasks = sorted({get_eval(t).task for t in data if get_eval(t).task} |
                           (set(task_names()) if "hellaswag" in data else set()))
    out = Appender(results_path)
    try:
        for ref, names in groups.items():
            if cancel.is_set():
                break
            if not data:
                break
            try:
                session = _open(names, ref, cfg, kind, adapter_tasks)
            except (EngineError, OSError, RuntimeError, ValueError, MemoryError) as e:
                # Skipped with the reason; the other configurations still run.
                for c in names:
                    skipped.append({"task": "*", "config": c, "reason": f"model {ref} not loaded: {e}"})
                continue
            engine = session.engine
            info = engine.model_info
            resident = engine.memory_bytes()
            for c in names:
                for t, items in data.items():
                    ev = get_eval(t)
                    for adapter, why in _units(ev, c, engine, session.problems):
                        if cancel.is_set():
                            break
                        if why:
                            skipped.append({"task": t, "config": c, "reason": why})
                            continue
                        engine.activate(adapter)
                        run = {"task": t, "config": c, "adapter": adapter, "model": str(ref), "kind": kind,
                               "model_bytes": info.bytes, "model_path": str(info.path),
                               "quantization": info.quantization,
                               "adapter_bytes": engine.adapters[adapter].bytes if adapter else 0,
                               "resident_bytes": resident, "n_selected": len(items), "source": sources[t],
                               "_ids": {i for i, _ in items}}
                        _run_unit(ev, engine, items, run, cfg, out, done, prior, progress, cancel)
                        runs.append(run)
            engine.activate(None)
            del engine, session
            gc.collect()
    finally:
        out.close()
    records = read_results(results_path)
    return summarize(records, runs, skipped, {**meta, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                              "wall_seconds": time.time() - started,
                                              "cancelled": cancel.is_set(), "sources": sources})


def _run_unit(ev, engine, items, run, cfg, out, done, prior, progress, cancel):
    key_base = (run["task"], run["config"], run["adapter"], run["model"])
    todo = [(i, it) for i, it in items if key_base + (i,) not in done]
    earlier = {str(r["item_id"]): r for r in prior if _key(r)[:4] == key_base and str(r["item_id"]) in run["_ids"]}
    vals = [r["scores"][ev.primary] for r in earlier.values() if ev.primary in r["scores"]]
    total, n_done = len(items), len(items) - len(todo)
    start = time.perf_counter()
    label = run["config"] + (f":{run['adapter']}" if run["adapter"] and run["task"] == "hellaswag" else "")

    def report(msg=""):
        if progress:
            ran = n_done - (total - len(todo))
            el = time.perf_counter() - start
            eta = el / ran * (total - n_done) if ran else None
            progress(Progress(run["task"], label, n_done, total, ev.primary,
                              sum(vals) / len(vals) if vals else None, el, eta, msg))

    report("resumed" if n_done else "")
    size = 1 if type(ev).ask is Eval.ask else (cfg.together or engine.together)
    for lo in range(0, len(todo), size):
        if cancel.is_set():
            break
        for item_id, output, scores, stats, error, seconds in _answer(ev, engine, todo[lo:lo + size], cfg, cancel):
            if cancel.is_set() and stats.get("finish_reason") == "cancelled":
                continue  # an answer cut short by cancel is not a result; it reruns on resume
            rec = {"task": run["task"], "config": run["config"], "adapter": run["adapter"], "model": run["model"],
                   "item_id": item_id, "output": output, "scores": scores, "stats": stats,
                   "seconds": seconds, "time": time.time()}
            if error:
                rec["error"] = error
            out.write(rec)
            done.add(_key(rec))
            n_done += 1
            if ev.primary in scores:
                vals.append(scores[ev.primary])
            report()


def _answer(ev, engine, part, cfg, cancel):
    """(item id, output, scores, stats, error, seconds) for each item of `part`: one `ev.run`, or
    the engine's `answer_many` over all of them. An item whose prompt fails (e.g. too long for the
    model) scores 0 with the error; the others still count."""
    failed = lambda e: ("", {m: 0.0 for m in ev.metrics[:1]}, {}, str(e))  # noqa: E731
    if len(part) == 1:
        item_id, item = part[0]
        t0 = time.perf_counter()
        try:
            output, scores, stats, error = *ev.run(engine, item, cfg.options, cancel), None
        except (EngineError, ValueError) as e:
            output, scores, stats, error = failed(e)
        return [(item_id, output, scores, stats, error, time.perf_counter() - t0)]
    prompts = [ev.ask(engine, item, cfg.options) for _, item in part]
    answers = engine.answer_many(prompts, ev.settings(cfg.options), cancel, together=len(part))
    rows = []
    for (item_id, item), got in zip(part, answers):
        if isinstance(got, Exception):
            rows.append((item_id, *failed(got), 0.0))
            continue
        text, stats = got
        rows.append((item_id, *ev.judge(item, text, cfg.options), stats, None, stats.get("seconds", 0.0)))
    return rows


def summarize(records: list[dict], runs: list[dict], skipped: list[dict], meta: dict) -> dict:
    """Aggregate the records of each run (only the items this run selected) into metrics and speed."""
    out_runs = []
    for run in runs:
        ev = get_eval(run["task"])
        key = (run["task"], run["config"], run["adapter"], run["model"])
        ids = run["_ids"]
        recs = {}
        for r in records:
            if _key(r)[:4] == key and str(r["item_id"]) in ids:
                recs[str(r["item_id"])] = r  # the last record of an item wins
        recs = list(recs.values())
        run = {k: v for k, v in run.items() if k != "_ids"}
        out_runs.append({**run, "n": len(recs), "metrics": ev.aggregate(recs) if recs else {},
                         "primary": ev.primary, "method": ev.method, "speed": speed_of(recs),
                         "errors": sum(1 for r in recs if r.get("error")),
                         "unisolated": sum(1 for r in recs if r.get("scores", {}).get("isolated") is False)})
    return {"meta": meta, "runs": out_runs, "skipped": skipped}


def speed_of(records: list[dict]) -> dict:
    """Speed over a run's generated answers: median time to first token, prompt and decode tok/s
    (total tokens / total time), peak memory (max over items)."""
    gen = [r["stats"] for r in records if r.get("stats", {}).get("generation_tokens")]
    busy = sum(r.get("seconds", 0) for r in records)  # across resumed sessions too
    out = {"items_per_minute": 60 * len(records) / max(1e-9, busy) if records else None, "item_seconds": busy}
    if gen:
        ttft = sorted(s.get("ttft", 0.0) for s in gen)
        p_tok = sum(s.get("prompt_tokens", 0) for s in gen)
        p_time = sum(s["prompt_tokens"] / s["prompt_tps"] for s in gen if s.get("prompt_tps"))
        g_tok = sum(s["generation_tokens"] for s in gen)
        g_time = sum(s["generation_tokens"] / s["generation_tps"] for s in gen if s.get("generation_tps"))
        out.update(ttft_median=ttft[len(ttft) // 2], prompt_tps=p_tok / p_time if p_time else None,
                   decode_tps=g_tok / g_time if g_time else None, generated_tokens=g_tok,
                   peak_memory_gb=max(s.get("peak_memory_gb", 0.0) for s in gen))
    return out
