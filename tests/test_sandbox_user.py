"""The sandbox as an ordinary user with a home holding a secret, and its fallbacks (bwrap, seatbelt,
a private uid for root without namespaces)."""
from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from app.bench import sandbox
from app.bench.sandbox import run_python
from sandbox_util import (  # noqa: F401 - problems: a fixture
    RAW_CONNECT, ROOT, _left_over, problems,
)


# -- as an ordinary user ---------------------------------------------------------------------------
# CI runs as root, where the sandbox has a private uid to fall back on. Desktop users are not root:
# a throw-away user with a home holding a secret runs the repo's Python on a small driver that feeds
# hostile programs to the sandbox; every one must be contained, end in time and not pass, and the home
# must be untouched. Interpreter folders the user cannot reach (a Python under /root) are made
# reachable only inside a private mount namespace of the test, so nothing on the machine changes.

DRIVER = r'''
import json, os, sys, ctypes
job = json.load(sys.stdin)
if job["no_userns"]:
    # A system without user namespaces, for real: this process's own namespace allows none below it.
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    assert libc.unshare(0x10000000) == 0, os.strerror(ctypes.get_errno())
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1"),
                       ("../sys/user/max_user_namespaces", "0")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
if job["no_mount"]:
    # Namespaces that cannot be set up (as under an AppArmor or seccomp rule): mount(2) fails EPERM.
    import struct
    nr = {"x86_64": 165, "aarch64": 40}[os.uname().machine]
    code = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x00050000 | 1), (0x06, 0, 0, 0x7FFF0000)]
    raw = b"".join(struct.pack("HBBI", *ins) for ins in code)
    buf = ctypes.create_string_buffer(raw)
    prog = struct.pack("HxxxxxxP", len(code), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # no_new_privs, required for an unprivileged filter
    assert libc.prctl(22, 2, ctypes.create_string_buffer(prog), 0, 0) == 0, os.strerror(ctypes.get_errno())
from dataclasses import asdict
from app.bench.sandbox import check_program, run_python
out = {}
for case in job["cases"]:
    if case["kind"] == "check":
        r = check_program(case["code"], case["test"], case["entry"], **case["kwargs"])
    else:
        r = run_python(case["code"], **case["kwargs"])
    out[case["name"]] = {**asdict(r), "isolated": r.isolated}
print(json.dumps(out))
'''


def _hostile(home: Path, secret: Path, marker: Path, port: int, problems) -> dict:
    """name -> (kind, code, keyword arguments): run_python programs, or check_program answers."""
    p23 = problems["HumanEval/23"]
    wrong = p23["prompt"] + "    return 0\n"
    s, m = str(secret), str(marker)
    return {
        "delete home": ("run", f"import shutil\nshutil.rmtree({str(home)!r})\n", {}),
        "delete home via ctypes": ("run", f"import ctypes\nassert ctypes.CDLL(None).unlink({s.encode()!r}) == 0\n", {}),
        "fork bomb": ("run", "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()\n", {"timeout": 2}),
        "infinite loop": ("run", "while True:\n    pass\n", {"timeout": 1.5}),
        "10 GB allocation": ("run", "x = bytearray(10 * 1024 ** 3)\nprint(len(x))\n", {"memory_mb": 512}),
        "socket": ("run", f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
                   {"timeout": 5}),
        "socket via ctypes": ("run", RAW_CONNECT.format(port=port), {"timeout": 5}),
        "os.system": ("run", f"import os\nos.system('touch {m}')\n", {}),
        "system() via ctypes": ("run", f"import ctypes\nassert ctypes.CDLL(None).system(b'touch {m}') == 0\n", {}),
        "write outside": ("run", f"open({m!r}, 'w').write('x')\n", {}),
        "write outside via ctypes": ("run", f"import ctypes\nassert ctypes.CDLL(None).open({m.encode()!r}, 0o101, 0o644)"
                                            " >= 0\n", {}),
        "read home": ("run", f"print(open({s!r}).read())\n", {}),
        "read home via ctypes": ("run", f"import ctypes\nassert ctypes.CDLL(None).open({s.encode()!r}, 0) >= 0\n", {}),
        "truncate with os.open": ("run", f"import os\nos.open({s!r}, os.O_RDONLY | os.O_TRUNC)\n", {}),
        "truncate via ctypes": ("run", f"import ctypes\nassert ctypes.CDLL(None).open({s.encode()!r}, 0o1000) >= 0\n",
                                {}),
        "sqlite3 outside": ("run", f"import sqlite3\nsqlite3.connect({str(home / 'escape.db')!r})"
                                   ".execute('create table t(x)')\n", {}),
        "sys.exit(0) before the checks": ("check", wrong + "import sys\nsys.exit(0)\n", {}),
        "forged marker": ("check", wrong + "import __main__\n__main__._write(1, b'\\n' + __main__._nonce + b'\\n')\n"
                                           "__main__._exit(0)\n", {}),
        "forged verdict on every descriptor": ("check", wrong + "import os\nfor fd in range(256):\n    try:\n"
                                               "        os.write(fd, b'{\"exit\": 0, \"ended\": true, "
                                               "\"checks\": \"passed\"}\\n')\n"
                                               "    except OSError:\n        pass\nos._exit(0)\n", {}),
        "stdout flood": ("run", "while True:\n    print('x' * 1000)\n", {"timeout": 20}),
    }


