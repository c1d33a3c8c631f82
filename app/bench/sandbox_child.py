"""The sandbox's child side (started by sandbox.run_python as `python -I -c`; settings as one JSON
line on stdin). Three processes:

  monitor   outside every namespace; holds the verdict pipe to the app; runs the checks
  └ holder  enters new user/mount/net/PID/IPC/UTS namespaces; reaps the program
    └ program  pid 1 of its PID namespace, in the new root, without capabilities; runs the code

The checks of `check_program` run in the monitor, calling the program's functions over a pipe:
arguments and results cross as plain data (tagged JSON, never pickle), so the verdict is computed
where the program's code never runs, and it is sent on a pipe the program cannot reach (another PID
namespace; the monitor is not dumpable, so not even /proc/<pid>/fd of the same user opens it).
"""
from __future__ import annotations

import builtins
import json
import os
import resource
import select
import signal
import struct
import sys
import traceback
import types

from app.bench import isolation

_MAX_MESSAGE = 16 * 1024 * 1024  # bytes of one reply from the program; more is a failure
_LINUX = sys.platform.startswith("linux")


class ProgramEnded(BaseException):
    """The program's process is gone (it exited or crashed before its checks finished)."""


# -- plain data between the program and its checks ------------------------------------------------

def encode(v, depth: int = 0):
    """JSON-ready form of plain Python data; lists stay lists, anything else is a one-key tag."""
    t = type(v)
    if depth > 200:
        raise TypeError("value nested too deeply to pass between the program and its checks")
    if v is None or t in (bool, int, float, str):
        return v
    if t is list:
        return [encode(x, depth + 1) for x in v]
    tags = {tuple: "t", set: "s", frozenset: "f"}
    if t in tags:
        return {tags[t]: [encode(x, depth + 1) for x in v]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(x, depth + 1)] for k, x in v.items()]}
    if t in (bytes, bytearray):
        return {"b" if t is bytes else "ba": v.hex()}
    if t is complex:
        return {"c": [v.real, v.imag]}
    raise TypeError(f"a {t.__name__} cannot be passed between the program and its checks")


