"""GSM8K calculator annotations «a=b»: find them in an answer and check their arithmetic.

GSM8K answers write each calculation as `48/2 = «48/2=24»24`: the part in «» is the calculator
call, the number after it is what the text goes on with. A small model can write a wrong result
(«48/2=25»), so the Math tab marks it and the benchmark counts it. Qt-free: the one checker for both.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass

# «expression=result» as the task record writes them, <<expression=result>> as the GSM8K files do
# (a model trained on raw GSM8K may echo those); the expression holds no '=' or brackets.
ANNOTATION = re.compile(r"«([^«»=]+)=([^«»]*)»|<<([^<>=]+)=([^<>]*)>>")

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_MAGNITUDE = 1e100  # larger intermediate values are refused, not computed (e.g. 9**9**9)


@dataclass(frozen=True)
class Annotation:
    start: int  # span of «...» in the text
    end: int
    expression: str
    claimed: str  # the result as written
    value: float | None  # the expression's true value; None when it cannot be evaluated
    ok: bool | None  # None: not checkable (not plain arithmetic)


def _number(text: str) -> float:
    """'1,234.50' / '$12' / '50%' / '7.' -> float; ValueError otherwise."""
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if t.endswith("%"):
        return float(t[:-1])  # «0.5*100=50%»: the written number is what the text goes on with
    return float(t)


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
            raise ValueError("power too large")
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, complex) or abs(result) > _MAX_MAGNITUDE:
            raise ValueError("result out of range")
        return result
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    raise ValueError(f"not arithmetic: {ast.dump(node)[:40]}")


def evaluate(expression: str) -> float:
    """The value of a plain arithmetic expression (numbers, + - * / // % ** and parentheses).

    Never calls eval(): the expression is parsed and only arithmetic nodes are computed.
    Raises ValueError for anything else (names, calls, division by zero, huge powers).
    """
    # GSM8K writes thousands separators and currency inside annotations: «1,200*2=2,400», «$5*3=15».
    cleaned = re.sub(r"(?<=\d),(?=\d{3})", "", expression).replace("$", "").replace("x", "*").replace("×", "*")
    cleaned = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", cleaned)
    try:
        return float(_eval(ast.parse(cleaned.strip(), mode="eval")))
    except (SyntaxError, ZeroDivisionError, OverflowError, RecursionError, TypeError) as e:
        raise ValueError(str(e) or type(e).__name__) from None


def matches(value: float, claimed: float, claimed_text: str) -> bool:
    """A written result is right when it equals the value, or the value rounded to the number of
    decimals it was written with (10/3 = 3.33 is right, 10/3 = 3.3 is too, 10/3 = 3 is not)."""
    if math.isclose(value, claimed, rel_tol=1e-9, abs_tol=1e-9):
        return True
    digits = claimed_text.strip().rstrip(".")
    decimals = len(digits.split(".", 1)[1]) if "." in digits else 0
    return decimals > 0 and math.isclose(round(value, decimals), claimed, abs_tol=10 ** -(decimals + 3))


def check_annotations(text: str) -> list[Annotation]:
    """Every «a=b» in `text`, with whether b is the value of a."""
    found = []
    for m in ANNOTATION.finditer(text):
        expr, claimed = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
        try:
            value = evaluate(expr)
        except ValueError:
            found.append(Annotation(m.start(), m.end(), expr, claimed, None, None))
            continue
        try:
            ok = matches(value, _number(claimed), claimed)
        except ValueError:
            ok = False  # the result is not a number at all
        found.append(Annotation(m.start(), m.end(), expr, claimed, value, ok))
    return found


def count_right(text: str) -> tuple[int, int]:
    """(annotations whose result is right, all annotations) — the benchmark's tally. One whose left
    side is not plain arithmetic is counted, as not right: a calculator could not have produced it."""
    notes = check_annotations(text)
    return sum(1 for a in notes if a.ok), len(notes)


def format_value(value: float) -> str:
    """24.0 -> '24', 3.3333333 -> '3.3333'."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4f}".rstrip("0").rstrip(".")