def _listen():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    got = []

    def accept():
        end = time.time() + 120
        while time.time() < end and srv.fileno() != -1:
            try:
                got.append(srv.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1], got


def _blocked_dirs(paths) -> dict[str, list[str]]:
    """For each folder others cannot pass through (e.g. /root), the needed paths below it."""
    out: dict[str, list[str]] = {}
    for p in paths:
        p = os.path.realpath(p)
        for d in [*reversed(Path(p).parents), Path(p)]:
            if not os.stat(d).st_mode & 0o001:
                out.setdefault(str(d), []).append(p)
                break
    return out


def _as_user(user: str, home: Path, stage: Path, job: dict, backend: str = "") -> dict:
    """Run DRIVER with the repo's Python as `user` (root only) and return its results."""
    driver = stage / "driver.py"
    driver.write_text(DRIVER)
    env = ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", "LANG=C.UTF-8", f"LORADESK_SANDBOX={backend}"]
    run = [*env, sys.executable, str(driver)]
    if ROOT:
        needed = [sys.base_prefix, sys.prefix, sandbox._APP_PATH, str(stage)]
        script = ["set -e"]
        for i, (top, below) in enumerate(_blocked_dirs(needed).items()):
            for j, p in enumerate(below):
                script += [f"mkdir -p {stage}/m{i}_{j}", f"mount --bind {p} {stage}/m{i}_{j}"]
            script.append(f"mount -t tmpfs -o mode=0755 tmpfs {top}")
            for j, p in enumerate(below):
                script += [f"mkdir -p {p}", f"mount --move {stage}/m{i}_{j} {p}"]
        script.append("exec runuser -u " + user + " -- " + " ".join(run))
        run = ["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(script)]
    proc = subprocess.run(run, input=json.dumps(job), capture_output=True, text=True, timeout=300, cwd=stage)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ordinary_user():
    """(user name, home, secret file, stage folder): a new user when we are root, else ourselves."""
    stage = Path(tempfile.mkdtemp(prefix="loradesk-sbx-test-"))
    stage.chmod(0o755)
    if ROOT:
        if not (shutil.which("useradd") and shutil.which("runuser") and shutil.which("unshare")):
            pytest.skip("needs useradd, runuser and unshare to run the sandbox as an ordinary user")
        user = "lds" + secrets.token_hex(4)
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", user], check=True, capture_output=True)
        home = Path(pwd.getpwnam(user).pw_dir)
    else:
        user, home = pwd.getpwuid(os.getuid()).pw_name, stage / "home"
        home.mkdir()
    secret = home / "secret.txt"
    secret.write_text("the user's secret " + secrets.token_hex(8))
    secret.chmod(0o600)
    if ROOT:
        uid = pwd.getpwnam(user).pw_uid
        os.chown(secret, uid, uid)
    try:
        yield user, home, secret, stage
    finally:
        if ROOT:
            uid = pwd.getpwnam(user).pw_uid
            for pid in _left_over(uid):  # only the throw-away user's processes, by id
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["userdel", "-r", user], capture_output=True)
        shutil.rmtree(stage, ignore_errors=True)


