"""Code extraction scored as the benchmark scores it: each HumanEval-like answer, made into a program
with the stub (metrics.humaneval_program), must pass the stub's tests. These cases chose the rules
of app/code_blocks.py (its docstring gives the old rules' scores on them)."""
import contextlib
import io

import pytest

from app.bench.metrics import humaneval_program
from app.code_blocks import extract_code

PROMPT = 'def add_evens(xs):\n    """Sum of the even numbers in xs."""\n'
TESTS = "assert add_evens([1, 2, 3, 4]) == 6\nassert add_evens([]) == 0\n"
IMPL = "def add_evens(xs):\n    return sum(x for x in xs if x % 2 == 0)\n"
ANSWERS = {
    "one python block": f"Here it is:\n```python\n{IMPL}```\n",
    "capital Python tag": f"```Python\n{IMPL}```",
    "PY tag": f"```PY\n{IMPL}```",
    "untagged fence": f"```\n{IMPL}```",
    "cut off (no closing fence)": f"```python\n{IMPL}",
    "bare body, no fence": "    return sum(x for x in xs if x % 2 == 0)\n",
    "bare full def, no fence": IMPL,
    "helper in an earlier block": "First a helper:\n```python\ndef is_even(x):\n    return x % 2 == 0\n```\nThen:\n"
                                  "```python\ndef add_evens(xs):\n    return sum(x for x in xs if is_even(x))\n```",
    "import in an earlier block": "```python\nimport math\n```\n```python\ndef add_evens(xs):\n"
                                  "    return int(math.fsum(x for x in xs if x % 2 == 0))\n```",
    "usage example block after": f"```python\n{IMPL}```\nExample:\n```python\nprint(add_evens([2, 4]))\n```",
    "example with a wrong assert after": f"```python\n{IMPL}```\nTest:\n```python\nassert add_evens([1]) == 1\n```",
    "output block after (untagged)": f"```python\n{IMPL}```\nOutput:\n```\n6\n```",
    "untagged output text after": f"```python\n{IMPL}```\nRunning it prints:\n```\nResult: 6\n```",
    "shell block before": f"Install nothing:\n```bash\npip install nothing\n```\n```python\n{IMPL}```",
    "a wrong first try, then the fix": "```python\ndef add_evens(xs):\n    return sum(xs)\n```\nOops, fixed:\n"
                                       "```python\ndef add_evens(xs):\n    return sum(x for x in xs if x % 2 == 0)\n```",
    "text fence tag before": f"```text\nthe plan: filter, then sum\n```\n```python\n{IMPL}```",
}


@pytest.mark.parametrize("shape", list(ANSWERS))
def test_a_humaneval_like_answer_passes_its_tests(shape):
    program = humaneval_program(PROMPT, ANSWERS[shape], "add_evens") + "\n" + TESTS
    with contextlib.redirect_stdout(io.StringIO()):
        exec(program, {})


def test_the_code_tab_runs_every_python_block():
    assert extract_code("```python\nimport math\n```\ntext\n```py\nprint(math.pi)\n```") == "import math\n\nprint(math.pi)"
    assert extract_code("```bash\nls\n```\n```\nprint(1)\n```") == "print(1)"
