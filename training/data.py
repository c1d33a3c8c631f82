"""The data pipeline of one task: sources -> examples -> fitted to the context -> benchmark items
removed -> seeded train/valid/test splits -> mixed by the configured ratios.

    prepared = prepare(TrainConfig.for_task("math", data=["gsm8k.jsonl"]), counter)
    prepared.train[0].messages(task)  # the chat the trainer sees, built by the task record

Everything is deterministic for a given config (seed) and data, and reported in `prepared.report`.
"""
from __future__ import annotations

import hashlib
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from app.tasks import DatasetSpec, Task, get_task
from training import decontam
from training.preparers import KEY_FIELD, Example, prepare_rows
from training.sources import DataError, Rows, load_hub, read_path

log = logging.getLogger(__name__)
MIN_ARTICLE_TOKENS = 64  # below this a cut article carries too little to summarize
SIGNATURE = {"flytech/python-codes-25k": {"text"}}  # columns only this source has


class TokenCounter:
    """Token counts for fitting examples to the context. Exact with a tokenizer that has a chat
    template (the trainers pass theirs); otherwise an estimate (`exact` False) for previews."""

    def __init__(self, tokenizer=None, tokenizer_json: Path | None = None):
        self.tokenizer = tokenizer
        self._fast = None
        if tokenizer is None and tokenizer_json is not None and Path(tokenizer_json).exists():
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(str(tokenizer_json))
        self.exact = tokenizer is not None and getattr(tokenizer, "chat_template", None) is not None

    def text(self, s: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(s, add_special_tokens=False))
        if self._fast is not None:
            return len(self._fast.encode(s, add_special_tokens=False).ids)
        return len(s) // 4 + 1  # ~4 characters per token for English BPE vocabularies

    def chat(self, messages: list[dict]) -> int:
        if self.exact:
            return len(self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
        return sum(self.text(m["content"]) + 4 for m in messages)  # ~4 tokens of role markup each


@dataclass
class Prepared:
    train: list[Example]
    valid: list[Example]
    test: list[Example]
    report: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    pool: list[Example] = field(default_factory=list)  # every clean example, before mixing took its share

    def fingerprint(self) -> str:
        """A hash of the train and valid examples: a resumed run must continue on the same data."""
        h = hashlib.sha256()
        for part in (self.train, self.valid):
            for e in part:
                h.update(e.text.encode() + b"\0" + e.response.encode() + b"\1")
            h.update(b"\2")
        return h.hexdigest()[:16]


def _spec_for(rows: Rows, task: Task, pinned: str | None) -> DatasetSpec:
    """The task's source a local file belongs to: pinned with ID=PATH, else by its columns."""
    if pinned is not None:
        for spec in task.datasets:
            if spec.id == pinned or spec.id.split("/")[-1] == pinned:
                return spec
        raise DataError(f"{rows.origin}: task {task.name} has no dataset {pinned!r}; "
                        f"its datasets are {', '.join(s.id for s in task.datasets)}")
    best, best_n = None, 0
    name = re.sub(r"[^a-z]", "", rows.origin.lower())
    for spec in task.datasets:
        wanted = {c for k, c in spec.fields.items() if k != "input"}  # code's input is optional
        if not wanted <= rows.columns:
            continue
        # Sources with the same fields (the two code sets) are told apart by their extra columns,
        # then by the file or folder name.
        score = len(wanted) + 10 * len(SIGNATURE.get(spec.id, set()) & rows.columns)
        score += 5 * (re.sub(r"[^a-z]", "", spec.id.split("/")[-1].lower().rstrip("0123456789k-")) in name)
        if score > best_n:
            best, best_n = spec, score
    if best is None:
        expected = "; ".join(f"{s.id}: {', '.join(sorted(s.fields.values()))}" for s in task.datasets)
        raise DataError(f"{rows.origin}: columns {sorted(rows.columns)} match no {task.name} dataset "
                        f"(expected {expected}); or pin it with --data DATASET_ID=PATH")
    return best


def _split_entry(entry: str) -> tuple[str | None, str]:
    """'DATASET_ID=PATH' -> (id, path); a plain path -> (None, path)."""
    if "=" in entry and not Path(entry).exists():
        pinned, _, path = entry.partition("=")
        return pinned, path
    return None, entry


def check_paths(data: tuple[str, ...]) -> None:
    """Fail before any model is loaded when a --data path does not exist."""
    for entry in data:
        path = Path(_split_entry(entry)[1]).expanduser()
        if not path.exists():
            raise DataError(f"{path} does not exist")


def gather_sources(task: Task, data: tuple[str, ...], max_rows: int | None = None
                   ) -> tuple[dict[str, list[Rows]], dict[str, list[Rows]], list[Rows]]:
    """(train rows per dataset id, eval rows per dataset id, other eval files e.g. hellaswag).
    Training rows are capped at `max_rows` per file; evaluation rows never are."""
    train: dict[str, list[Rows]] = {}
    evals: dict[str, list[Rows]] = {}
    extra: list[Rows] = []
    if not data:
        for spec in task.datasets:
            train[spec.id] = [load_hub(spec.id, spec.config, spec.train_split, max_rows)]
            if spec.eval_split:
                try:
                    evals[spec.id] = [load_hub(spec.id, spec.config, spec.eval_split)]
                except DataError:
                    pass  # reported as unavailable by eval_items
        return train, evals, extra
    for entry in data:
        pinned, path = _split_entry(entry)
        for rows in read_path(path):
            if "hellaswag" in rows.origin.lower():
                extra.append(rows)
                continue
            spec = _spec_for(rows, task, pinned or None)
            held_out = spec.eval_split and rows.split == ("test" if spec.eval_split.startswith("test") else spec.eval_split)
            if not held_out and max_rows:
                rows.rows = rows.rows[:max_rows]
            (evals if held_out else train).setdefault(spec.id, []).append(rows)
    if not train:
        raise DataError(f"no training rows in {', '.join(data)} (only evaluation splits were found)")
    return train, evals, extra


def eval_items(task: Task, evals: dict[str, list[Rows]], extra: list[Rows], use_hub: bool) -> decontam.EvalItems:
    items = decontam.EvalItems()
    for spec in task.datasets:
        if not spec.eval_split:
            continue
        name = f"{spec.id}:{spec.eval_split}"
        column = spec.fields.get(KEY_FIELD.get(spec.id, ""), "")
        if spec.id in evals:
            for rows in evals[spec.id]:
                items.add(name, [str(r.get(column) or "") for r in rows.rows])
        else:
            items.unavailable[name] = ("not loadable from the hub" if use_hub else
                                       "no local test split given (add its file to --data to check it)")
    items.add("openai_humaneval", decontam.humaneval_texts())
    if extra:
        for rows in extra:
            items.add("hellaswag", decontam.hellaswag_texts(rows.rows))
    elif use_hub:
        try:
            items.add("hellaswag", decontam.hellaswag_texts(load_hub(*decontam.HELLASWAG).rows))
        except DataError as e:
            items.unavailable["hellaswag"] = str(e).split(" (")[0]
    else:
        items.unavailable["hellaswag"] = "no local hellaswag file given (a file named *hellaswag*)"
    return items


def fit_to_context(examples: list[Example], task: Task, counter: TokenCounter, max_len: int,
                   cut_articles: bool) -> tuple[list[Example], list[Example]]:
    """(examples that fit, examples dropped as too long). With `cut_articles` (summarize) a long
    input is cut to fit, keeping its start and ending at a sentence or word boundary; the
    number of tokens cut is kept on the example."""
    kept, dropped = [], []
    for e in examples:
        n = counter.chat(e.messages(task))
        if n <= max_len:
            kept.append(e)
            continue
        if not cut_articles:
            dropped.append(e)
            continue
        overhead = counter.chat(task.messages("", response=e.response, **e.options))
        budget = max_len - overhead - 2  # a little slack: tokens can merge across the cut
        if budget < MIN_ARTICLE_TOKENS:
            dropped.append(e)
            continue
        total = counter.text(e.text)
        cut = max(1, int(len(e.text) * budget / max(total, 1)))
        while cut > 1 and counter.text(e.text[:cut]) > budget:
            cut = int(cut * 0.95)
        head = e.text[:cut]
        boundary = max(head.rfind(". "), head.rfind(".\n"))
        if boundary > 0.8 * cut:
            head = head[:boundary + 1]
        elif " " in head:
            head = head[:head.rfind(" ")]
        e.text, e.cut_tokens = head, total - counter.text(head)
        kept.append(e)
    return kept, dropped


def _order(examples: list[Example], seed: int) -> list[Example]:
    """A seeded order that depends only on each example's content: adding rows to a source never
    moves existing examples between splits."""
    return sorted(examples, key=lambda e: hashlib.sha1(f"{seed}\0{e.key}\0{e.response}".encode()).digest())


def split(examples: list[Example], valid_fraction: float, test_fraction: float, seed: int):
    ordered = _order(examples, seed)
    n = len(ordered)
    n_test = round(n * test_fraction)
    n_valid = max(round(n * valid_fraction), 1 if n >= 3 and valid_fraction > 0 else 0)
    return ordered[n_test + n_valid:], ordered[n_test:n_test + n_valid], ordered[:n_test]


def mix(per_source: dict[str, list[Example]], weights: dict[str, float], seed: int,
        max_examples: int | None) -> tuple[list[Example], dict[str, int]]:
    """Take from each source in proportion to its weight, as many as the smallest source allows
    (no example repeated), capped at `max_examples`; then shuffle with the seed."""
    live = {k: w for k, w in weights.items() if w > 0 and per_source.get(k)}
    if not live:
        raise DataError("no training examples left after preparation (see the counts above)")
    total_w = sum(live.values())
    share = {k: w / total_w for k, w in live.items()}
    n = min(len(per_source[k]) / s for k, s in share.items())
    if max_examples:
        n = min(n, max_examples)
    rng = random.Random(seed)
    out, taken = [], {}
    for k, s in share.items():
        want = min(len(per_source[k]), max(1, round(s * n)))
        out += rng.sample(per_source[k], want)
        taken[k] = want
    rng.shuffle(out)
    return out, taken


def row_ranges(rows) -> str:
    """[1, 2, 3, 6, 8, 9] -> '1-3,6,8-9': how loradesk.json records the rows an adapter saw."""
    out, rows = [], sorted(set(rows))
    i = 0
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
            j += 1
        out.append(str(rows[i]) if i == j else f"{rows[i]}-{rows[j]}")
        i = j + 1
    return ",".join(out)


def parse_ranges(text: str) -> list[int]:
    out = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


_WHERE = re.compile(r"^(.*) row (\d+)$")


def rows_seen(prepared: Prepared, trained: list[int] | None = None) -> dict[str, dict[str, str]]:
    """{"train"|"valid": {file or hub split: row ranges (1-based, as messages name them)}}; `trained`
    (indices into prepared.train) narrows "train" to the examples the run's batches held."""
    out: dict[str, dict[str, str]] = {}
    train = prepared.train if trained is None else [prepared.train[i] for i in trained]
    for part, examples in (("train", train), ("valid", prepared.valid)):
        rows: dict[str, list[int]] = {}
        for e in examples:
            m = _WHERE.match(e.where)
            if m:
                rows.setdefault(m.group(1), []).append(int(m.group(2)))
        out[part] = {origin: row_ranges(r) for origin, r in rows.items()}
    return out


def prepare(config, counter: TokenCounter | None = None) -> Prepared:
    """Run the whole pipeline for `config` (a TrainConfig)."""
    task = get_task(config.task)
    counter = counter or TokenCounter()
    train_rows, eval_rows, extra = gather_sources(task, config.data, config.max_source_rows)
    items = eval_items(task, eval_rows, extra, use_hub=not config.data)
    report: dict = {"sources": {}, "max_seq_length": config.max_seq_length,
                    "token_counts": "exact" if counter.exact else "estimated"}
    warnings: list[str] = []
    splits: dict[str, tuple[list, list, list]] = {}
    for spec in task.datasets:
        if spec.id not in train_rows:
            continue
        examples, skipped, files = [], {}, []
        for rows in train_rows[spec.id]:
            got, sk = prepare_rows(rows, spec, task.name)
            examples += got
            files.append(rows.origin)
            for k, v in sk.items():
                skipped[k] = skipped.get(k, 0) + v
        n_rows = sum(len(r.rows) for r in train_rows[spec.id])
        seen, unique = set(), []
        for e in examples:
            k = (decontam.text_hash(e.text), decontam.text_hash(e.response))
            if k not in seen:
                seen.add(k)
                unique.append(e)
        duplicates = len(examples) - len(unique)
        fitted, too_long = fit_to_context(unique, task, counter, config.max_seq_length,
                                          cut_articles=task.name == "summarize")
        cut = [e for e in fitted if e.cut_tokens]
        if too_long:
            warnings.append(f"{spec.id}: {len(too_long)} of {len(unique)} examples are longer than "
                            f"max_seq_length {config.max_seq_length} tokens and were left out "
                            f"(first: {too_long[0].where})")
        if cut:
            warnings.append(f"{spec.id}: {len(cut)} of {len(unique)} articles were cut to fit "
                            f"{config.max_seq_length} tokens (start kept; {sum(e.cut_tokens for e in cut)} "
                            f"tokens cut in all, first: {cut[0].where})")
        overlap = decontam.overlapping(fitted, items)
        if overlap:
            warnings.append(f"{spec.id}: {len(overlap)} examples match benchmark evaluation items and "
                            f"were left out (first: {overlap[0].where})")
        bad = {id(e) for e in overlap}
        clean = [e for e in fitted if id(e) not in bad]
        splits[spec.id] = split(clean, config.valid_fraction, config.test_fraction, config.seed)
        report["sources"][spec.id] = {
            "files": files, "rows": n_rows, "examples": len(examples), "skipped": skipped,
            "duplicates": duplicates, "too_long": len(too_long), "cut": len(cut),
            "cut_tokens": sum(e.cut_tokens for e in cut), "eval_overlap": len(overlap),
            "train_pool": len(splits[spec.id][0]), "valid": len(splits[spec.id][1]), "test": len(splits[spec.id][2]),
        }
    weights = {s.id: config.mix.get(s.id, config.mix.get(s.id.split("/")[-1], s.weight)) for s in task.datasets}
    train, taken = mix({k: v[0] for k, v in splits.items()}, weights, config.seed, config.max_examples)
    valid = [e for k in splits for e in splits[k][1]]
    test = [e for k in splits for e in splits[k][2]]
    decontam.assert_clean({"train": train, "valid": valid, "test": test}, items)
    for k, n in taken.items():
        report["sources"][k]["train"] = n
    report.update(train=len(train), valid=len(valid), test=len(test), eval_items=items.summary(),
                  mix={k: round(n / len(train), 3) for k, n in taken.items()})
    for w in warnings:
        log.info(w)  # callers show them (CLI notes, preview, GUI); logged for the log file
    pool = [e for k in splits for part in splits[k] for e in part]
    return Prepared(train, valid, test, report, warnings, pool)