@pytest.fixture(scope="module")
def as_ordinary_user(ordinary_user, problems):
    """Every hostile program run once by the ordinary user, plus controls that show the checks bite."""
    user, home, secret, stage = ordinary_user
    before = {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()}
    marker = home / "pwned"
    srv, port, got = _listen()
    try:
        hostile = _hostile(home, secret, marker, port, problems)
        p23 = problems["HumanEval/23"]
        controls = {
            "control: canonical solution": ("check", p23["prompt"] + p23["canonical_solution"], {}),
            "control: own folder": ("run", "open('x.txt', 'w').write('ok')\nprint(open('x.txt').read())\n"
                                           "import ctypes\nlibc = ctypes.CDLL(None)\nfd = libc.open(b'/dev/null', 1)\n"
                                           "assert fd >= 0 and libc.write(fd, b'gone', 4) == 4\n", {}),
            "control: network allowed": ("run", RAW_CONNECT.format(port=port), {"network": True, "timeout": 5}),
        }
        cases = [{"name": n, "kind": k, "code": c, "test": p23["test"], "entry": p23["entry_point"], "kwargs": kw}
                 for n, (k, c, kw) in {**hostile, **controls}.items()]
        results = _as_user(user, home, stage, {"no_userns": False, "no_mount": False, "cases": cases})
        connections = len(got)
        # The same programs through bubblewrap, where it is installed (used when our set-up is refused).
        bwrap = (_as_user(user, home, stage, {"no_userns": False, "no_mount": False, "cases": cases}, "bwrap")
                 if shutil.which("bwrap") else None)
        bwrap_connections = len(got) - connections
        # The same user on a system without user namespaces: refused, unless allowed (then it reads).
        unisolated = [{"name": n, "kind": "run", "code": f"print(open({str(secret)!r}).read())\n", "test": None,
                       "entry": None, "kwargs": kw}
                      for n, kw in (("refused", {}), ("allowed", {"allow_unisolated": True}))]
        unisolated.append({"name": "refused marker", "kind": "run", "code": f"open({str(marker)!r}, 'w')\n",
                           "test": None, "entry": None, "kwargs": {}})
        fallback = _as_user(user, home, stage, {"no_userns": True, "no_mount": False, "cases": unisolated})
        no_mount = (_as_user(user, home, stage, {"no_userns": False, "no_mount": True, "cases": unisolated})
                    if os.uname().machine in ("x86_64", "aarch64") else None)
    finally:
        srv.close()
    uid = pwd.getpwnam(user).pw_uid
    return {"results": results, "bwrap": bwrap, "bwrap_connections": bwrap_connections,
            "fallback": fallback, "no_mount": no_mount, "connections": connections,
            "secret": secret.read_text(),
            "before": before, "after": {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()},
            "left": [p.pid for p in psutil.process_iter(["uids", "status"]) if p.info["uids"]
                     and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE],
            "marker": marker.exists(), "hostile": list(hostile)}


HOSTILE_NAMES = ("delete home", "delete home via ctypes", "fork bomb", "infinite loop", "10 GB allocation", "socket",
                 "socket via ctypes", "os.system", "system() via ctypes", "write outside", "write outside via ctypes",
                 "read home", "read home via ctypes", "truncate with os.open", "truncate via ctypes",
                 "sqlite3 outside", "sys.exit(0) before the checks", "forged marker",
                 "forged verdict on every descriptor", "stdout flood")


def _user_results(as_ordinary_user):
    res = as_ordinary_user["results"]
    if not res["control: canonical solution"]["isolated"]:
        pytest.skip(f"user namespaces are not available to an ordinary user here: "
                    f"{res['control: canonical solution']['stderr'].strip()}")
    return res


