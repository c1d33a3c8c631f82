"""Auto: pick the task adapter for a prompt, one decision per request, before the model runs.

A linear classifier (multinomial logistic regression) over hashed features of the prompt text:
word unigrams and bigrams, character 3- and 4-grams, and a few coarse shape features (length,
lines, digits, code symbols). It does not depend on the base model, so it works the same on every
engine, and it costs well under a millisecond on a CPU (numpy only). The labels are the tasks of
app/tasks.py plus NONE (general chat: the base model). The weights ship in resources/router/;
training/router.py rebuilds them.
"""
from __future__ import annotations

import json
import math
import re
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from app.jsonfile import read_jsonl
from app.paths import resources_dir
from app.tasks import task_names

NONE = "none"  # general chat: answered by the base model, no adapter
WEIGHTS = resources_dir() / "router" / "router.npz"  # the bundle's own copy when frozen
BITS = 15  # 2**15 hashed feature buckets: weights of 5 labels in float16 are 320 KB
HEAD, TAIL = 1500, 300  # characters read from the start and end of a long prompt
_WORD = re.compile(r"[a-z_]+|\d+|[^\sa-z_\d]")
_CODE_CHARS = set("{}()[];=<>_#:/\\*+-'\"`|&")


def _bin(name: str, value: float, edges) -> str:
    return f"{name}{sum(value >= e for e in edges)}"


def features(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(bucket indices, values) of one prompt; each feature group is L2-normalised so that a long
    article and a short question weigh alike."""
    if len(text) > HEAD + TAIL:
        body = text[:HEAD] + " \n " + text[-TAIL:]
    else:
        body = text
    low = re.sub(r"\d", "0", body.lower())
    groups: list[tuple[np.ndarray, float]] = []

    words = _WORD.findall(low)
    words = [("0" if w[0] == "0" else w) for w in words]  # every number is one token
    wh = np.array([zlib.crc32(w.encode()) for w in words] or [0], dtype=np.uint64)
    uni = wh
    bi = wh[:-1] * np.uint64(1000003) + wh[1:] + np.uint64(7) if len(wh) > 1 else np.zeros(0, np.uint64)
    groups.append((np.concatenate([uni, bi]) if words else np.zeros(0, np.uint64), 1.0))

    spaced = (" " + re.sub(r"\s+", " ", low) + " ").encode("utf-8", "replace")
    b = np.frombuffer(spaced, dtype=np.uint8).astype(np.uint64)
    grams = []
    for n in (3, 4):
        if len(b) >= n:
            h = np.full(len(b) - n + 1, np.uint64(n * 0x51ED27), dtype=np.uint64)
            for i in range(n):
                h = h * np.uint64(257) + b[i:len(b) - n + 1 + i]
            grams.append(h)
    groups.append((np.concatenate(grams) if grams else np.zeros(0, np.uint64), 1.0))

    n_words = len(text.split())
    n_chars = max(len(text), 1)
    shape = [
        _bin("words", math.log2(n_words + 1), (1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5)),
        _bin("lines", text.count("\n"), (1, 2, 4, 8)),
        _bin("digits", sum(c.isdigit() for c in text) / n_chars, (0.005, 0.02, 0.05, 0.1)),
        _bin("code", sum(c in _CODE_CHARS for c in text) / n_chars, (0.01, 0.03, 0.06, 0.1)),
        _bin("q", text.rstrip().endswith("?"), (1,)),
        _bin("sentences", len(re.findall(r"[.!?](\s|$)", text)), (1, 2, 3, 5, 9)),
        _bin("indent", len(re.findall(r"\n(    |\t)", text)), (1, 3)),
    ]
    groups.append((np.array([zlib.crc32(("#" + s).encode()) for s in shape], dtype=np.uint64), 1.0))

    idx, val = [], []
    for salt, (hashes, weight) in enumerate(groups):
        if not len(hashes):
            continue
        buckets = (((hashes + np.uint64(salt * 0x9E37)) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - BITS))
        u, counts = np.unique(buckets.astype(np.int64), return_counts=True)
        v = np.sqrt(counts.astype(np.float32))  # damp repeats
        v *= weight / np.linalg.norm(v)
        idx.append(u)
        val.append(v)
    return np.concatenate(idx), np.concatenate(val).astype(np.float32)


@dataclass(frozen=True)
class Route:
    """The router's decision for one prompt."""

    task: str  # a task name, or NONE
    confidence: float  # the classifier's probability of `task` (0-1)
    scores: dict  # every label's probability, highest first

    def runner_up(self) -> tuple[str, float]:
        label, p = list(self.scores.items())[1]
        return label, p


class Router:
    def __init__(self, weights: np.ndarray, bias: np.ndarray, labels: list[str]):
        self.w = weights.astype(np.float32)  # (2**BITS, labels)
        self.b = bias.astype(np.float32)
        self.labels = list(labels)

    @classmethod
    def load(cls, path: str | Path = WEIGHTS) -> "Router":
        try:
            with np.load(path) as z:
                meta, w, b = json.loads(str(z["meta"])), z["w"], z["b"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"the router's weights {path} are missing or damaged ({e}); rebuild them: "
                             "python -m training.router") from None
        if meta.get("bits") != BITS:
            raise ValueError(f"{path} was trained with {meta.get('bits')} hash bits; this router uses {BITS}. "
                             "Rebuild it: python -m training.router")
        return cls(w, b, meta["labels"])

    def probabilities(self, text: str) -> np.ndarray:
        idx, val = features(text)
        z = val @ self.w[idx] + self.b
        z = np.exp(z - z.max())
        return z / z.sum()

    def route(self, text: str) -> Route:
        if not text.strip():
            raise ValueError("the prompt is empty: there is nothing to route")
        p = self.probabilities(text)
        order = np.argsort(-p, kind="stable")
        scores = {self.labels[i]: float(p[i]) for i in order}
        return Route(self.labels[order[0]], float(p[order[0]]), scores)


@lru_cache(maxsize=1)
def default_router() -> Router:
    """The shipped router, checked against the task list (one source of truth: app/tasks.py)."""
    r = Router.load()
    expected = set(task_names()) | {NONE}
    if set(r.labels) != expected:
        raise ValueError(f"the router was trained for {sorted(r.labels)} but the tasks are "
                         f"{sorted(expected - {NONE})}; "
                         "rebuild it: python -m training.router")
    return r


def route(text: str) -> Route:
    return default_router().route(text)


# -- the held-out set and the router's score on it (training/router.py --check, bench route) ---------
HELDOUT = resources_dir() / "router" / "heldout.jsonl"


def heldout(path: str | Path = HELDOUT) -> list[dict]:
    """{"prompt", "task"} rows (extra keys kept)."""
    return read_jsonl(path, need=("prompt", "task"))


def accuracy(router, items: list[dict]) -> tuple[float, np.ndarray, list[str]]:
    """Share of items routed to their task, and the confusion matrix (rows: true, columns: routed)."""
    labels = router.labels
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    for item in items:
        confusion[labels.index(item["task"]), labels.index(router.route(item["prompt"]).task)] += 1
    return float(np.trace(confusion) / max(confusion.sum(), 1)), confusion, labels
