"""Scoring functions: GSM8K extraction, ROUGE, BLEU/chrF, multiple choice."""
from __future__ import annotations

import pytest

from app.bench import metrics


@pytest.mark.parametrize("text, expected", [
    ("$1,234.50", "1234.50"),
    ("«48/2=24»24", "24"),
    ("The answer is 72.", "72"),
    ("Natalia sold 48/2 = «48/2=24»24 clips.\nAltogether «48+24=72»72.\n#### 72", "72"),
    ("so 5 apples, then 7 pears.\n#### 1,000", "1000"),  # '#### N' wins over later/earlier numbers
    ("It costs $18.", "18"),
    ("The temperature fell to -3 degrees.", "-3"),
    ("no number here", None),
])
def test_extract_answer(text, expected):
    assert metrics.extract_answer(text) == expected


def test_exact_match_uses_lm_eval_normalization():
    ref = metrics.gsm8k_reference("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18")
    assert ref == "18"
    assert metrics.exact_match(metrics.extract_answer("She makes $18."), ref) == 1.0
    assert metrics.exact_match(metrics.extract_answer("She makes $19."), ref) == 0.0
    assert metrics.exact_match(None, ref) == 0.0
    assert metrics.exact_match("1,234", "1234") == 1.0


def test_rouge_known_pair():
    s = metrics.rouge("the cat sat on the mat", "the cat was sitting on the mat")
    # unigrams: pred 6, ref 7, overlap 5 with stemming (sitting != sat) -> P 5/6, R 5/7
    p, r = 5 / 6, 5 / 7
    assert s["rouge1"] == pytest.approx(100 * 2 * p * r / (p + r))
    # bigrams: pred 5, ref 6, overlap: "the cat", "on the", "the mat" -> P 3/5, R 3/6
    p2, r2 = 3 / 5, 3 / 6
    assert s["rouge2"] == pytest.approx(100 * 2 * p2 * r2 / (p2 + r2))
    assert metrics.rouge("cats running", "cat runs")["rouge1"] == pytest.approx(100.0)  # stemming on


def test_bleu_chrf_and_copy_bleu():
    src = ["Sunsets paint the sky with vibrant hues."]
    copy = metrics.bleu_chrf(src, ["Sunsets fill the sky with vivid colors."], src)
    assert copy["copy_bleu"] == pytest.approx(100.0)
    assert copy["bleu"] < 40
    exact = metrics.bleu_chrf(["Sunsets fill the sky with vivid colors."], ["Sunsets fill the sky with vivid colors."])
    assert exact["bleu"] == pytest.approx(100.0) and exact["chrf"] == pytest.approx(100.0)
    s = metrics.sentence_bleu_chrf("a b c d", "a b c d", "e f g h")
    assert s["bleu"] == pytest.approx(100.0) and s["copy_bleu"] < 1


def test_acc_and_acc_norm():
    # Choice 1 has the higher total log-likelihood; choice 0 the higher per-character one.
    lls, choices = [-6.0, -5.0], ["a long ending here", "no"]
    assert metrics.multiple_choice(lls, choices, 1) == {"acc": 1.0, "acc_norm": 0.0}
    assert metrics.multiple_choice(lls, choices, 0) == {"acc": 0.0, "acc_norm": 1.0}
    with pytest.raises(ValueError):
        metrics.multiple_choice([-1.0], ["a", "b"], 0)


def test_hellaswag_and_mathqa_parsing():
    doc = {"activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
           "ctx_b": "then", "endings": [", the man adds wax to the windshield and cuts it.", " [title] A person board a ski lift."],
           "label": "0"}
    query, endings, gold = metrics.hellaswag_doc(doc)
    assert query.startswith("Removing ice from car: Then, the man") and query.endswith("smiles. Then")
    assert endings[1] == " A person board a ski lift."  # lm-eval strips first, so a leading tag leaves a space
    assert metrics.hellaswag_preprocess("Clean it [title] Wipe the glass [step] Dry it.") == "Clean it. Wipe the glass Dry it."
    assert gold == 0
    assert metrics.mathqa_choices("a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these") == \
        ["38", "27.675", "30", "data inadequate", "none of these"]


def test_code_extraction():
    answer = "Here:\n```python\nimport math\n\ndef f(x):\n    return math.sqrt(x)\n```\nDone."
    assert metrics.extract_code(answer, "f").startswith("import math")
    prog = metrics.humaneval_program('def f(x):\n    """root"""\n', answer, "f")
    ns = {}
    exec(prog, ns)
    assert ns["f"](9) == 3.0
    body = metrics.humaneval_program('def g(x):\n    """double"""\n', "    return 2 * x\n", "g")
    exec(body, ns)
    assert ns["g"](4) == 8
