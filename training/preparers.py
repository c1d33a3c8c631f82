"""One preparer per source dataset: a row in the source's own schema -> an `Example` (the task's
input text, the reference answer, template options). The chat messages are always built by the task
record (`Task.messages`), never here: this module knows the datasets, not the templates.

The record's `fields` table maps each logical name a preparer uses to the row's column.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Callable

from training.sources import DataError


@dataclass
class Example:
    text: str  # the user's input, filled into the task's user template
    response: str  # what the assistant should answer
    source: str  # dataset id
    where: str  # "file row n", for messages
    options: dict = field(default_factory=dict)  # template options (summarize: length)
    key: str = ""  # the source's main input text: for dedup, splits and eval-overlap checks
    cut_tokens: int = 0  # tokens cut from a long article to fit the context

    def messages(self, task) -> list[dict]:
        return task.messages(self.text, response=self.response, **self.options)


class Skip(Exception):
    """A valid row this task does not train on (e.g. a non-paraphrase pair); counted, not an error."""


class Fields:
    """Field access for one row through the record's mapping, with errors naming file and row."""

    def __init__(self, row: dict, mapping: dict[str, str], where: str, source: str):
        self.row, self.mapping, self.where, self.source = row, mapping, where, source

    def __call__(self, name: str, required: bool = True) -> str:
        column = self.mapping.get(name, name)
        if column not in self.row:
            if not required:
                return ""
            raise DataError(f"{self.where}: missing field {column!r} (the {self.source} preparer needs "
                            f"{', '.join(repr(self.mapping.get(n, n)) for n in self.mapping)})")
        value = self.row[column]
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise DataError(f"{self.where}: field {column!r} is empty")
            return ""
        return value if isinstance(value, (list, dict)) else str(value)


def _norm_space(text: str) -> str:
    return re.sub(r"[ \t]+\n", "\n", text).strip()


# --- math -------------------------------------------------------------------------------------

def gsm8k(f: Fields) -> Example:
    """openai/gsm8k `main`: the answer has calculator annotations and ends with '#### N'. The hub
    files write them <<48/2=24>>; the task's prompt (and the benchmark) use «48/2=24»."""
    answer = re.sub(r"<<([^<>]*)>>", r"«\1»", _norm_space(f("answer")))
    if "####" not in answer:
        raise DataError(f"{f.where}: gsm8k answer has no final '#### N' line")
    q = _norm_space(f("question"))
    return Example(q, answer, f.source, f.where, key=q)


_OPTION = re.compile(r"([a-e])\s*\)\s*(.*?)\s*(?=(?:,\s*[a-e]\s*\)|$))", re.S)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?")


def mathqa_options(text) -> dict[str, str]:
    """'a ) 38 , b ) 27.675 , ...' (or a list of 'a ) 38' strings) -> {'a': '38', 'b': '27.675', ...}."""
    if isinstance(text, list):
        text = " , ".join(str(t) for t in text)
    return {m.group(1): m.group(2).strip(" ,") for m in _OPTION.finditer(str(text))}


def math_qa(f: Fields) -> Example:
    """allenai/math_qa: Problem, Rationale, options, correct (a-e). The rationale's closing
    'answer : x' is replaced by the option's value on a GSM8K-style '#### N' line, so both math
    sources teach one answer format (the task's system prompt asks for it)."""
    problem = _norm_space(f("problem"))
    opts = mathqa_options(f("options"))
    correct = f("correct").strip().lower()
    if correct not in opts:
        raise DataError(f"{f.where}: correct option {correct!r} is not among the options {sorted(opts)}")
    rationale = f("rationale").strip().strip('"').strip()
    rationale = re.sub(r"\s*answer\s*:?\s*(?:is\s*)?(?:option\s*)?\(?[a-e]\)?\s*\.?\s*$", "", rationale,
                       flags=re.I).strip()
    value = opts[correct]
    numbers = _NUMBER.findall(value)
    final = numbers[0].replace(" ", "") if len(numbers) == 1 else value
    listed = ", ".join(f"{k}) {v}" for k, v in sorted(opts.items()))
    response = f"{rationale}\nThe answer is ({correct}) {value}.\n#### {final}"
    return Example(f"{problem}\nOptions: {listed}", response, f.source, f.where, key=problem)


# --- code -------------------------------------------------------------------------------------

