"""The code in a model's answer: one function for the Code tab (which runs it) and the benchmark
(which scores it), so the app never runs code the benchmark did not score.

The rules, scored on HumanEval-like answers (tests/test_code_blocks.py: one stub, 16 answer
shapes, each program run against the stub's tests): this function passes 16/16; the benchmark's
old rule (the block defining the function, else the first; ```Python but not ```PY) passed 10, the
Code tab's old rule (every fenced block joined) 12.
- Fences: ``` with no tag or a Python tag in any case (python, py, python3); blocks tagged
  otherwise (bash, text, output) are not code to run. An unclosed last fence runs to the end of the
  answer (cut off at max_tokens).
- With `entry_point` (the benchmark): the last block that defines it (models repeat a function to
  fix it), after the earlier blocks that only define things (imports, helpers, constants); a later
  example or test block is left out, since a wrong `assert` in it would fail a right answer.
- Without it (the Code tab), or when no block defines it: every Python block, joined in order.
- No fence: the answer as written, blank lines trimmed; its indentation is kept, because a bare
  function body continues the prompt's stub.
"""
from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PYTHON_TAGS = {"", "python", "py", "python3"}


def _defines_only(code: str) -> bool:
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    return all(isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                              ast.Assign, ast.AnnAssign)) for n in body)


def extract_code(answer: str, entry_point: str | None = None) -> str:
    """The Python code of `answer` (the rules and their scores are in the module's docstring)."""
    blocks = [b.strip("\n") for tag, b in _FENCE.findall(answer) if tag.lower() in _PYTHON_TAGS and b.strip()]
    if not blocks:
        return answer.strip("\n").rstrip()
    if entry_point:
        defining = [i for i, b in enumerate(blocks) if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b)]
        if defining:
            main = defining[-1]
            return "\n\n".join([b for b in blocks[:main] if _defines_only(b)] + [blocks[main]])
    return "\n\n".join(blocks)
