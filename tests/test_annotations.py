"""Calculator annotations «a=b»: the one checker behind the Math tab and the GSM8K benchmark."""
from __future__ import annotations

import pytest

from app.annotations import check_annotations, count_right, evaluate, format_value


def _oks(text):
    return [(n.expression, n.ok) for n in check_annotations(text)]


def test_right_wrong_and_not_arithmetic():
    notes = check_annotations("She sold 48/2 = «48/2=24»24 in May and «48+24=73»73 in all; «x*2=4»4; "
                              "«__import__('os')=1»")
    assert [(n.expression, n.ok) for n in notes] == [
        ("48/2", True), ("48+24", False), ("x*2", None), ("__import__('os')", None)]
    assert notes[1].value == 72 and notes[1].claimed == "73"
    assert notes[0].start == len("She sold 48/2 = ") and notes[0].end == notes[0].start + len("«48/2=24»")


@pytest.mark.parametrize("text, ok", [
    ("«10/3=3.3333»", True), ("«10/3=3.33»", True), ("«10/3=3.3»", True),  # rounded to the decimals written
    ("«10/3=3»", False), ("«10/3=3.34»", False),
    ("«48/2=24.0»", True), ("«48/2=24.»", True),  # a division written as a float
    ("«1,200*2=2,400»", True), ("«1,000/4=250»", True),  # thousands separators on both sides
    ("«$5*3=$15»", True), ("«0.5*100=50%»", True), ("«50%*200=100»", True),  # currency, percentages
    ("«3x4=12»", True), ("«48/2=»", False), ("«48/2=twenty»", False),
])
def test_result_forms(text, ok):
    assert _oks(text)[0][1] is ok


def test_gsm8k_double_angle_form_too():
    assert _oks("<<9*2=18>>18 and <<9*2=19>>19") == [("9*2", True), ("9*2", False)]


def test_benchmark_tally_counts_uncheckable_as_not_right():
    text = "48/2 = «48/2=24»24, «48+24=72»72, «3*4=13»13, «x*2=4»4, and <<9*2=18>>18, «1,000/4=250»250"
    assert count_right(text) == (4, 6)
    assert count_right("no annotations") == (0, 0)
    assert count_right("«2**999999=1»1") == (0, 1)  # refused, not computed


@pytest.mark.parametrize("expr", ["9**9**9", "1/0", "__import__('os')", "a+1", "(1"])
def test_evaluate_refuses(expr):
    with pytest.raises(ValueError):
        evaluate(expr)


def test_format_value():
    assert (format_value(24.0), format_value(10 / 3), format_value(-0.5)) == ("24", "3.3333", "-0.5")
