"""Self-distilled training targets (rejection-sampling fine-tuning, Yuan et al. 2023): the base model
answers every training question with the task's own prompt and settings; the answers that reach the
reference number and finish within the task's length become the targets.

Why: trained on GSM8K's terse reference solutions, the 0.5B model lost its own way of reasoning and
scored 5.3 points below its base (README). The base's own derivations are right 25 % of the time when
they finish but 5 % when they run out of tokens, which half of them do; its right, finished answers
keep its reasoning and teach it to finish.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from app.bench.evals import EvalOptions, get_eval
from app.bench.quality import Appender, read_results

RESULTS = "answers.jsonl"  # every answer, right or wrong: a rerun continues where it stopped


def answer_rows(engine, rows: list[dict], out_dir: Path, opts: EvalOptions | None = None,
                workers: int | None = None, progress: Callable[[int, int, int], None] | None = None,
                cancel: threading.Event | None = None) -> list[dict]:
    """The engine's answer to each row (GSM8K schema: question, answer), asked and scored as the
    GSM8K benchmark does, `workers` at a time (the engine's `answer_many`: one batch on llama.cpp
    and torch). Returns one record per row, in order; rows answered by an earlier run are read
    back, not asked again."""
    gsm8k, opts = get_eval("gsm8k"), opts or EvalOptions()
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {rec["row"]: rec for rec in read_results(out_dir / RESULTS)}
    out = Appender(out_dir / RESULTS)
    cancel = cancel or threading.Event()
    todo = [i for i in range(len(rows)) if i not in done]
    size = workers or engine.together
    try:
        for lo in range(0, len(todo), size):
            if cancel.is_set():
                break
            part = todo[lo:lo + size]
            answers = engine.answer_many([gsm8k.ask(engine, rows[i], opts) for i in part], gsm8k.settings(opts),
                                         cancel, together=size)
            for i, got in zip(part, answers):
                if isinstance(got, Exception):
                    raise got
                text, stats = got
                if stats.get("finish_reason") == "cancelled":
                    continue  # a cut answer is not an answer; the rerun asks again
                text, scores = gsm8k.judge(rows[i], text, opts)
                rec = {"row": i, "output": text, "prediction": scores["prediction"], "reference": scores["reference"],
                       "finish_reason": stats.get("finish_reason"), "tokens": stats.get("generation_tokens"),
                       "right": bool(scores["exact_match"])}
                out.write(rec)
                done[i] = rec
            if progress:
                progress(len(done), len(rows), sum(r["right"] for r in done.values()))
    finally:
        out.close()
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
