"""Scoring functions of the quality benchmark, following lm-eval-harness and the usual libraries.

All pure functions of strings and numbers (no model): GSM8K answer extraction and exact match,
ROUGE (rouge-score, stemming on), BLEU/chrF (sacrebleu), and
multiple-choice accuracy from log-likelihoods (acc, acc_norm). Calculator annotations «a=b» are
checked by app/annotations.py, the same checker the Math tab uses.
"""
from __future__ import annotations

import re

from app.code_blocks import extract_code  # the Code tab runs what the benchmark scores

# -- GSM8K ---------------------------------------------------------------------------------------
# lm-eval-harness gsm8k: "strict-match" takes the number after '#### '; "flexible-extract" the last
# number-like run in the text. Both answers are then normalized by deleting ',' and '$', everything
# up to '#### ', and a trailing '.' (its exact_match `regexes_to_ignore`).
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = (re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def normalize_number(text: str) -> str:
    """lm-eval's exact_match normalization: drop ',', '$', anything up to '#### ', a trailing '.'."""
    text = text.strip()
    for rx in _IGNORE:
        text = rx.sub("", text)
    return text.strip()


def extract_answer(text: str) -> str | None:
    """The final answer of a GSM8K-style solution: the '#### N' number if present, else the last
    number in the text (normalized); None when the text has no number."""
    m = _STRICT.search(text)
    if m:
        return normalize_number(m.group(1))
    found = _FLEXIBLE.findall(text)
    for flex, plain in reversed(found):
        cand = normalize_number(flex or plain)
        if re.search(r"[0-9]", cand):
            return cand
    return None


def gsm8k_reference(answer: str) -> str:
    """The reference number of a GSM8K `answer` field (the text after '#### ')."""
    return normalize_number(answer.split("####")[-1])


def exact_match(prediction: str | None, reference: str) -> float:
    return float(prediction is not None and normalize_number(prediction) == normalize_number(reference))


# -- multiple choice -----------------------------------------------------------------------------
def multiple_choice(loglikelihoods: list[float], choices: list[str], gold: int) -> dict[str, float]:
    """lm-eval's acc (argmax of the log-likelihoods) and acc_norm (argmax after dividing each by its
    choice's length in characters)."""
    if len(loglikelihoods) != len(choices) or not choices:
        raise ValueError("one log-likelihood per choice is needed")
    acc = max(range(len(choices)), key=lambda i: loglikelihoods[i]) == gold
    norm = [ll / max(1, len(c)) for ll, c in zip(loglikelihoods, choices)]
    acc_norm = max(range(len(choices)), key=lambda i: norm[i]) == gold
    return {"acc": float(acc), "acc_norm": float(acc_norm)}


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's Hellaswag text cleaning (WikiHow '[title]' markers and bracketed tags)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(doc: dict) -> tuple[str, list[str], int]:
    """(query, endings, gold) of a Hellaswag row, exactly as lm-eval builds them."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    return query, [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"])


def mathqa_choices(options: str) -> list[str]:
    """The five option texts of a MathQA `options` string ("a ) 38 , b ) 27.675 , ..."), as lm-eval parses them."""
    return [c[4:].rstrip(" ,") for c in re.findall(r"[abcd] \) .*?, |e \) .*?$", options)]


# -- text generation -----------------------------------------------------------------------------
_rouge_scorer = None


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (rouge-score, Porter stemming on), as percentages."""
    global _rouge_scorer
    if _rouge_scorer is None:
        from rouge_score import rouge_scorer

        _rouge_scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    s = _rouge_scorer.score(reference, prediction)
    return {k: 100.0 * s[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")}


def bleu_chrf(predictions: list[str], references: list[str], sources: list[str] | None = None) -> dict[str, float]:
    """Corpus BLEU and chrF against the references (sacrebleu defaults) and, given the inputs,
    copy_bleu: BLEU of the predictions against the inputs (high = the output copies its input)."""
    import sacrebleu

    out = {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
           "chrf": sacrebleu.corpus_chrf(predictions, [references]).score}
    if sources is not None:
        out["copy_bleu"] = sacrebleu.corpus_bleu(predictions, [sources]).score
    return out


def sentence_bleu_chrf(prediction: str, reference: str, source: str | None = None) -> dict[str, float]:
    """Per-item BLEU/chrF (sacrebleu's sentence scores), for the running score and per-item records."""
    import sacrebleu

    out = {"bleu": sacrebleu.sentence_bleu(prediction, [reference]).score,
           "chrf": sacrebleu.sentence_chrf(prediction, [reference]).score}
    if source is not None:
        out["copy_bleu"] = sacrebleu.sentence_bleu(prediction, [source]).score
    return out


# -- code ----------------------------------------------------------------------------------------
def humaneval_program(prompt: str, answer: str, entry_point: str) -> str:
    """The program to test: the prompt (imports, helpers, the stub) followed by the model's code.
    A full function definition from the model replaces the stub; a bare body continues it."""
    code = extract_code(answer, entry_point)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M) or re.match(r"\s*(import|from|def|class)\b", code):
        return prompt + "\n    pass\n\n" + code
    return prompt + code