@pytest.mark.parametrize("backend", ["namespaces", "bwrap"])
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_program_as_ordinary_user(as_ordinary_user, name, backend):
    res = _user_results(as_ordinary_user)
    if backend == "bwrap":
        if as_ordinary_user["bwrap"] is None:
            pytest.skip("bubblewrap is not installed (it is optional)")
        res = as_ordinary_user["bwrap"]
    assert set(as_ordinary_user["hostile"]) == set(HOSTILE_NAMES)
    r = res[name]
    timeout = {"fork bomb": 2, "infinite loop": 1.5, "stdout flood": 20, "socket": 5,
               "socket via ctypes": 5}.get(name, 10)
    assert not r["passed"], (name, r["status"], r["stdout"][-500:], r["stderr"][-500:])
    assert r["isolated"] and r["isolation"] == backend
    assert r["duration"] < timeout + 4, r["duration"]
    assert as_ordinary_user["secret"] not in r["stdout"] + r["stderr"]


def test_ordinary_user_home_is_intact(as_ordinary_user):
    _user_results(as_ordinary_user)
    assert as_ordinary_user["after"] == as_ordinary_user["before"]  # nothing emptied, nothing added
    assert as_ordinary_user["secret"].startswith("the user's secret")
    assert not as_ordinary_user["marker"]
    assert not as_ordinary_user["left"], "processes of the user survived the sandbox"


@pytest.mark.parametrize("backend", ["namespaces", "bwrap"])
def test_ordinary_user_what_each_layer_said(as_ordinary_user, backend):
    res = _user_results(as_ordinary_user)
    if backend == "bwrap":
        if as_ordinary_user["bwrap"] is None:
            pytest.skip("bubblewrap is not installed (it is optional)")
        res = as_ordinary_user["bwrap"]
    assert res["infinite loop"]["status"] == "timed out" and res["fork bomb"]["status"] == "timed out"
    assert res["stdout flood"]["status"] == "output limit"
    assert "MemoryError" in res["10 GB allocation"]["stderr"]
    assert "FileNotFoundError" in res["read home"]["stderr"]  # the home is not there at all
    assert "unable to open database" in res["sqlite3 outside"]["stderr"]
    assert "sandbox:" in res["truncate with os.open"]["stderr"] and "sandbox:" in res["os.system"]["stderr"]
    assert res["sys.exit(0) before the checks"]["status"] == "ended early"
    assert "connect failed" in res["socket via ctypes"]["stderr"]


def test_ordinary_user_controls(as_ordinary_user):
    """The checks above can fail: the same user's honest programs work, the listener does see a
    connection when the network is allowed, and without namespaces the secret is readable."""
    res = _user_results(as_ordinary_user)
    assert res["control: canonical solution"]["passed"]
    assert res["control: own folder"]["passed"] and res["control: own folder"]["stdout"].strip() == "ok"
    assert res["control: network allowed"]["passed"] and as_ordinary_user["connections"] >= 1
    if as_ordinary_user["bwrap"]:
        bw = as_ordinary_user["bwrap"]
        assert all(bw[n]["passed"] and bw[n]["isolation"] == "bwrap" for n in bw if n.startswith("control:"))
        assert as_ordinary_user["bwrap_connections"] >= 1
    fb = as_ordinary_user["fallback"]
    assert fb["refused"]["status"] == "not isolated" and not fb["refused"]["passed"]
    assert "cannot be isolated" in fb["refused"]["stderr"] and fb["refused"]["stdout"] == ""
    assert fb["refused marker"]["status"] == "not isolated"  # and the test above saw no marker file
    assert fb["allowed"]["passed"] and not fb["allowed"]["isolated"]
    assert as_ordinary_user["secret"] in fb["allowed"]["stdout"]  # what isolation is there to stop


def test_ordinary_user_namespaces_that_cannot_be_set_up(as_ordinary_user):
    """Namespaces are made but mount(2) is refused (a seccomp filter here; AppArmor on some desktops):
    the program is not run, and runs unisolated only when allowed."""
    _user_results(as_ordinary_user)
    nm = as_ordinary_user["no_mount"]
    if nm is None:
        pytest.skip("the seccomp filter of this test knows only x86_64 and aarch64")
    assert nm["refused"]["status"] == "not isolated" and nm["refused"]["stdout"] == ""
    assert "Operation not permitted" in nm["refused"]["stderr"]
    assert nm["refused marker"]["status"] == "not isolated"
    assert nm["allowed"]["passed"] and not nm["allowed"]["isolated"]
    assert as_ordinary_user["secret"] in nm["allowed"]["stdout"]


