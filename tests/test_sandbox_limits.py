"""The sandbox contains hostile programs (loops, forks, memory, files, sockets, subprocesses) and
reports them as failures while the run goes on, as root (CI), in a new read-only root."""
from __future__ import annotations

import os
import secrets
import socket
import textwrap
import threading
import time

import psutil

from app.bench.sandbox import run_python
from sandbox_util import (
    RAW_CONNECT, ROOT, _eventually, _left_over, _named, needs_isolation,
)


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
    assert _eventually(lambda: not _named(tag))
    if ROOT:
        assert _eventually(lambda: not _left_over(r.uid))


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
        assert _eventually(lambda: not _left_over(r.uid))


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
        assert _eventually(lambda: not _left_over(r.uid))
    assert _eventually(lambda: len(psutil.pids()) < before + 20)
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
        end = time.time() + 60  # outlives the slowest run_python pair below
        while time.time() < end and srv.fileno() != -1:  # until the test closes it
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
        assert ok.passed and _eventually(lambda: bool(got), 5)
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
        fds = []
        for fd in range(1024):
            try:
                os.fstat(fd)
                fds.append(fd)
            except OSError:
                pass
        print(len(fds))
    """))
    assert r.passed, r.stderr
    listing, exists, where, error, fds = r.stdout.splitlines()
    assert fds == "4"  # stdin (/dev/null), stdout, stderr and its end-of-program pipe: nothing of ours
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