def _is_python(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    # a bare word or number parses too; real code has a statement beyond one expression
    return any(not isinstance(n, ast.Expr) or isinstance(n.value, ast.Call) for n in tree.body)


_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


def _python_answer(output: str, where: str) -> str:
    """The answer as the code task wants it: one ```python block. Non-Python answers are skipped
    (CodeAlpaca also has JavaScript, SQL, HTML and prose answers)."""
    output = output.strip()
    fenced = _FENCE.findall(output)
    if fenced:
        if not all(_is_python(c) for c in fenced):
            raise Skip("not Python")
        return output
    if not _is_python(output):
        raise Skip("not Python")
    return f"```python\n{output}\n```"


def code_alpaca(f: Fields) -> Example:
    """lucasmccabe-lmi/CodeAlpaca-20k: instruction, optional input, output."""
    instruction, extra = _norm_space(f("instruction")), _norm_space(f("input", required=False))
    text = f"{instruction}\n\n{extra}" if extra else instruction
    return Example(text, _python_answer(f("output"), f.where), f.source, f.where, key=instruction)


def python_codes(f: Fields) -> Example:
    """flytech/python-codes-25k: instruction, input, output, text. `text` is a pre-formatted copy of
    the others and is not used (the task record owns the template). `input` is mostly a status
    line ('Setting up your to-do list...'), not user data: only kept when it is not one."""
    instruction, extra = _norm_space(f("instruction")), _norm_space(f("input", required=False))
    if extra.endswith(("...", "…")) and "\n" not in extra:
        extra = ""
    text = f"{instruction}\n\n{extra}" if extra else instruction
    return Example(text, _python_answer(f("output"), f.where), f.source, f.where, key=instruction)


# --- summarize --------------------------------------------------------------------------------

def _length_option(summary: str) -> str:
    """The summarize template's length choice that matches a reference summary."""
    sentences = len(re.findall(r"[.!?](?:\s|$)", summary.strip())) or 1
    return "short" if sentences == 1 else "medium" if sentences <= 3 else "long"


def cnn_dailymail(f: Fields) -> Example:
    """ccdv/cnn_dailymail 3.0.0: article, highlights (one highlight per line)."""
    article = _norm_space(f("article"))
    lines = [ln.strip() for ln in f("summary").splitlines() if ln.strip()]
    summary = " ".join(ln if ln.endswith((".", "!", "?")) else ln + "." for ln in lines)
    return Example(article, summary, f.source, f.where, {"length": _length_option(summary)}, key=article[:2000])


def arxiv(f: Fields) -> Example:
    """ccdv/arxiv-summarization: article, abstract (long articles; cut to the context later)."""
    article = _norm_space(f("article"))
    abstract = " ".join(_norm_space(f("summary")).split())
    return Example(article, abstract, f.source, f.where, {"length": _length_option(abstract)}, key=article[:2000])


# --- paraphrase -------------------------------------------------------------------------------

def paws(f: Fields) -> Example:
    """google-research-datasets/paws labeled_final: sentence1, sentence2, label; label 1 only."""
    label = str(f("label")).strip()
    if label not in ("0", "1"):
        raise DataError(f"{f.where}: label must be 0 or 1, got {label!r}")
    if label != "1":
        raise Skip("not a paraphrase (label 0)")
    s1, s2 = _norm_space(f("source")), _norm_space(f("target"))
    return Example(s1, s2, f.source, f.where, key=s1)


Preparer = Callable[[Fields], Example]
PREPARERS: dict[str, Preparer] = {
    "openai/gsm8k": gsm8k,
    "allenai/math_qa": math_qa,
    "lucasmccabe-lmi/CodeAlpaca-20k": code_alpaca,
    "flytech/python-codes-25k": python_codes,
    "ccdv/cnn_dailymail": cnn_dailymail,
    "ccdv/arxiv-summarization": arxiv,
    "google-research-datasets/paws": paws,
}
# The logical field holding each source's main input: eval items are compared on it.
KEY_FIELD = {"openai/gsm8k": "question", "allenai/math_qa": "problem",
             "lucasmccabe-lmi/CodeAlpaca-20k": "instruction", "flytech/python-codes-25k": "instruction",
             "ccdv/cnn_dailymail": "article", "ccdv/arxiv-summarization": "article",
             "google-research-datasets/paws": "source"}


def preparer_for(dataset_id: str) -> Preparer:
    try:
        return PREPARERS[dataset_id]
    except KeyError:
        raise DataError(f"no preparer for dataset {dataset_id!r}; known sources: {', '.join(PREPARERS)}") from None


def prepare_rows(rows, spec, task_name: str) -> tuple[list[Example], dict[str, int]]:
    """All rows of one source -> examples, and the count of skipped rows per reason."""
    fn = preparer_for(spec.id)
    examples, skipped = [], {}
    for i, row in enumerate(rows.rows):
        try:
            examples.append(fn(Fields(row, spec.fields, rows.where(i), spec.id)))
        except Skip as s:
            skipped[str(s)] = skipped.get(str(s), 0) + 1
    return examples, skipped