def test_seatbelt_profile_has_the_linux_rules(tmp_path):
    """macOS's profile (sandbox-exec cannot run here, so its text is what can be checked)."""
    from app.bench import isolation

    box = tmp_path / "box"
    box.mkdir()
    profile = isolation.seatbelt_profile(str(box), ["/opt/py311", "/Users/me/proj/.venv"])
    lines = profile.splitlines()
    assert lines[:2] == ["(version 1)", "(deny default)"] and "(deny network*)" in lines
    writes = [x for x in lines if x.startswith("(allow file-write*")]
    assert writes == [f'(allow file-write* (subpath "{box.resolve()}") (literal "/dev/null") (literal "/dev/zero") '
                      '(literal "/dev/random") (literal "/dev/urandom"))']
    reads = next(x for x in lines if x.startswith("(allow file-read* "))
    assert '(subpath "/opt/py311")' in reads and '(subpath "/Users/me/proj/.venv")' in reads
    assert '"/Users/me"' not in reads and '(subpath "/Users")' not in reads and "network" not in reads


def test_only_the_interpreters_folders_are_bound():
    """The new root gets the Python prefixes and site-packages, never a home, /root or the checkout."""
    from app.bench import isolation, sandbox

    dirs = isolation.python_dirs(sandbox._site_packages())
    repo = os.path.realpath(sandbox._APP_PATH)
    assert dirs and all(d != repo and not repo.startswith(d + "/") for d in dirs)
    assert not {"/", "/root", "/home", os.path.expanduser("~")} & set(dirs)
    r = run_python(f"import os\nprint(os.path.exists({os.path.join(repo, 'app')!r}))\n")
    if r.isolated:
        assert r.stdout.strip() == "False"


@pytest.mark.skipif(not ROOT or os.uname().machine not in ("x86_64", "aarch64"),
                    reason="the root fallback needs root; the seccomp filter knows x86_64 and aarch64")
def test_root_without_namespaces_falls_back_to_a_private_uid(tmp_path):
    """As root where namespaces cannot be set up (mount refused by a seccomp filter, as in a default
    container), an allowed run still gets a private uid and its own network namespace."""
    stage = Path(tempfile.mkdtemp(prefix="loradesk-sbx-root-"))
    try:
        secret = stage / "root-only.txt"
        secret.write_text("root's secret")
        secret.chmod(0o600)
        srv, port, got = _listen()
        code = (f"import os, ctypes\nprint(os.getuid())\n"
                f"try:\n    open({str(secret)!r}).read()\nexcept OSError as e:\n    print(type(e).__name__)\n"
                + RAW_CONNECT.format(port=port))
        cases = [{"name": n, "kind": "run", "code": code, "test": None, "entry": None, "kwargs": kw}
                 for n, kw in (("refused", {}), ("allowed", {"allow_unisolated": True, "timeout": 5}))]
        (stage / "driver.py").write_text(DRIVER)
        proc = subprocess.run([sys.executable, str(stage / "driver.py")], capture_output=True, text=True, timeout=120,
                              input=json.dumps({"no_userns": False, "no_mount": True, "cases": cases}))
        srv.close()
        assert proc.returncode == 0, proc.stderr[-2000:]
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        assert res["refused"]["status"] == "not isolated" and res["refused"]["stdout"] == ""
        allowed = res["allowed"]
        assert not allowed["isolated"] and not allowed["passed"] and "connect failed" in allowed["stderr"]
        uid, error = allowed["stdout"].split()
        assert int(uid) == allowed["uid"] >= 200_000 and error == "PermissionError"
        assert not got and secret.read_text() == "root's secret"
    finally:
        shutil.rmtree(stage, ignore_errors=True)
