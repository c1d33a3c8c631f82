"""Self-distilled training targets (rejection-sampling fine-tuning, Yuan et al. 2023): the base model
answers every training question with the task's own prompt and settings; the answers that reach the
reference number and finish within the task's length become the targets.

Why: trained on GSM8K's terse reference solutions, the 0.5B model lost its own way of reasoning and
scored 5.3 points below its base (README). The base's own derivations are right 25 % of the time when
they finish but 5 % when they run out of tokens, which half of them do; its right, finished answers
keep its reasoning and teach it to finish.
"""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from app.bench import metrics
from app.bench.evals import generate
from app.tasks import GenerationSettings, Task

RESULTS = "answers.jsonl"  # every answer, right or wrong: a rerun continues where it stopped


def _done(path: Path) -> dict[int, dict]:
    out = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a torn last line from a crash
                continue
            out[rec["row"]] = rec
    return out


def answer_rows(engine, rows: list[dict], task: Task, out_dir: Path, settings: GenerationSettings | None = None,
                workers: int | None = None, progress: Callable[[int, int, int], None] | None = None,
                cancel: threading.Event | None = None) -> list[dict]:
    """The engine's answer to each row (GSM8K schema: question, answer), `workers` at a time (the
    llama.cpp engine decodes concurrent answers in one batch). Returns one record per row, in order;
    rows answered by an earlier run are read back, not asked again."""
    settings = settings or task.generation
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS
    done = _done(path)
    lock = threading.Lock()
    cancel = cancel or threading.Event()
    todo = [i for i in range(len(rows)) if i not in done]
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n")

    def one(i: int) -> None:
        if cancel.is_set():
            return
        row = rows[i]
        text, stats = generate(engine, task.messages(row["question"]), settings, cancel)
        if cancel.is_set():
            return  # a cut answer is not an answer; the rerun asks again
        reference = metrics.gsm8k_reference(row["answer"])
        rec = {"row": i, "output": text, "prediction": metrics.extract_answer(text), "reference": reference,
               "finish_reason": stats.get("finish_reason"), "tokens": stats.get("generation_tokens")}
        rec["right"] = bool(metrics.exact_match(rec["prediction"], reference))
        with lock:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            done[i] = rec
            if progress:
                progress(len(done), len(rows), sum(r["right"] for r in done.values()))

    n = workers or getattr(engine, "max_batch", 1) or 1
    with ThreadPoolExecutor(max_workers=n) as pool:
        for f in [pool.submit(one, i) for i in todo]:
            f.result()
    return [done[i] for i in range(len(rows)) if i in done]


def keep(records: list[dict], rows: list[dict]) -> tuple[list[dict], list[int]]:
    """The training rows made of the right answers that finished (not cut at the length limit), each
    ending in GSM8K's '#### N' line (the task's prompt asks for it and the benchmark reads it first);
    and which of `rows` they came from."""
    kept, index = [], []
    for rec in records:
        if not rec["right"] or rec["finish_reason"] != "stop":
            continue
        text = rec["output"].rstrip()
        if "####" not in text:
            text += f"\n#### {rec['reference']}"
        kept.append({"question": rows[rec["row"]]["question"], "answer": text})
        index.append(rec["row"])
    return kept, index
