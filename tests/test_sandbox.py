"""The sandbox that runs model-written code scores it right: HumanEval's canonical solutions pass,
wrong ones fail, and a program cannot forge a pass (its limits and isolation: test_sandbox_limits.py;
as an ordinary user, and the fallbacks: test_sandbox_user.py)."""
from __future__ import annotations

import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.bench.sandbox import check_program, run_python
from sandbox_util import (  # noqa: F401 - problems: a fixture
    needs_isolation, problems,
)


@pytest.mark.parametrize("with_prompt", [True, False], ids=["helpers from the prompt", "helpers from the program"])
def test_all_canonical_solutions_pass(problems, with_prompt):
    assert len(problems) == 164

    def one(p):
        return p["task_id"], check_program(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"],
                                           timeout=20, prompt=p["prompt"] if with_prompt else None)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(one, problems.values()))
    failed = {k: r.summary() for k, r in results.items() if not r.passed}
    assert not failed, failed


def test_wrong_solutions_fail(problems):
    wrong = {
        "HumanEval/0": "    return False\n",  # never finds close elements
        "HumanEval/2": "    return number\n",  # truncate_number: returns the whole number
        "HumanEval/4": "    return 0.0\n",
        "HumanEval/13": "    return a * b\n",  # gcd
        "HumanEval/23": "    return len(string) + 1\n",  # strlen off by one
    }
    for tid, body in wrong.items():
        p = problems[tid]
        r = check_program(p["prompt"] + body, p["test"], p["entry_point"], timeout=10)
        assert not r.passed and r.status == "failed", (tid, r.summary())
        assert "AssertionError" in r.stderr
    # And a syntax error is a failure, not a crash of the harness.
    p = problems["HumanEval/0"]
    r = check_program(p["prompt"] + "    return (\n", p["test"], p["entry_point"])
    assert not r.passed and "SyntaxError" in r.stderr


def test_exit_before_checks_is_not_a_pass(problems):
    p = problems["HumanEval/23"]
    for escape in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n"):
        r = check_program(p["prompt"] + "    return 0\n" + escape, p["test"], p["entry_point"], timeout=10)
        assert not r.passed, escape
        assert r.exit_code == 0 and r.status == "ended early"
    # A plain program that leaves early is not "passed" either.
    r = run_python("print('\\n' + 'a' * 32)\nimport os\nos._exit(0)\n")
    assert not r.passed and r.status == "ended early"




def test_demo_main_block_does_not_run_in_checks(problems):
    p = problems["HumanEval/23"]
    program = p["prompt"] + "    return len(string)\n\nif __name__ == '__main__':\n    input('demo: ')\n"
    assert check_program(program, p["test"], p["entry_point"]).passed
    assert not run_python("if __name__ == '__main__':\n    input()\n").passed  # stdin is closed




def test_stdlib_and_site_packages_work_inside(problems):
    needs_isolation()
    r = run_python(textwrap.dedent("""
        import decimal, fractions, hashlib, json, sqlite3, tempfile, unicodedata, ctypes, numpy
        db = sqlite3.connect('here.db'); db.execute('create table t(x)'); db.commit()
        with tempfile.NamedTemporaryFile() as f:
            print(os.path.dirname(f.name) if False else 'tmp ok')
        print(numpy.arange(4).sum(), hashlib.sha256(b'').hexdigest()[:8])
    """))
    assert r.passed, r.stderr
    assert r.stdout.split() == ["tmp", "ok", "6", "e3b0c442"]


def test_forged_pass_markers_do_not_pass(problems):
    """The program cannot write the verdict: it is not in its memory, not on any of its descriptors,
    and the checks run in another process that only takes plain data from it."""
    p = problems["HumanEval/23"]
    wrong = p["prompt"] + "    return 0\n"
    forgeries = {
        "prelude variables": ("import __main__\n__main__._write(1, b'\\n' + __main__._nonce + b'\\n')\n"
                              "__main__._exit(0)\n"),
        "verdict on every descriptor": textwrap.dedent("""
            import os
            line = b'{"isolation": "namespaces", "reason": ""}\\n{"exit": 0, "ended": true, "checks": "passed"}\\n'
            for fd in range(256):
                try:
                    os.write(fd, line)
                except OSError:
                    pass
            os._exit(0)
        """),
        "kill everyone in its group": "import ctypes\nctypes.CDLL(None).kill(0, 9)\n",
    }
    for name, code in forgeries.items():
        r = check_program(wrong + code, p["test"], p["entry_point"], timeout=10)
        assert not r.passed, name
    # An object equal to everything does not cross the pipe; a program's own `abs` does not replace
    # the checks' builtin (HumanEval/2's checks use abs()).
    always_equal = p["prompt"] + textwrap.indent(textwrap.dedent("""
        class Any:
            def __eq__(self, other):
                return True
        return Any()
    """), "    ")
    r = check_program(always_equal, p["test"], p["entry_point"])
    assert not r.passed and "cannot be passed" in r.stderr
    p2 = problems["HumanEval/2"]
    r = check_program(p2["prompt"] + "    return 0.5\n\ndef abs(x):\n    return 0\n", p2["test"], p2["entry_point"])
    assert not r.passed and r.status == "failed" and "AssertionError" in r.stderr
    # Control: the same honest answer passes.
    assert check_program(p2["prompt"] + p2["canonical_solution"], p2["test"], p2["entry_point"]).passed


def test_helpers_come_from_the_prompt_when_given(problems):
    """HumanEval/50 checks decode_shift with the prompt's encode_shift: a program that makes both
    the identity fools an in-process harness, and fools the checks here only without the prompt."""
    p = problems["HumanEval/50"]
    forged = p["prompt"] + "    return s\n\ndef encode_shift(s):\n    return s\n"
    assert check_program(forged, p["test"], p["entry_point"]).passed  # the program's own encode_shift
    r = check_program(forged, p["test"], p["entry_point"], prompt=p["prompt"])
    assert not r.passed and r.status == "failed" and "AssertionError" in r.stderr
    right = p["prompt"] + p["canonical_solution"]
    assert check_program(right, p["test"], p["entry_point"], prompt=p["prompt"]).passed


def test_values_cross_between_program_and_checks_exactly():
    program = textwrap.dedent("""
        def echo(*args, **kwargs):
            return [args, kwargs, {1: {2, 3}}, frozenset([1]), b'x', 1 + 2j, float('inf'), -0.0, 10 ** 40]
        LIMIT = (1, 2)
    """)
    test = textwrap.dedent("""
        def check(candidate):
            out = candidate([1, (2, 3)], 'a', k={'x': None})
            assert out == [([1, (2, 3)], 'a'), {'k': {'x': None}}, {1: {2, 3}}, frozenset([1]), b'x', 1 + 2j,
                           float('inf'), -0.0, 10 ** 40], out
            assert type(out[0]) is tuple and LIMIT == (1, 2)
            try:
                candidate(object())
            except TypeError:
                pass
            else:
                raise AssertionError('an object crossed the pipe')
    """)
    r = check_program(program, test, "echo")
    assert r.passed, r.stderr


def test_raised_errors_reach_the_checks():
    program = "def f(x):\n    raise ValueError('bad ' + str(x))\n"
    test = textwrap.dedent("""
        def check(candidate):
            try:
                candidate(1)
            except ValueError as e:
                assert 'bad 1' in str(e)
            else:
                raise AssertionError
    """)
    assert check_program(program, test, "f").passed
