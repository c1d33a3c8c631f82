"""Reading dataset rows: from the hub with `datasets`, or from local jsonl/json/parquet/csv files
and folders (for offline users). Every row keeps where it came from (file and row number), so a
bad row is reported by name.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
SPLIT_WORDS = {"train": "train", "training": "train", "test": "test", "validation": "validation",
               "valid": "validation", "val": "validation", "dev": "validation"}


class DataError(ValueError):
    """Bad input data; the message names the file (and row) and what to do."""


@dataclass
class Rows:
    """Rows of one file or hub split; `origin` names it in messages. Rows are numbered from 1 as data
    rows (a csv's header line is not counted)."""

    rows: list[dict]
    origin: str
    split: str = "train"

    def where(self, i: int) -> str:
        return f"{self.origin} row {i + 1}"

    @property
    def columns(self) -> set[str]:
        return set().union(*self.rows) if self.rows else set()


def clean_value(v):
    """None for missing cells (csv empty cells, parquet/pandas NaN), the value otherwise."""
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def split_of(path: Path) -> str:
    """The split a file holds, from its name ('test-00000-of-00001.parquet' -> test); default train."""
    for token in path.stem.lower().replace("-", "_").replace(".", "_").split("_"):
        if token in SPLIT_WORDS:
            return SPLIT_WORDS[token]
    # a folder counts only when its whole name is a split ('test/part-0.parquet'), not 'my_test_data/'
    return SPLIT_WORDS.get(path.parent.name.lower(), "train")


def read_file(path: str | Path) -> Rows:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown data format {suffix or '(no suffix)'!r}; "
                        f"use one of {', '.join(SUFFIXES)} (or a folder of them)")
    try:
        if suffix == ".jsonl":
            rows = []
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise DataError(f"{path} line {n}: not valid JSON ({e.msg}); "
                                            "a .jsonl file holds one JSON object per line") from None
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {"data": [...]} or {"train": [...]} style
                lists = [v for v in data.values() if isinstance(v, list)]
                data = lists[0] if len(lists) == 1 else None
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of objects")
            rows = data
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(str(path)).to_pylist()
        else:
            with path.open(encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
                # csv has no null: an empty cell is "" which the preparers treat as missing
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read it as {suffix[1:]} ({e})") from None
    except Exception as e:  # pyarrow raises its own types for corrupt parquet
        raise DataError(f"{path}: cannot read it as {suffix[1:]} ({type(e).__name__}: {e})") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{path} row {bad + 1}: expected an object with named fields, got {type(rows[bad]).__name__}")
    if not rows:
        raise DataError(f"{path} has no rows (empty dataset)")
    return Rows([{k: clean_value(v) for k, v in r.items()} for r in rows], str(path), split_of(path))


def read_path(path: str | Path) -> list[Rows]:
    """A file, or every data file under a folder (recursively, in name order)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{path} holds no data files ({', '.join(SUFFIXES)})")
        return [read_file(p) for p in files]
    return [read_file(path)]


def load_hub(dataset_id: str, config: str | None, split: str, max_rows: int | None = None) -> Rows:
    """One split of a hub dataset via `datasets` (cached after the first download); the first
    `max_rows` rows when given."""
    try:
        import datasets
    except ImportError:
        raise DataError("the `datasets` package is not installed; pass local files with --data") from None
    try:
        ds = datasets.load_dataset(dataset_id, config, split=f"{split}[:{max_rows}]" if max_rows else split)
    except Exception as e:  # offline: ConnectionError / DatasetNotFoundError / ValueError
        raise DataError(
            f"cannot load {dataset_id}{f' ({config})' if config else ''} split {split!r} from the hub "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). Offline? Download it "
            f"on a connected machine and pass the files: --data {dataset_id}=PATH") from None
    rows = [{k: clean_value(v) for k, v in r.items()} for r in ds]
    if not rows:
        raise DataError(f"{dataset_id} split {split!r} has no rows (empty dataset)")
    return Rows(rows, f"{dataset_id}:{split}", "test" if split.startswith("test") else split)