def decode(v):
    if isinstance(v, list):
        return [decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    (tag, x), = v.items()
    return {"t": lambda: tuple(map(decode, x)), "s": lambda: set(map(decode, x)),
            "f": lambda: frozenset(map(decode, x)), "d": lambda: {decode(k): decode(y) for k, y in x},
            "b": lambda: bytes.fromhex(x), "ba": lambda: bytearray.fromhex(x),
            "c": lambda: complex(*x)}[tag]()


def _send(fd: int, msg) -> None:
    data = json.dumps(msg).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        block = os.read(fd, min(n - len(buf), 1 << 20))
        if not block:
            return None
        buf += block
    return buf


def _recv(fd: int):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > _MAX_MESSAGE:
        raise ValueError(f"the program sent a {n}-byte reply (limit {_MAX_MESSAGE})")
    body = _read_exact(fd, n)
    return None if body is None else json.loads(body)


# -- the monitor ----------------------------------------------------------------------------------

def main(line: str) -> None:
    cfg = json.loads(line)
    cfg["python_dirs"] = isolation.python_dirs(cfg["site_packages"])  # of this very interpreter
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the program's input() sees end of file
    vfd = cfg["verdict_fd"]
    c2p, p2c, ended = os.pipe(), os.pipe(), os.pipe()
    rpc = (os.pipe(), os.pipe()) if cfg["test"] is not None else None  # requests, replies
    holder = os.fork()
    if holder == 0:
        _holder(cfg, vfd, c2p, p2c, ended, rpc)
    for fd in (c2p[1], p2c[0], ended[1]):
        os.close(fd)
    reply = os.read(c2p[0], 4096).decode()
    isolated, reason = None, reply[1:]
    if cfg["mode"] == "namespaces" and reply == "+":
        try:
            uid = os.getuid() if cfg["uid"] is None else cfg["uid"]
            gid = os.getgid() if cfg["uid"] is None else cfg["uid"]
            isolation.write_id_maps(holder, uid, gid)
            isolated = "namespaces"
        except OSError as e:
            reason = f"could not map the user ids: {e}"
    elif cfg["mode"] in ("seatbelt", "bwrap"):  # the whole child runs inside already
        isolated = cfg["mode"]
    elif cfg["mode"] == "none":
        reason = cfg["why"]
    _say(vfd, {"isolation": isolated, "reason": reason})
    if _LINUX:  # from now on not even a process of the same user opens /proc/<monitor>/fd
        try:
            isolation.prctl(isolation.PR_SET_DUMPABLE, 0)
        except OSError:
            pass
    entered = reply == "+"  # in half-made namespaces the program cannot run at all
    if isolated is None and (entered or not cfg["allow_unisolated"]):
        os.write(p2c[1], b"s")
        os.waitpid(holder, 0)
        os._exit(0)
    os.write(p2c[1], b"g" if isolated == "namespaces" else b"u")
    checks = None
    if rpc:
        # The checks are trusted but take the program's data: bound what that can cost out here.
        for kind, value in ((resource.RLIMIT_AS, 2 * cfg["memory"] + (256 << 20)), (resource.RLIMIT_CPU, cfg["cpu"])):
            try:
                resource.setrlimit(kind, (value, resource.getrlimit(kind)[1]))
            except (ValueError, OSError):
                pass
        os.close(rpc[0][0])
        os.close(rpc[1][1])
        checks = _run_checks(cfg, rpc[0][1], rpc[1][0])
        os.close(rpc[0][1])  # end of requests: the program's server returns
    # The holder reports the program's exit status before it leaves its namespaces (their teardown
    # takes milliseconds nobody needs to wait for; the app's group kill ends it).
    status = os.read(c2p[0], 64).decode()
    os.set_blocking(ended[0], False)  # a left-over grandchild may still hold the write end
    try:
        said = os.read(ended[0], 4096)
    except BlockingIOError:
        said = b""
    setup_error = said[1:].decode(errors="replace") if said.startswith(b"!") else None
    _say(vfd, {"exit": int(status) if status else None, "ended": said == b"e", "checks": checks,
               "setup_error": setup_error})
    os._exit(0)


def _say(fd: int, msg: dict) -> None:
    os.write(fd, (json.dumps(msg) + "\n").encode())


class _Remote:
    """A function of the program, called over the pipe."""

    def __init__(self, name: str, call):
        self.__name__, self._call = name, call

    def __call__(self, *args, **kwargs):
        return decode(self._call({"op": "call", "name": self.__name__, "args": encode(list(args)),
                                  "kwargs": encode(kwargs)}))

    def __repr__(self):
        return f"<function {self.__name__} of the program>"


def _rebuild(kind: str, message: str) -> BaseException:
    t = getattr(builtins, kind, None)
    if isinstance(t, type) and issubclass(t, Exception):
        return t(f"{message} (raised in the program)")
    return RuntimeError(f"{kind}: {message} (raised in the program)")


def _run_checks(cfg: dict, req_w: int, resp_r: int) -> str:
    """Run the checks here against the program's functions: "passed", "failed" or "ended early"."""
    def call(msg):
        try:
            _send(req_w, msg)
            reply = _recv(resp_r)
        except (BrokenPipeError, ValueError) as e:
            if isinstance(e, ValueError):
                raise RuntimeError(str(e)) from None
            reply = None
        if reply is None:
            raise ProgramEnded
        if "error" in reply:
            raise _rebuild(*reply["error"])
        return reply["ok"]

    try:
        env = {"__name__": "__checks__", "__builtins__": builtins}
        if cfg["prompt"] is not None:
            # The problem's own helpers (HumanEval/50's encode_shift) come from its prompt, run here:
            # a program that redefines them cannot fool the checks that use them.
            exec(compile(cfg["prompt"], "<prompt>", "exec"), env)
            names = {cfg["entry_point"]: ["function", None]}
        else:
            names = call({"op": "names"})
        for name, (kind, value) in names.items():
            if kind == "function":
                env[name] = _Remote(name, call)
            elif kind == "value":
                env[name] = decode(value)
            elif kind == "module" and value.partition(".")[0] in sys.stdlib_module_names:
                env[name] = __import__(value, fromlist=["_"])
        exec(compile(f"{cfg['test']}\n\ncheck({cfg['entry_point']})\n", "<checks>", "exec"), env)
    except ProgramEnded:
        return "ended early"
    except BaseException as e:  # noqa: BLE001 - any failure of the checks is a failed program
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        sys.stderr.flush()
        return "failed"
    return "passed"


# -- the holder and the program -------------------------------------------------------------------

def _holder(cfg, vfd, c2p, p2c, ended, rpc) -> None:
    for fd in (vfd, c2p[0], p2c[1], ended[0]):
        os.close(fd)
    if _LINUX:
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
    reply = "0"  # "+": in new namespaces, "-why": could not make them, "0": not asked to
    if cfg["mode"] == "namespaces":
        reply = "+"
        try:
            isolation.unshare(isolation.NAMESPACES & ~(isolation.CLONE_NEWNET if cfg["network"] else 0))
        except OSError as e:
            reply = f"-{e}"
    os.write(c2p[1], reply.encode())
    go = os.read(p2c[0], 1)
    if go not in (b"g", b"u"):
        os._exit(0)
    life = os.pipe()  # end of file on life[0]: the holder is gone
    pid = os.fork()
    if pid == 0:
        os.close(life[1])
        _program(cfg, go == b"g", ended[1], rpc, (c2p[1], p2c[0]), life[0])
    for fd in (ended[1], p2c[0], life[0], *([x for pair in rpc for x in pair] if rpc else [])):
        os.close(fd)
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):  # the app's output pipes end with the program, not with us
        os.dup2(null, fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os.write(c2p[1], str(code if code >= 0 else 128 - code).encode())
    os._exit(0)


def _program(cfg, isolated: bool, ended_w: int, rpc, stale, life: int) -> None:
    try:
        for fd in stale:
            os.close(fd)
        if rpc:
            os.close(rpc[0][1])
            os.close(rpc[1][0])
        # Nothing else from the monitor's side (no descriptor of a file or folder outside the new root).
        keep = sorted({0, 1, 2, ended_w, life, *([rpc[0][0], rpc[1][1]] if rpc else [])})
        for lo, hi in zip(keep, [*keep[1:], 1 << 20]):
            os.closerange(lo + 1, hi)
        if isolated:
            isolation.build_root(cfg["root"], cfg["box"], cfg["python_dirs"])
            isolation.drop_privileges(set_ids=cfg["uid"] is not None)
            os.setsid()  # out of the monitor's process group (kill(0) reaches no one outside)
            box = isolation.BOX
        else:
            box = cfg["box"]
            if cfg["uid"] is not None:  # root without user namespaces: a private uid and netns
                for name in cfg["preload"]:  # the interpreter's files may be unreadable by that uid
                    try:
                        __import__(name)
                    except ImportError:
                        pass
                try:
                    isolation.unshare(isolation.CLONE_NEWNET)
                except OSError:
                    os.write(2, b"sandbox: no network namespace\n")
                os.setgroups([])
                os.setgid(cfg["uid"])
                os.setuid(cfg["uid"])
        os.chdir(box)
        os.environ.update(HOME=box, TMPDIR=box)
        _limits(cfg, own_userns=isolated or cfg["mode"] == "bwrap")
        if _LINUX:  # after the uid and capability changes, which clear it
            isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
            if select.select([life], [], [], 0)[0]:
                os._exit(70)  # the holder died before that: nobody would kill us
        os.close(life)
    except Exception as e:  # noqa: BLE001 - e.g. namespaces without capabilities (an AppArmor rule)
        os.write(ended_w, f"!{e}".encode()[:4000])
        os._exit(70)
    ns = {"__name__": cfg["name"], "__builtins__": builtins}
    code = 0
    try:
        sys.addaudithook(_audit_hook(os.path.realpath(box) + os.sep))
        exec(compile(cfg["program"], "program.py", "exec"), ns)
        if rpc:
            _serve(ns, rpc[0][0], rpc[1][1])
        ran_to_end = True
    except SystemExit as e:
        ran_to_end = False
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:  # noqa: BLE001 - printed like the interpreter does
        ran_to_end, code = False, 1
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        os._exit(1)
    if ran_to_end:
        os.write(ended_w, b"e")
    os._exit(code & 0xFF)


def _limits(cfg, own_userns: bool) -> None:
    nproc = cfg["nproc"]
    if not own_userns and cfg["uid"] is None and _LINUX:
        # Outside a user namespace of its own RLIMIT_NPROC counts every process of this user:
        # allow what exists + nproc.
        me = os.getuid()
        nproc += sum(1 for p in os.listdir("/proc") if p.isdigit() and _owner(p) == me)
    for kind, value in ((resource.RLIMIT_AS, cfg["memory"]), (resource.RLIMIT_CPU, cfg["cpu"]),
                        (resource.RLIMIT_FSIZE, cfg["fsize"]), (resource.RLIMIT_NOFILE, 64),
                        (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, nproc)):
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass


def _owner(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _serve(ns: dict, req_r: int, resp_w: int) -> None:
    """Answer the checks' requests: the program's names, and calls of its functions."""
    while (msg := _recv(req_r)) is not None:
        try:
            if msg["op"] == "names":
                out = {"ok": _names(ns)}
            else:
                out = {"ok": encode(ns[msg["name"]](*decode(msg["args"]), **decode(msg["kwargs"])))}
        except BaseException as e:  # noqa: BLE001 - reported to the checks, which fail
            out = {"error": [type(e).__name__, str(e)[:1000]]}
        _send(resp_w, out)


def _names(ns: dict) -> dict:
    out = {}
    for name, v in ns.items():
        if name.startswith("__") or hasattr(builtins, name):
            continue  # a program's own `abs` or `len` must not answer for the checks' builtins
        if isinstance(v, types.ModuleType):
            out[name] = ["module", v.__name__]
        elif callable(v):
            out[name] = ["function", None]
        else:
            try:
                out[name] = ["value", encode(v)]
            except (TypeError, ValueError):
                pass
    return out


_BLOCKED = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
            "os.forkpty", "os.kill", "os.killpg", "pty.", "webbrowser.", "urllib.", "ftplib.", "smtplib.",
            "http.", "os.setuid", "os.setgid", "resource.setrlimit", "os.chroot")
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.rename", "os.replace", "shutil.rmtree", "os.chmod",
                "os.chown", "os.link", "os.symlink", "os.truncate", "os.mkdir", "shutil.move",
                "shutil.copyfile", "shutil.copytree", "os.utime", "os.chdir"}


def _audit_hook(root: str):
    """A first line only (ctypes steps around it): refuse sockets, subprocesses, fork/exec/kill and
    writes outside the work folder, with a clear message. The namespaces are what hold."""
    def inside(p):
        try:
            return (os.path.realpath(os.fsdecode(p)) + os.sep).startswith(root)  # the folder itself too
        except Exception:  # noqa: BLE001
            return False

    def hook(event, args):
        if event.startswith(_BLOCKED) and event != "socket.getaddrinfo":
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event in _PATH_EVENTS:
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                    raise PermissionError(f"sandbox: {event} outside the sandbox directory")
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] or 0
            writing = ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                       or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
            if writing and not inside(args[0]):
                raise PermissionError("sandbox: writing outside the sandbox directory")

    return hook
